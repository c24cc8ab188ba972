"""MLflow's scoring protocol (``POST /invocations``): the request bodies ``mlflow models serve`` accepts, as rows.

Accepted JSON bodies, as MLflow's scoring server reads them (exactly one of the four input keys; a
``params`` key and any other key are ignored, as MLflow ignores them for a model without a params schema):

* ``{"dataframe_split": {"columns": [...], "data": [[...], ...], "index": [...]?}}``
* ``{"dataframe_records": [{column: value, ...}, ...]}``
* ``{"inputs": ...}`` or ``{"instances": ...}``: a list of records, a dict of columns (``{column: [values]}``)
  or a single record (``{column: value}``)

The response is MLflow's: ``{"predictions": [...]}`` with, per row, ``[P(negative), P(positive)]`` for a
classifier (what ``predict_proba`` gives, which is what the project's models are logged to serve) or the
prediction of a regressor. Errors are MLflow's shape too: ``{"error_code": ..., "message": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
BAD_REQUEST = "BAD_REQUEST"


class InvocationError(ValueError):
    """A request MLflow's protocol cannot read (a 4xx), with MLflow's error code."""

    def __init__(self, message: str, status: int = 400, error_code: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": str(self)}


def _reject_constant(name: str) -> float:
    raise InvocationError(f"{name} is not a JSON number; send null for a missing value")


def decode(body: bytes) -> Any:
    """The JSON document of a request body (NaN / Infinity literals refused)."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except InvocationError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvocationError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvocationError("the body nests too deeply") from None


def _records(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, Mapping) for r in value):
        raise InvocationError(f"{where} must be a list of records ({{column: value}} objects)")
    return [dict(r) for r in value]


def _columns(value: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    columns = {str(k): v for k, v in value.items()}
    if not columns:
        raise InvocationError(f"{where} has no columns")
    if all(not isinstance(v, list | dict) for v in columns.values()):  # one record
        return [columns]
    if not all(isinstance(v, list) for v in columns.values()):
        raise InvocationError(
            f"{where} must map every column to a list of values (or every column to one value)"
        )
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise InvocationError(f"{where}: the columns have different lengths {sorted(lengths)}")
    n = lengths.pop()
    return [{c: v[i] for c, v in columns.items()} for i in range(n)]


def _split(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise InvocationError('dataframe_split must be an object {"columns": [...], "data": [[...], ...]}')
    columns, data = value.get("columns"), value.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvocationError("dataframe_split needs 'columns', a list of column names")
    if len(set(columns)) != len(columns):
        raise InvocationError("dataframe_split has duplicate column names")
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise InvocationError("dataframe_split needs 'data', a list of rows (lists of values)")
    wrong = [i for i, r in enumerate(data) if len(r) != len(columns)]
    if wrong:
        raise InvocationError(
            f"dataframe_split: row {wrong[0]} has {len(data[wrong[0]])} values for {len(columns)} columns"
        )
    return [dict(zip(columns, r, strict=True)) for r in data]


def parse(document: Any) -> list[dict[str, Any]]:
    """The rows of an MLflow scoring request (raises :class:`InvocationError` naming what is wrong)."""
    if not isinstance(document, Mapping):
        raise InvocationError(
            f"the input must be a JSON object with exactly one of the fields {list(FORMATS)}; "
            f"received {type(document).__name__}"
        )
    present = [k for k in FORMATS if k in document]
    if len(present) != 1:
        raise InvocationError(
            f"the input must be a JSON object with exactly one of the fields {list(FORMATS)}; "
            f"received the fields {sorted(map(str, document))}"
        )
    name = present[0]
    value = document[name]
    if name == "dataframe_split":
        rows = _split(value)
    elif name == "dataframe_records":
        rows = _records(value, name)
    elif isinstance(value, list):
        rows = _records(value, name)
    elif isinstance(value, Mapping):
        rows = _columns(value, name)
    else:
        raise InvocationError(f"{name} must be a list of records or an object of columns")
    if not rows:
        raise InvocationError(f"{name} holds no rows")
    return rows


def predictions(scores: Any, classifier: bool) -> list:
    """MLflow's ``predictions`` for the scores: ``[1 - p, p]`` per row of a classifier, the value of a regressor."""
    values = [float(s) for s in scores]
    return [[1.0 - p, p] for p in values] if classifier else values
