"""The engine names no domain: nothing in mlops_assets/ names an example's entity, tables, columns or categories."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mlops_assets_tests.conftest import BIKES_SPEC, CHURN_SPEC, REPO

ENGINE = REPO / "mlops_assets"
#: Words of the churn domain written in the issue that asked for this test, plus every name in the examples' specs.
CHURN_WORDS = (
    "churn",
    "churned",
    "customer",
    "customers",
    "login",
    "logins",
    "support_ticket",
    "age_group",
    "purchase",
    "purchases",
    "subscriber",
)
#: Ordinary words the examples also use (an engine may say "events", "labels" or "standard deviation").
GENERIC = {
    "events",
    "labels",
    "amount",
    "price",
    "capacity",
    "district",
    "standard",
    "basic",
    "member",
    "casual",
    "classic",
    "electric",
    "north",
    "south",
    "east",
    "west",
    "premium",
    "as_of",  # the time a read is "as of": the field's word (serving and batch accept `as_of`)
    "event_timestamp",  # Feast's name for the entity rows' time column, kept for users of that API
}


def _names(spec_path: Path) -> set[str]:
    """Every source, column, view, feature, entity and model name of an example spec."""
    spec = yaml.safe_load(spec_path.read_text())
    names = {spec["name"], *spec["entities"], *(e["join_key"] for e in spec["entities"].values())}
    for name, source in spec["sources"].items():
        names |= {name, source.get("landing", name), *source["columns"]}
        for column in source["columns"].values():
            if isinstance(column, dict):
                names |= {str(v) for v in column.get("values", [])}
    for name, view in spec["feature_views"].items():
        names |= {name, *view["features"]}
    names.add(spec["model"]["name"])
    return {n for n in names if len(n) > 3}  # short generic words (e.g. "plan" is 4: kept) only


def _engine_text() -> dict[Path, str]:
    files = [
        p for p in ENGINE.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".json", ".sql", ".md")
    ]
    return {p: p.read_text() for p in files}


def test_no_engine_file_names_an_example_domain():
    words = set(CHURN_WORDS) | ((_names(CHURN_SPEC) | _names(BIKES_SPEC)) - GENERIC)
    pattern = re.compile(
        r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b", re.I
    )
    found = []
    for path, text in _engine_text().items():
        for number, line in enumerate(text.splitlines(), start=1):
            match = pattern.search(line)
            if match:
                found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)!r} in {line.strip()[:100]}")
    assert found == [], "\n".join(found[:50])


def test_the_word_list_catches_what_it_should():
    """The check is not vacuous: the example specs' own names are in it."""
    names = _names(CHURN_SPEC)
    assert {"customer_id", "raw_events", "purchase_activity", "age_group", "churned"} <= names
    assert {"station_id", "trips", "trips_next_7d"} <= _names(BIKES_SPEC)
