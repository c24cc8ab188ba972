"""The Dagster UI after a small demo, in a real browser: Playwright (from PyPI) driving Debian's chromium (never a
downloaded browser), against a dagster-webserver the test starts on 127.0.0.1 and stops by pid.

The demo is the session's small demo (conftest's ``small_demo``, shared with test_demo_story.py: 400 entities x 62 days, a concept drift the drift alarm
fires on, the retrained challenger's canary). The pages a person opens first are checked: the global asset lineage
shows every asset group with no error banner, the evaluation_report asset's checks list every quality gate, the
Automation page lists the sensors with their ticks (the drift alarm's tick requested the retraining run), and the
runs page lists the named jobs, those the sensors launched filtered by "Launched by". Screenshots go to ``$MLOPS_SCREENSHOTS_DIR`` (default ``.artifacts/browser`` in the project; the CI
integration job uploads that folder)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from mlops_assets.training.gates import GATE_NAMES
from mlops_assets_tests.conftest import CHURN_SPEC, free_port, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("MLOPS_SCREENSHOTS_DIR") or PROJECT / ".artifacts" / "browser")
GROUPS = ("ingestion", "features", "training", "monitoring", "serving")
NAMED_JOBS = ("ingestion_job", "feature_views_job", "retraining_job", "drift_report_job")
#: The named jobs a sensor of the demo launches (the drift alarm's retraining, the serving log's report).
SENSOR_JOBS = {"drift_retraining_sensor": "retraining_job", "serving_log_sensor": "serving_report_job"}
SENSORS = ("landing_files_sensor", "first_champion_sensor", "canary_rollout_sensor", *SENSOR_JOBS)
ERROR_TEXTS = ("Unexpected GraphQL error", "Something went wrong", "An error occurred", "Error loading")


@pytest.fixture(scope="module")
def ui(small_demo):
    """dagster-webserver on the instance of the session's small demo; the UI's URL."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make services installs it)")
    assert small_demo.code == 0, small_demo.out[-4000:]
    root = Path(tempfile.mkdtemp(prefix="ui-browser-"))
    env = {
        "DAGSTER_HOME": str(small_demo.home),
        "MLOPS_DATA_DIR": str(small_demo.project.paths.root),
        "MLOPS_SPEC": str(CHURN_SPEC),
    }
    port = free_port()  # chosen by the OS: no clash with another run on the machine
    server_env = {**os.environ, **env}
    server_env.pop("MLOPS_PARTITIONS_END", None)
    log = open(root / "webserver.log", "wb")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=PROJECT,
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (root / "webserver.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/server_info", timeout=2):
                    break
            assert time.monotonic() < deadline, "dagster-webserver did not answer"
            time.sleep(0.5)
        yield url
    finally:
        stop_process(server)  # by its pid
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """One browser context for the module (a dismissed welcome dialog stays dismissed)."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium.new_context(viewport={"width": 1600, "height": 1000})
        finally:
            chromium.close()


def open_page(browser, url: str, wait_for: str, shot: str, settled: str | None = None) -> str:
    """The page at ``url`` once ``wait_for`` is visible (and ``settled`` gone), screenshotted; its visible text."""
    page = browser.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.get_by_text(wait_for, exact=False).first.wait_for(timeout=120_000)
    skip = page.get_by_role("button", name="Skip")  # the UI's first-visit community dialog
    with contextlib.suppress(Exception):
        skip.wait_for(timeout=3000)
        skip.click()
    if settled:
        page.get_by_text(settled).first.wait_for(state="detached", timeout=120_000)
    page.wait_for_timeout(1500)  # let the remaining queries settle
    page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)
    text = page.inner_text("body")
    page.close()
    return text


def assert_no_error_banner(text: str) -> None:
    for error in ERROR_TEXTS:
        assert error not in text, f"error banner {error!r} on the page:\n{text[:3000]}"


def test_global_lineage_shows_every_group_without_errors(ui, browser):
    text = open_page(browser, f"{ui}/asset-groups", "serving", "lineage", settled="fetching statuses")
    assert_no_error_banner(text)
    for group in GROUPS:  # once in the asset tree, once as a node of the graph
        assert text.count(group) >= 2, f"group {group!r} missing from the lineage graph:\n{text[:3000]}"


def test_evaluation_report_checks_list_every_gate(ui, browser):
    text = open_page(
        browser,
        f"{ui}/assets/evaluation_report?view=checks",
        "training_data_valid",
        "evaluation_report_checks",
    )
    assert_no_error_banner(text)
    for gate in GATE_NAMES:
        assert gate in text, f"gate {gate!r} missing from the checks tab:\n{text[:3000]}"


def test_runs_page_lists_named_jobs(ui, browser):
    text = open_page(browser, f"{ui}/runs", "retraining_job", "runs")
    assert_no_error_banner(text)
    for job in NAMED_JOBS:
        assert job in text, f"job {job!r} missing from the runs page:\n{text[:3000]}"


def test_automation_page_lists_the_sensors_with_their_ticks(ui, browser):
    text = open_page(browser, f"{ui}/automation", "drift_retraining_sensor", "automation")
    assert_no_error_banner(text)
    for sensor in SENSORS:
        assert sensor in text, f"sensor {sensor!r} missing from the Automation page:\n{text[:3000]}"
    assert " ago" in text, f"no sensor shows a latest tick:\n{text[:3000]}"
    # the drift alarm: its tick requested the retraining run (a recorded tick, not "never run")
    text = open_page(
        browser, f"{ui}/locations/mlops_assets/sensors/drift_retraining_sensor", "Latest tick", "drift_sensor"
    )
    assert_no_error_banner(text)
    assert "Sensor has never run" not in text, text[:3000]
    assert "1 run requested" in text and "retraining_job" in text, text[:3000]


def test_runs_list_shows_named_jobs_launched_by_sensors(ui, browser):
    for sensor, job in SENSOR_JOBS.items():
        query = f"q%5B0%5D=tag%3Adagster%2Fsensor_name%3D{sensor}"  # the runs list's "Launched by" filter
        text = open_page(browser, f"{ui}/runs?{query}", job, f"runs_by_{sensor}")
        assert_no_error_banner(text)
        assert "Launched by" in text and sensor in text, text[:3000]
        assert job in text, f"no {job} run launched by {sensor}:\n{text[:3000]}"
        assert "Manually launched" not in text and "__ASSET_JOB" not in text, text[:3000]
