"""Scenario: a simulated shop drifts on day 50; the drift report flags it, the sensor requests retraining,
and the retrained model is promoted only when every quality gate passes."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import pytest

from mlops_assets.features.assets import training_set
from mlops_assets.featurestore import FeatureStore
from mlops_assets.ingestion.schema import CONTRACTS
from mlops_assets.ingestion.validate import ingest_day, write_day
from mlops_assets.monitoring import daily
from mlops_assets.monitoring.assets import drift_report
from mlops_assets.monitoring.sensors import drift_retraining_sensor
from mlops_assets.resources import DataDirResource
from mlops_assets.settings import DataPaths
from mlops_assets.simulate import Scenario, simulate
from mlops_assets.training import registry
from mlops_assets.training.assets import candidate_model, evaluation_report, promotion
from mlops_assets.training.gates import GATE_NAMES
from mlops_assets.training.resources import MlflowResource
from mlops_assets.training.tracking import TrackingConfig, client_for

DRIFT_AT = 50
DAYS = [(date(2026, 1, 1) + timedelta(days=i)).isoformat() for i in range(64)]
# The covariate drift changes purchase amounts and logins in one region; these are the features it moves first.
COVARIATE_FEATURES = {"total_spend_7d", "avg_order_value_7d", "max_order_value_7d", "logins_7d"}
# Model inputs: 7- and 30-day windows and the profile. 90-day windows are left out: a 64-day simulation never
# fills them, so they grow every day and would drift with or without a scenario.
FEATURES = [
    f"{p}_{w}d"
    for p in ("logins", "total_purchases", "total_spend", "avg_order_value", "max_order_value", "tickets")
    for w in (7, 30)
]
FEATURES += [
    "days_since_last_login",
    "days_since_last_purchase",
    "days_since_last_ticket",
    "account_age_days",
    "plan",
    "region",
]


def ingest(paths: DataPaths, tables: list[str], days: list[str]) -> None:
    for day in days:
        for table in tables:
            result = ingest_day(CONTRACTS[table], paths.landing_dir(table), day)
            write_day(
                result,
                paths.partition_dir(table, day),
                paths.quarantine_dir(table, day),
                paths.landing_dir(table),
            )


def retraining_config(**gates) -> dict:
    return {
        "ops": {
            "candidate_model": {
                "config": {"model_type": "logistic_regression", "features": FEATURES, "importance_repeats": 1}
            },
            "evaluation_report": {"config": {"latency_calls": 50, **gates}},
        }
    }


@pytest.mark.slow
def test_drift_is_flagged_after_day_x_and_retraining_is_gated(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = DataPaths(tmp_path / "data")
    simulate(
        paths.landing,
        customers=600,
        days=len(DAYS),
        seed=0,
        scenarios=[
            Scenario(
                "covariate_drift", DRIFT_AT, {"region": "north", "amount_factor": 3.0, "login_factor": 0.3}
            ),
            Scenario("concept_drift", DRIFT_AT),
        ],
    )
    ingest(paths, ["raw_events", "customers"], DAYS)
    ingest(paths, ["raw_labels"], DAYS[:DRIFT_AT])  # the champion is trained before day X
    store = FeatureStore(paths.root)
    for day in DAYS[28:]:
        store.materialize(day)
    data = DataDirResource(root=str(paths.root))
    resources = {"data": data, "mlflow": MlflowResource(data=data)}
    retraining = [training_set, candidate_model, evaluation_report, promotion]
    client = client_for(TrackingConfig.for_data_root(paths.root))

    with dg.instance_for_test() as instance:
        first = dg.materialize(
            retraining, resources=resources, instance=instance, run_config=retraining_config()
        )
        assert first.success
        v1 = int(registry.alias_version(client, registry.CHAMPION).version)
        ingest(paths, ["raw_labels"], DAYS[DRIFT_AT:])  # the labels after day X arrive

        report = dg.materialize(
            [drift_report],
            resources=resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": DAYS[DRIFT_AT - 6],
                "dagster/asset_partition_range_end": DAYS[-1],
            },
            run_config={"ops": {"drift_report": {"config": {"histograms": "none"}}}},
        )
        by_day = {m.partition: m.metadata for m in report.asset_materializations_for_node("drift_report")}
        flagged = {d: set(m["drifted_features"].value) for d, m in by_day.items()}
        before = [d for d in by_day if d < DAYS[DRIFT_AT]]
        # before day X only account_age_days may drift: recent signups are scored but not yet labelled
        assert all(flagged[d] <= {"account_age_days"} for d in before), {d: flagged[d] for d in before}
        # within the first days after X, the features the scenario moves are flagged, and stay flagged
        soon = DAYS[DRIFT_AT + 1 : DRIFT_AT + 4]
        assert any(flagged[d] & COVARIATE_FEATURES for d in soon), {d: flagged[d] for d in soon}
        assert all(len(flagged[d] & COVARIATE_FEATURES) >= 2 for d in DAYS[DRIFT_AT + 3 :])

        # concept drift: realized performance drops once post-X labels fill the window
        realized = {d: m["realized_accuracy"].value for d, m in by_day.items()}
        pre = sum(realized[d] for d in before) / len(before)
        assert realized[DAYS[-1]] < pre - 0.05, realized
        checks = {c.check_name: c for c in report.get_asset_check_evaluations()}
        for name in (daily.REALIZED_PERFORMANCE_CHECK, daily.DATASET_DRIFT_CHECK):
            failing = checks[name].metadata["failing_days"].value
            assert not checks[name].passed and failing and min(failing) >= DAYS[DRIFT_AT], (name, failing)

        # the failed ERROR checks request exactly one retraining run, with the reason in its tags
        result = drift_retraining_sensor(dg.build_sensor_context(instance=instance))
        (request,) = result.run_requests
        assert (
            request.tags["mlops/trigger"] == "drift"
            and f"champion v{v1}" in request.tags["mlops/trigger_reason"]
        )
        assert not drift_retraining_sensor(
            dg.build_sensor_context(instance=instance, cursor=result.cursor)
        ).run_requests

        # the retrained model is not promoted when a gate fails (an unreachable AUC floor) ...
        blocked = dg.materialize(
            retraining,
            resources=resources,
            instance=instance,
            tags=request.tags,
            run_config=retraining_config(min_roc_auc=0.999),
            raise_on_error=False,
        )
        assert not blocked.success
        assert int(registry.alias_version(client, registry.CHAMPION).version) == v1
        # ... and with the default gates it is promoted exactly when every gate passed
        rerun = dg.materialize(
            retraining,
            resources=resources,
            instance=instance,
            tags=request.tags,
            run_config=retraining_config(),
            raise_on_error=False,
        )
        gates = {
            c.check_name: c.passed for c in rerun.get_asset_check_evaluations() if c.check_name in GATE_NAMES
        }
        assert set(gates) == set(GATE_NAMES)
        champion = int(registry.alias_version(client, registry.CHAMPION).version)
        assert (champion != v1) == all(gates.values()), gates
        run = instance.get_run_by_id(rerun.run_id)
        assert run.tags["mlops/trigger"] == "drift"
