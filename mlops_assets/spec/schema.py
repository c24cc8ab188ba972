"""The JSON Schema of spec files (shipped as ``project.schema.json`` for editors; `mlops spec schema` prints it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlops_assets.spec.model import COLUMN_TYPES, ProjectSpec

SCHEMA_FILE = Path(__file__).with_name("project.schema.json")


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12), with the YAML shorthands the loader accepts."""
    schema = ProjectSpec.model_json_schema(mode="validation")
    defs = schema["$defs"]
    # a column may be written as its type alone: `amount: float64`
    columns = defs["Source"]["properties"]["columns"]
    column = {"anyOf": [{"enum": list(COLUMN_TYPES)}, {"$ref": "#/$defs/Column"}]}
    columns["additionalProperties"] = False
    columns["patternProperties"] = {
        pattern: column for pattern in columns.get("patternProperties", {"^.*$": None})
    }
    # model features: "all", a list of references, or {include, tags, exclude}
    features = defs["Model"]["properties"]["features"]
    features.pop("$ref", None)
    features["anyOf"] = [
        {"const": "all"},
        {"type": "array", "items": {"type": "string"}},
        {"$ref": "#/$defs/FeatureSelection"},
    ]
    # a unique key may be one column name
    key = defs["Source"]["properties"]["unique_key"]
    key["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    key.pop("type", None)
    key.pop("items", None)
    for window in (
        defs["Feature"]["properties"]["window"],
        defs["Population"]["properties"]["active_within"],
        defs["Model"]["properties"]["warmup"],
    ):
        window.pop("type", None)
    ttl = defs["FeatureView"]["properties"]["ttl"]
    pattern = ttl.pop("pattern")
    ttl.pop("type", None)
    ttl["anyOf"] = [{"type": "string", "pattern": pattern}, {"type": "null"}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlops_assets project spec"
    return schema


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(write_schema())
