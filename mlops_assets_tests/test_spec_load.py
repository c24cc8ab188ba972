"""Spec files: every problem reported at once with its line and key; the shipped JSON Schema; the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.spec.load import SpecError, load_spec
from mlops_assets.spec.schema import SCHEMA_FILE, json_schema
from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC

GOOD = """\
name: shop
partitions: {start: 2026-01-01, end: 2026-01-31}
entities:
  user: {join_key: user_id}
sources:
  clicks:
    kind: events
    timestamp: ts
    unique_key: [click_id]
    columns: {click_id: string, user_id: string, ts: timestamp, page: string, price: {type: float64, nullable: true}}
feature_views:
  activity:
    entity: user
    source: clicks
    features:
      clicks_7d: {agg: count, window: 7d}
"""

BROKEN = """\
name: shop
partitions: {start: 2026-01-01}
entities:
  user: {join_key: user_id}
sources:
  clicks:
    kind: events
    columns: {click_id: string, user_id: string, ts: timestamp, page: string, price: float64}
  visits:
    kind: events
    timestamp: ts
    columns: {user_id: string, ts: timestamp, price: float64}
feature_views:
  activity:
    entity: usr
    source: visits
    features:
      n: {agg: count, window: 30d}
      cost: {agg: sum, column: price, window: weekly}
  more:
    entity: user
    source: clickz
    features:
      m: {agg: count}
  third:
    entity: user
    source: visits
    filter: "pagez = 'home'"
    features:
      avg: {agg: mean}
      n: {agg: count}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_valid_spec_loads_with_its_defaults(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    view = spec.feature_views["activity"]
    assert view.features["clicks_7d"].window == 7
    assert spec.sources["clicks"].columns["page"].closed is False  # categorical sets are open by default
    assert spec.sources["clicks"].landing is None and spec.landing_folder("clicks") == "clicks"


def test_every_problem_is_reported_at_once_with_line_and_key(tmp_path):
    path = write(tmp_path, BROKEN)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    error = caught.value
    text = str(error)
    found = {issue.where: issue.message for issue in error.issues}
    # a missing key, a wrong value, unknown entity / source, mean without column, a filter naming an
    # unknown column, duplicate feature names: all in one error, each with its key path
    assert found["sources.clicks.timestamp"] == "required key is missing"
    assert "weekly" in found["feature_views.activity.features.cost.window"]
    assert "unknown entity 'usr'" in found["feature_views.activity.entity"]
    assert "unknown source 'clickz'" in found["feature_views.more.source"]
    assert "'mean' needs a 'column'" in found["feature_views.third.features.avg"]
    assert "pagez" in found["feature_views.third.filter"]
    assert "also defined in view 'activity'" in found["feature_views.third.features.n"]
    assert text.startswith(f"{path}: {len(error.issues)} problems")
    assert "line 15, feature_views.activity.entity" in text  # lines point into the user's file


def test_duplicate_yaml_keys_are_an_error_not_a_silent_overwrite(tmp_path):
    path = write(
        tmp_path,
        GOOD.replace(
            "      clicks_7d: {agg: count, window: 7d}\n",
            "      clicks_7d: {agg: count, window: 7d}\n      clicks_7d: {agg: count, window: 1d}\n",
        ),
    )
    with pytest.raises(SpecError, match="duplicate key 'clicks_7d'"):
        load_spec(path)


def test_invalid_yaml_and_missing_file_name_the_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml: 1 problem"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(write(tmp_path, "name: [unclosed\n"))


def test_type_and_aggregation_mismatches_are_named(tmp_path):
    text = GOOD.replace(
        "      clicks_7d: {agg: count, window: 7d}",
        "      s: {agg: sum, column: page}\n      d: {agg: days_since, column: ts}\n      l: {agg: latest, column: ts}",
    )
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, text))
    found = {issue.where: issue.message for issue in caught.value.issues}
    assert "needs a numeric column; 'page' is string" in found["feature_views.activity.features.s.column"]
    assert "does not apply to a events source" in found["feature_views.activity.features.d.agg"]
    assert "use 'days_since'" in found["feature_views.activity.features.l.agg"]


def test_the_shipped_json_schema_is_current_and_validates_both_examples():
    current = json.loads(json.dumps(json_schema(), sort_keys=True))
    assert json.loads(SCHEMA_FILE.read_text()) == current, "regenerate it: python -m mlops_assets.spec.schema"
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for path in (CHURN_SPEC, BIKES_SPEC):
        document = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        assert list(validator.iter_errors(document)) == [], path
    broken = json.loads(json.dumps(yaml.safe_load(BROKEN), default=str))
    assert any(list(e.path)[:2] == ["sources", "clicks"] for e in validator.iter_errors(broken))


def test_mlops_spec_validate_prints_every_error_and_exits_non_zero(tmp_path, capsys):
    assert main(["spec", "validate", str(write(tmp_path, GOOD))]) == 0
    assert "valid: project 'shop'" in capsys.readouterr().out
    assert main(["spec", "validate", str(write(tmp_path, BROKEN, "broken.yaml"))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n  ") >= 7 and "pagez" in err and "clickz" in err
