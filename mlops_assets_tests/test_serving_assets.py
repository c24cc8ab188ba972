"""The serving domain's Dagster shell: the prediction-log partition, the A/B report asset and the rollout sensor."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlops_assets.resources import DataDirResource
from mlops_assets.serving import abtest
from mlops_assets.serving.assets import ab_test_report, prediction_log
from mlops_assets.serving.prediction_log import PredictionLogger, PredictionRecord, log_dir, read_day
from mlops_assets.serving.rollout import RolloutController
from mlops_assets.serving.sensors import canary_rollout_sensor
from mlops_assets.storage import read_partition, write_partition

pytestmark = pytest.mark.slow


def _log(data_dir, n, start, arm_of, experiment="exp", error_arm=None, seed=0):
    rng = np.random.default_rng(seed)
    logger = PredictionLogger(log_dir(data_dir.root))
    for i in range(n):
        customer = f"C{i:05d}"
        arm = arm_of(customer)
        failed = arm == error_arm and rng.random() < 0.3
        logger.write(
            PredictionRecord(
                f"r{i}",
                customer,
                arm,
                "2" if arm == "challenger" else "1",
                None if failed else float(rng.beta(2, 8)),
                2.0,
                (start + timedelta(milliseconds=i)).isoformat(),
                "canary",
                False,
                "error" if failed else "ok",
                "boom" if failed else None,
                experiment,
            )
        )
    logger.close()


def test_prediction_log_asset_writes_the_day_partition(data_dir, dagster_home):
    start = datetime(2026, 3, 1, 8, tzinfo=UTC)
    _log(data_dir, 50, start, lambda c: "champion")
    result = dg.materialize(
        [prediction_log],
        partition_key="2026-03-01",
        resources={"data": DataDirResource(root=str(data_dir.root))},
    )
    assert result.success
    stored = read_partition(data_dir.partition_dir("prediction_log", "2026-03-01")).to_pandas()
    pd.testing.assert_frame_equal(stored, read_day("2026-03-01", data_dir.root), check_dtype=False)
    assert len(stored) == 50


def test_ab_test_report_asset_matches_the_core_analysis(data_dir, dagster_home):
    rng = np.random.default_rng(4)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    n = 8000
    arm = np.where(rng.random(n) < 0.5, "champion", "challenger")
    log = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "customer_id": [f"C{i}" for i in range(n)],
            "arm": arm,
            "model_version": "1",
            "score": 0.2,
            "latency_ms": 1.0,
            "ts": pd.Timestamp(start),
            "mode": "ab",
            "shadow": False,
            "status": "ok",
            "error": None,
            "experiment": "exp",
        }
    )
    churn = (rng.random(n) < np.where(arm == "champion", 0.25, 0.15)).astype("int8")
    labels = pd.DataFrame(
        {
            "customer_id": log["customer_id"],
            "churned": churn,
            "label_timestamp": pd.Timestamp(start) + pd.to_timedelta(rng.integers(1, 6, n), "D"),
        }
    )
    write_partition(log, data_dir.partition_dir("prediction_log", "2026-03-01"))
    for day, rows in labels.groupby(labels["label_timestamp"].dt.strftime("%Y-%m-%d")):
        write_partition(rows.reset_index(drop=True), data_dir.partition_dir("raw_labels", day))
    result = dg.materialize(
        [ab_test_report],
        resources={"data": DataDirResource(root=str(data_dir.root))},
        run_config={"ops": {"ab_test_report": {"config": {"experiment": "exp"}}}},
    )
    meta = result.asset_materializations_for_node("ab_test_report")[0].metadata
    reference = abtest.analyze(abtest.outcomes_from_log(log, labels, "exp"), time_column="label_timestamp")
    assert meta["decision"].value == reference.decision == "promote_b"
    assert meta["always_valid_p_value"].value == pytest.approx(reference.sequential.p_value)
    assert (data_dir.reports / "ab_test_report_exp.md").exists()


def test_rollout_sensor_rolls_back_on_errors_and_records_an_observation(data_dir, dagster_home):
    controller = RolloutController(data_dir.root)
    controller.start_canary("exp")
    begun = datetime.fromisoformat(controller.state().updated_at)
    _log(
        data_dir,
        600,
        begun + timedelta(milliseconds=1),
        lambda c: "challenger" if c.endswith("0") else "champion",
        error_arm="challenger",
    )
    while datetime.now(UTC) < begun + timedelta(seconds=1):  # every record lies in the past
        time.sleep(0.05)
    with dg.build_sensor_context(resources={"data": DataDirResource(root=str(data_dir.root))}) as context:
        result = canary_rollout_sensor(context)
    assert controller.state().mode == "direct"
    (observation,) = result.asset_events
    assert observation.metadata["action"].value == "rollback"
    assert "error rate" in observation.metadata["reason"].value
