"""`mlops init`: a starter spec inferred from sample landing files, for the user to edit.

The landing folder holds one sub-folder per source, each with files named after their day
(``<source>/<anything>YYYY-MM-DD<anything>.parquet|.csv``). For each source the columns and their
types are inferred from the files, nulls seen make a column nullable, categorical columns stay open,
and a timestamp column, an entity key, the kind of source and starter feature views are proposed. The
spec written validates, and ingests the sample files with nothing quarantined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import yaml

from mlops_assets.ingestion.files import day_of_file

_TIME_HINT = re.compile(r"(time|timestamp|_at$|^ts$|date)", re.I)


@dataclass
class InferredSource:
    name: str
    files: list[Path]
    kind: str
    timestamp: str | None
    columns: dict[str, dict]
    key: str | None
    unique_key: list[str]
    notes: list[str] = field(default_factory=list)
    unique_columns: list[str] = field(default_factory=list)  # unique within (nearly) every file: record ids


@dataclass
class InitResult:
    path: Path
    sources: list[InferredSource]
    notes: list[str]

    def summary(self) -> str:
        lines = [
            f"wrote {self.path}: {len(self.sources)} source(s); edit it, then `mlops spec validate {self.path}`"
        ]
        for s in self.sources:
            lines.append(
                f"  {s.name}: {s.kind}, {len(s.files)} file(s), timestamp {s.timestamp}, entity key {s.key}, "
                f"{len(s.columns)} columns"
            )
            lines += [f"    note: {n}" for n in s.notes]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _read(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False).replace({"": None})


def _column_type(values: pd.Series) -> str:
    present = values.dropna()
    if pd.api.types.is_bool_dtype(values):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "timestamp"
    if pd.api.types.is_integer_dtype(values):
        return "int64"
    if pd.api.types.is_float_dtype(values):
        return "float64"
    if len(present) and all(isinstance(v, date) for v in present):
        return "date"
    text = present.astype(str)
    if text.empty:
        return "string"
    if text.str.fullmatch(r"-?\d+").all():
        return "int64"
    if pd.to_numeric(text, errors="coerce").notna().all():
        return "float64"
    if text.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all():
        return "date"
    if (
        text.str.match(r"\d{4}-\d{2}-\d{2}[ T]\d").all()
        and pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601").notna().all()
    ):
        return "timestamp"
    if text.str.lower().isin(["true", "false"]).all():
        return "bool"
    return "string"


def _is_id(column: str) -> bool:
    return column.lower().endswith("_id") or column.lower() == "id"


def infer_source(name: str, folder: Path) -> InferredSource:
    """Columns, types and a timestamp of one source folder (kind and key are decided across sources)."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in (".parquet", ".csv")
    )
    notes = []
    undated = [p.name for p in files if day_of_file(p.name) is None]
    if undated:
        notes.append(
            f"files without a day (YYYY-MM-DD) in their name are not ingested: {', '.join(undated[:5])}"
        )
    frames, votes, uniques = [], {}, {}
    for p in files:
        if day_of_file(p.name) is None:
            continue
        try:
            part = _read(p)
        except Exception as exc:  # an unreadable sample is reported, not fatal: ingestion quarantines it too
            notes.append(f"{p.name} is unreadable ({type(exc).__name__}); it will be quarantined whole")
            continue
        frames.append(part)
        for col in part.columns:
            if part[col].notna().any():  # an empty column carries no type
                votes.setdefault(str(col), []).append(_column_type(part[col]))
            unique = part[col].notna().all() and not part[col].duplicated().any()
            uniques.setdefault(str(col), []).append(bool(unique))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns: dict[str, dict] = {}
    for col in frame.columns:
        kinds = votes.get(str(col)) or ["string"]
        ctype = max(set(kinds), key=kinds.count)  # most files agree; the others are coerced or quarantined
        if len(set(kinds)) > 1:
            notes.append(
                f"column {col} reads as {ctype} in most files but as {sorted(set(kinds) - {ctype})} in others"
            )
        entry: dict = {"type": ctype}
        if frame[col].isna().any():
            entry["nullable"] = True
        if ctype == "string":
            values = frame[col].dropna().astype(str)
            if 0 < values.nunique() <= 20 and values.nunique() < max(2, len(values) // 5):
                entry["values"] = sorted(values.unique().tolist())  # open: unseen values are kept
        columns[str(col)] = entry
    stamps = [c for c, e in columns.items() if e["type"] == "timestamp"]
    timestamp = next((c for c in stamps if _TIME_HINT.search(c)), stamps[0] if stamps else None)
    if timestamp is None:
        notes.append("no timestamp column found: add one (type timestamp) placing each record in its day")
    else:
        columns[timestamp].pop("nullable", None)
    # columns unique in (nearly) every file: record ids; the first one named like an id is the record's key
    unique = [c for c in columns if uniques.get(c) and sum(uniques[c]) >= 0.9 * len(uniques[c])]
    source = InferredSource(
        name, files, "events", timestamp, columns, None, [c for c in unique if _is_id(c)][:1], notes, unique
    )
    source.frame = frame  # type: ignore[attr-defined]
    return source


def _decide(source: InferredSource, key: str, labels: str | None = None) -> None:
    """The source's kind and keys once the entity key is known (``labels``: the source the user named as labels)."""
    lowered = source.name.lower()
    other_unique = [c for c in source.unique_key if c != key]
    if source.name == labels or (
        labels is None and any(hint in lowered for hint in ("label", "target", "outcome"))
    ):
        source.kind, source.unique_key = "labels", []
    elif other_unique:
        source.kind, source.unique_key = "events", other_unique[:1]
    else:
        source.kind, source.unique_key = "snapshot", []
    source.key = key if key in source.columns else None
    frame = source.frame  # type: ignore[attr-defined]
    for col in [source.key, *source.unique_key]:
        if col is not None:
            source.columns[col].pop("nullable", None)
            source.columns[col].pop("values", None)
            if frame[col].isna().any():
                source.notes.append(f"{col} has nulls in the samples: those rows will be quarantined")


def _features(source: InferredSource) -> dict[str, dict]:
    features: dict[str, dict] = {}
    base = source.name
    if source.kind == "events":
        features[f"{base}_7d"] = {"agg": "count", "window": "7d"}
        features[f"{base}_30d"] = {"agg": "count", "window": "30d"}
        features[f"{base}_lifetime"] = {"agg": "count", "window": "lifetime"}
        features[f"days_since_last_{base}"] = {"agg": "days_since_last"}
        for col, entry in source.columns.items():
            if entry["type"] in ("int64", "float64") and col not in (source.key, *source.unique_key):
                features[f"{col}_sum_30d"] = {"agg": "sum", "column": col, "window": "30d"}
                features[f"{col}_mean_lifetime"] = {"agg": "mean", "column": col}
    else:
        for col, entry in source.columns.items():
            if col in (source.key, source.timestamp):
                continue
            if entry["type"] in ("date", "timestamp"):
                features[f"days_since_{col}"] = {"agg": "days_since", "column": col}
            else:
                features[f"{col}"] = {"agg": "latest", "column": col}
    return features


def entity_key(sources: list[InferredSource]) -> str | None:
    """The column the records are about: a string or integer column found in the most sources (the one joining
    them), then one that is not a record id (unique on every row of every file, such as an event id), not a small
    categorical set, named like an id (``*_id``), with the most distinct values."""
    candidates = {
        c
        for s in sources
        for c, e in s.columns.items()
        if e["type"] in ("string", "int64") and c != s.timestamp
    }
    if not candidates:
        return None

    def rank(c: str) -> tuple:
        having = [s for s in sources if c in s.columns]
        record_id = all(c in s.unique_columns for s in having)
        categorical = any("values" in s.columns[c] for s in having)
        return (
            len(having),
            not record_id,
            not categorical,
            _is_id(c),
            max(int(s.frame[c].nunique()) for s in having),  # type: ignore[attr-defined]
            c,
        )

    return max(sorted(candidates), key=rank)


def init_project(
    landing: Path,
    output: Path,
    name: str | None = None,
    force: bool = False,
    labels: str | None = None,
    target: str | None = None,
) -> InitResult:
    """Infer a starter spec from ``landing``'s source folders and write it to ``output``."""
    landing = Path(landing)
    if not landing.is_dir():
        raise FileNotFoundError(f"{landing} is not a folder of landing sub-folders (one per source)")
    if output.exists() and not force:
        raise ValueError(f"{output} exists; pass --force to overwrite it")
    folders = sorted(p for p in landing.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{landing} has no sub-folder: put each source's files in landing/<source>/")
    sources = [infer_source(re.sub(r"\W", "_", f.name), f) for f in folders]
    notes: list[str] = []
    key = entity_key(sources)
    if key is None:
        raise ValueError(
            "no entity key found: no string or integer column (other than a timestamp) in the sources; add the "
            "column the records are about (the key the features and labels join on) to the files"
        )
    if labels is not None and labels not in [s.name for s in sources]:
        raise ValueError(
            f"--labels {labels!r} is not a source folder of {landing}: {[s.name for s in sources]}"
        )
    for s in sources:
        _decide(s, key, labels)
    key_type = next(s.columns[key]["type"] for s in sources if key in s.columns)
    entity = re.sub(r"_id$", "", key) or "entity"
    days = sorted({day_of_file(p.name) for s in sources for p in s.files if day_of_file(p.name)})
    spec: dict = {
        "name": name or re.sub(r"[^A-Za-z0-9_-]", "-", landing.resolve().parent.name or "project"),
        "description": "Starter spec written by `mlops init`: review every section.",
        "partitions": {"start": days[0] if days else datetime.now(UTC).date().isoformat(), "end": "data"},
        "entities": {entity: {"join_key": key, "dtype": "int64" if key_type == "int64" else "string"}},
        "sources": {},
        "feature_views": {},
    }
    for s in sources:
        if key in s.columns and s.columns[key]["type"] != spec["entities"][entity]["dtype"]:
            s.columns[key]["type"] = spec["entities"][entity]["dtype"]
        entry = {
            "kind": s.kind,
            "landing": s.name,
            "timestamp": s.timestamp or "CHANGE_ME",
            "columns": s.columns,
        }
        if s.unique_key:
            entry["unique_key"] = s.unique_key
        spec["sources"][s.name] = entry
        if s.kind in ("events", "snapshot") and key in s.columns and s.timestamp:
            spec["feature_views"][f"{s.name}_features"] = {
                "entity": entity,
                "source": s.name,
                "features": _features(s),
            }
    labels = [s for s in sources if s.kind == "labels" and key in s.columns and s.timestamp]
    if labels:
        label = labels[0]
        numeric = [
            c for c, e in label.columns.items() if e["type"] in ("int64", "float64", "bool") and c != key
        ]
        if numeric:
            column = numeric[0]
            frame = label.frame  # type: ignore[attr-defined]
            values = set(pd.to_numeric(frame[column], errors="coerce").dropna().unique().tolist())
            task = "binary_classification" if values <= {0, 1} else "regression"
            spec["target"] = {"source": label.name, "column": column, "task": task}
            spec["model"] = {"name": f"{spec['name']}-model", "features": "all"}
            label.columns[column].pop("values", None)
    elif any(s.kind == "labels" for s in sources):
        notes.append(
            f"labels source(s) {[s.name for s in sources if s.kind == 'labels']} have no {key} column (the entity "
            "key) or no timestamp: add them, or set `target:` and `model:` by hand"
        )
    else:
        notes.append(
            "no labels source (a folder named *label*) found: add `target:` and `model:` to train a model"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    header = "# Starter spec written by `mlops init`. Schema: mlops_assets/spec/project.schema.json\n"
    output.write_text(header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return InitResult(output, sources, notes)
