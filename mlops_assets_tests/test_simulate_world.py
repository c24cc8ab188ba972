"""The churn example's simulator: files the example's spec accepts, determinism, learnable labels, and the dated
scenarios."""

from __future__ import annotations

import re
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from examples.churn.simulator import (
    Scenario,
    WorldParams,
    churn_logit,
    list_scenarios,
    parse_scenario,
    simulate,
    simulate_world,
)
from examples.churn.simulator.world import WindowStats
from mlops_assets.ingestion.schema import contract_for
from mlops_assets.spec.load import load_spec
from mlops_assets_tests.conftest import CHURN_SPEC

START = "2026-01-01"
SPEC = load_spec(CHURN_SPEC)
#: The contract of each landing folder, from the example's spec: what the simulator must write.
FOLDER_CONTRACT = {
    SPEC.landing_folder(name): contract_for(name, source) for name, source in SPEC.sources.items()
}
#: The known values the spec declares for each categorical column (closed or open), by folder.
FOLDER_VALUES = {
    SPEC.landing_folder(name): {c: col.values for c, col in source.columns.items() if col.values is not None}
    for name, source in SPEC.sources.items()
}
EVENT_TYPES = SPEC.sources["raw_events"].columns["event_type"].values
PLANS = SPEC.sources["customers"].columns["plan"].values


def _day_files(out: Path, folder: str, ext: str = "parquet") -> list[Path]:
    return sorted((out / folder).glob(f"{folder}_????-??-??.{ext}"))


def _load(out: Path, folder: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in _day_files(out, folder)], ignore_index=True)


def _file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _day_of(path: Path) -> date:
    return date.fromisoformat(re.search(r"(\d{4}-\d{2}-\d{2})", path.name).group(1))


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return out, simulate_world(out, customers=300, days=40, start=START, seed=7)


@pytest.fixture(scope="module")
def incident_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("incident")
    # the entry point `mlops demo` calls (the example's `simulate`); the tests below compare it with simulate_world
    return out, simulate(out, days=40, start=START, seed=7, size=300, scenarios=["quality_incident@day12"])


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path, incident_run):
    """Also: the demo's `simulate(size=...)` writes the very world `simulate_world(customers=...)` does."""
    out, _ = incident_run
    again = tmp_path / "again"
    simulate_world(again, customers=300, days=40, start=START, seed=7, scenarios=["quality_incident@day12"])
    first, second = _file_bytes(out), _file_bytes(again)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)

    other = tmp_path / "other"
    simulate_world(other, customers=300, days=40, start=START, seed=8, scenarios=["quality_incident@day12"])
    third = _file_bytes(other)
    assert third.keys() == first.keys()
    differing = [n for n in first if n.startswith("events/") and first[n] != third[n]]
    assert len(differing) == 41  # every events file, the corrupt extra file included


def test_files_match_the_contracts_and_stay_inside_their_day(clean_run):
    out, summary = clean_run
    for folder, contract in FOLDER_CONTRACT.items():
        files = _day_files(out, folder)
        assert [_day_of(p) for p in files] == [date(2026, 1, 1) + timedelta(days=i) for i in range(40)]
        assert sorted(p.name for p in (out / folder).iterdir()) == [
            p.name for p in files
        ]  # no temp leftovers
        total = 0
        for path in files:
            table = pq.read_table(path)
            assert table.schema.equals(contract.schema), (path, table.schema)
            total += table.num_rows
            if table.num_rows == 0:
                continue
            day_start = pd.Timestamp(_day_of(path), tz="UTC")
            stamps = table.column(contract.partition_column).to_pandas()
            assert stamps.min() >= day_start and stamps.max() < day_start + pd.Timedelta(days=1)
            for column, known in FOLDER_VALUES[folder].items():  # only the spec's values, open sets included
                values = {str(v) for v in table.column(column).to_pylist()}
                assert values <= set(known), (path, column, values - set(known))
        assert total == summary.rows[folder]
    assert len(summary.files) == 3 * 40


def test_records_are_consistent_across_tables(clean_run):
    out, summary = clean_run
    events, labels, customers = _load(out, "events"), _load(out, "labels"), _load(out, "customers")
    first_day = pd.read_parquet(_day_files(out, "customers")[0])
    initial = first_day[first_day.updated_at == pd.Timestamp(START, tz="UTC")]
    assert len(initial) == 300
    assert (pd.to_datetime(initial.signup_date) < pd.Timestamp(START)).all()
    later = customers[customers.updated_at >= pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=1)]
    new = later[~later.customer_id.isin(initial.customer_id)]
    assert (
        len(new) > 0 and (pd.to_datetime(new.signup_date) >= pd.Timestamp(START) + pd.Timedelta(days=1)).all()
    )
    assert not customers.duplicated(["customer_id", "updated_at"]).any()
    assert summary.customers_total == customers.customer_id.nunique()
    assert customers.customer_id.str.fullmatch(r"C\d{6}").all()

    assert events.event_id.is_unique
    assert set(events.event_type) == set(EVENT_TYPES)
    purchase = events.event_type == "purchase"
    assert (events.amount[purchase] > 0).all() and events.amount[~purchase].isna().all()
    first_seen = customers.groupby("customer_id").updated_at.min()
    assert (events.event_timestamp >= first_seen.reindex(events.customer_id).to_numpy()).all()
    per_customer_day = len(events) / events.groupby(["customer_id", events.event_timestamp.dt.date]).ngroups
    assert 2.5 < per_customer_day < 7
    assert labels.churned.isin([0, 1]).all() and labels.customer_id.isin(customers.customer_id).all()


def test_churned_customers_fall_silent_and_are_not_labelled_again(clean_run):
    out, _ = clean_run
    events, labels = _load(out, "events"), _load(out, "labels")
    churn_time = labels[labels.churned == 1].set_index("customer_id").label_timestamp
    assert len(churn_time) > 5
    after = events[events.customer_id.isin(churn_time.index)]
    assert (after.event_timestamp < churn_time.reindex(after.customer_id).to_numpy()).all()
    later_labels = labels[labels.customer_id.isin(churn_time.index)]
    assert (later_labels.label_timestamp <= churn_time.reindex(later_labels.customer_id).to_numpy()).all()
    # the ones who stayed keep producing events after their label
    stayed = labels[labels.churned == 0].groupby("customer_id").label_timestamp.max()
    last_event = events.groupby("customer_id").event_timestamp.max().reindex(stayed.index)
    assert (last_event > stayed).mean() > 0.95


def _window_features(events: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Per-label aggregates of the customer's events in the 30 days before the label time."""
    joined = labels.reset_index(names="label").merge(events, on="customer_id")
    joined = joined[
        (joined.event_timestamp < joined.label_timestamp)
        & (joined.event_timestamp >= joined.label_timestamp - pd.Timedelta(days=30))
    ]
    counts = (
        joined.groupby(["label", "event_type"]).size().unstack(fill_value=0).reindex(labels.index).fillna(0)
    )
    features = pd.DataFrame(index=labels.index)
    for kind in EVENT_TYPES:
        features[kind] = np.log1p(counts[kind] if kind in counts else 0)
    features["value"] = np.log1p(joined.groupby("label").amount.sum().reindex(labels.index).fillna(0))
    last_login = (
        joined[joined.event_type == "login"].groupby("label").event_timestamp.max().reindex(labels.index)
    )
    features["days_since_login"] = ((labels.label_timestamp - last_login).dt.total_seconds() / 86400).fillna(
        30
    )
    return features


@pytest.mark.slow
def test_labels_are_learnable_from_behaviour_before_the_label_time(tmp_path):
    summary = simulate_world(tmp_path, customers=1500, days=75, start=START, seed=3)
    assert 0.10 <= summary.churn_rate <= 0.25
    events, labels, customers = (
        _load(tmp_path, "events"),
        _load(tmp_path, "labels"),
        _load(tmp_path, "customers"),
    )
    labels = labels.sort_values(["label_timestamp", "customer_id"], ignore_index=True)
    plan = customers.sort_values("updated_at").groupby("customer_id").plan.last()
    features = _window_features(events, labels)
    for name in PLANS:
        features[name] = (plan.reindex(labels.customer_id).to_numpy() == name).astype(float)
    train = labels.label_timestamp < labels.label_timestamp.quantile(0.65)
    model = LogisticRegression(max_iter=2000).fit(features[train], labels.churned[train])
    holdout = ~train
    assert holdout.sum() > 500 and labels.churned[holdout].sum() > 40
    auc = roc_auc_score(labels.churned[holdout], model.predict_proba(features[holdout])[:, 1])
    assert auc >= 0.65, auc
    # the signs the documented churn rule implies: more logins keep customers, tickets push them away
    coef = dict(zip(features.columns, model.coef_[0], strict=True))
    assert coef["login"] < 0 and coef["support_ticket"] > 0


def test_scenarios_change_nothing_before_their_date(clean_run, tmp_path):
    out, _ = clean_run
    baseline = _file_bytes(out)
    drifted = tmp_path / "drift"
    summary = simulate_world(
        drifted,
        customers=300,
        days=40,
        start=START,
        seed=7,
        scenarios=["covariate_drift@2026-01-21", "concept_drift@day25"],
    )
    assert [(s.name, s.day, s.date) for s in summary.scenarios] == [
        ("covariate_drift", 20, "2026-01-21"),
        ("concept_drift", 25, "2026-01-26"),
    ]
    changed = {name for name, data in _file_bytes(drifted).items() if baseline.get(name) != data}
    assert changed, "the scenarios had no effect"
    assert min(_day_of(Path(name)) for name in changed) == date(2026, 1, 21)
    # concept drift alone changes labels first (labels start once a 30-day window exists), behaviour follows
    concept = tmp_path / "concept"
    simulate_world(concept, customers=300, days=40, start=START, seed=7, scenarios=["concept_drift@day32"])
    changed = {name for name, data in _file_bytes(concept).items() if baseline.get(name) != data}
    first_changed = min(_day_of(Path(name)) for name in changed)
    assert first_changed >= date(2026, 2, 2)
    assert f"labels/labels_{first_changed}.parquet" in changed


def test_covariate_drift_shifts_the_drifted_region_after_its_date_only(tmp_path):
    simulate_world(tmp_path, customers=600, days=40, start=START, seed=5, scenarios=["covariate_drift@day20"])
    events, customers = _load(tmp_path, "events"), _load(tmp_path, "customers")
    region = customers.drop_duplicates("customer_id").set_index("customer_id").region
    events["region"] = region.reindex(events.customer_id).to_numpy()
    events["after"] = events.event_timestamp >= pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=20)
    purchases = events[events.event_type == "purchase"]
    amount = purchases.groupby(["region", "after"]).amount.mean().unstack()
    kinds = events.groupby(["region", "after", "event_type"]).size().unstack()
    logins_per_purchase = (kinds["login"] / kinds["purchase"]).unstack()
    amount_ratio = amount[True] / amount[False]
    login_ratio = logins_per_purchase[True] / logins_per_purchase[False]
    assert 1.6 < amount_ratio["west"] < 2.0 and 0.4 < login_ratio["west"] < 0.6
    others = amount_ratio.drop("west")
    assert others.between(0.9, 1.1).all() and login_ratio.drop("west").between(0.9, 1.1).all()


def test_concept_drift_changes_the_rule_not_the_inputs():
    params = WorldParams()
    n = 5
    base = WindowStats(
        logins=np.full(n, 60.0),
        purchases=np.full(n, 8.0),
        tickets=np.arange(n, dtype=float),
        purchase_value=np.full(n, 300.0),
        days_since_last_login=np.ones(n),
    )
    plan = np.zeros(n, dtype=int)
    before = churn_logit(base, plan, concept_drift=False, params=params)
    after = churn_logit(base, plan, concept_drift=True, params=params)
    assert np.all(np.diff(before) > 0)  # tickets matter before
    assert np.allclose(after, after[0])  # and not after
    low_value = WindowStats(
        base.logins, base.purchases, base.tickets, np.full(n, 30.0), base.days_since_last_login
    )
    assert np.all(churn_logit(low_value, plan, True, params) - after > 3.0)
    assert np.allclose(churn_logit(low_value, plan, False, params), before)


def test_quality_incident_injects_the_documented_defects(incident_run, clean_run):
    out, summary = incident_run
    clean_out, _ = clean_run
    (applied,) = summary.scenarios
    assert (applied.name, applied.date) == ("quality_incident", "2026-01-13")
    injected = applied.injected
    bad = out / "events" / "events_2026-01-13.parquet"
    table = pq.read_table(bad)
    assert table.schema.field("amount").type == pa.string()
    frame = table.to_pandas()
    clean = pd.read_parquet(clean_out / "events" / "events_2026-01-13.parquet")
    assert injected["rows_clean"] == len(clean) and injected["rows_written"] == len(frame)

    assert frame.customer_id.isna().sum() == injected["null_customer_id"] > 0
    duplicates = frame.duplicated("event_id").sum()
    assert duplicates == injected["duplicate_event"] > 0 and len(frame) - duplicates == len(clean)
    text = frame.amount[frame.event_type == "purchase"]
    parsed = pd.to_numeric(text, errors="coerce")
    assert parsed.isna().sum() == injected["unparsable_amount"] > 0
    assert "n/a" in set(text[parsed.isna()])
    assert (parsed < 0).sum() == injected["negative_amount"] > 0
    bad_rows = (
        injected["null_customer_id"]
        + injected["duplicate_event"]
        + injected["unparsable_amount"]
        + injected["negative_amount"]
    )
    assert 0.01 <= bad_rows / len(frame) <= 0.03

    extra = out / "events" / "events_2026-01-13_extra.parquet"
    assert extra.exists()
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(extra)
    # every other file is exactly what the clean run wrote
    clean_files, incident_files = _file_bytes(clean_out), _file_bytes(out)
    differing = {name for name in incident_files if clean_files.get(name) != incident_files[name]}
    assert differing == {"events/events_2026-01-13.parquet", "events/events_2026-01-13_extra.parquet"}


def test_csv_files_hold_the_same_rows_as_parquet(tmp_path, clean_run):
    parquet_out, summary = clean_run
    simulate_world(tmp_path, customers=300, days=40, start=START, seed=7, file_format="csv")
    for folder, contract in FOLDER_CONTRACT.items():
        for path in _day_files(tmp_path, folder, "csv")[::9]:
            options = pacsv.ConvertOptions(column_types=contract.schema, strings_can_be_null=True)
            from_csv = pacsv.read_csv(path, convert_options=options)
            from_parquet = pq.read_table(parquet_out / folder / path.with_suffix(".parquet").name)
            assert from_csv.cast(from_parquet.schema).equals(from_parquet)


def test_scenario_names_parse_and_bad_ones_are_rejected(tmp_path):
    assert parse_scenario("covariate_drift") == Scenario("covariate_drift")
    assert parse_scenario("covariate_drift@2026-03-01") == Scenario("covariate_drift", "2026-03-01")
    assert parse_scenario("concept_drift@day60") == Scenario("concept_drift", 60)
    assert Scenario("quality_incident").start_day(date(2026, 1, 1), 120) == 45
    assert Scenario("concept_drift", "2026-03-01").start_day(date(2026, 1, 1), 120) == 59
    assert {info.name for info in list_scenarios()} == {
        "covariate_drift",
        "concept_drift",
        "quality_incident",
    }
    assert all(info.description for info in list_scenarios())
    for bad in ("nope", "concept_drift@60", "concept_drift@day"):
        with pytest.raises(ValueError):
            parse_scenario(bad)
    with pytest.raises(ValueError, match="outside"):
        simulate_world(tmp_path, customers=10, days=5, scenarios=["concept_drift@day9"])
    with pytest.raises(ValueError, match="unknown parameters"):
        Scenario("covariate_drift", params={"factor": 2})
    with pytest.raises(ValueError, match="file_format"):
        simulate_world(tmp_path, customers=10, days=5, file_format="json")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_default_size_runs_in_seconds(tmp_path):
    began = time.perf_counter()
    summary = simulate_world(tmp_path, scenarios=["quality_incident"])
    elapsed = time.perf_counter() - began
    assert summary.rows["events"] > 1_000_000
    assert elapsed < 30, elapsed
