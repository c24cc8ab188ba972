"""End to end: the real dagster-webserver on 127.0.0.1, serving the churn example's code location, launches a
materialization over GraphQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlops_assets_tests.conftest import CHURN_SPEC, events_frame, free_port, stop_process, write_events

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DAY = "2026-01-07"

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }
"""
PARTITIONS = """
query Partitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } }
}
"""
MATERIALIZATION = """
query Mat($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: 1) {
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""


def _graphql(url: str, query: str, variables: dict) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def landed(data_dir):
    """A landing file for DAY with one invalid row, written before the code location loads (its daily
    partitions end at the last day a landing file names)."""
    frame = events_frame(DAY, n=25)
    frame.loc[0, "amount"] = -1.0
    return write_events(data_dir, DAY, frame)


@pytest.fixture
def webserver(data_dir, dagster_home, landed):
    # Runs are launched straight from the webserver (no daemon needed to dequeue them).
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "MLOPS_SPEC": str(CHURN_SPEC),
        "MLOPS_DATA_DIR": str(data_dir.root),
        "DAGSTER_HOME": str(dagster_home),
    }
    log = open(dagster_home / "webserver.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [BIN / "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (dagster_home / "webserver.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("dagster-webserver did not start within 120 s")
        yield f"{url}/graphql"
    finally:
        stop_process(proc)
        log.close()


@pytest.mark.slow
def test_launch_materialization_through_graphql_and_read_metadata(data_dir, webserver):
    node = _graphql(webserver, PARTITIONS, {"key": {"path": ["raw_events"]}})["assetNodeOrError"]
    assert node["partitionKeys"][0] == "2026-01-01" and node["partitionKeys"][-1] == DAY
    launched = _graphql(
        webserver,
        LAUNCH,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "mlops_assets",
                    "repositoryName": "__repository__",
                    "jobName": "ingestion_job",
                    "assetSelection": [{"path": ["raw_events"]}],
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DAY}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        status = _graphql(webserver, RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS"

    asset = _graphql(webserver, MATERIALIZATION, {"key": {"path": ["raw_events"]}, "partitions": [DAY]})
    [mat] = asset["assetOrError"]["assetMaterializations"]
    assert mat["partition"] == DAY
    meta = {e["label"]: e.get("intValue", e.get("text")) for e in mat["metadataEntries"]}
    assert meta["rows_read"] == 25 and meta["rows_kept"] == 24 and meta["rows_quarantined"] == 1
    assert (data_dir.partition_dir("raw_events", DAY) / "part-0.parquet").exists()
