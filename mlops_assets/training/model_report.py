"""The model report: challenger vs champion, quality gates and drift, from what the pipeline persisted.

A person reads it on a pull request or locally (``mlops report``). It is built from three sources, none
of which it changes:

- the newest evaluation saved under ``<data>/reports/evaluation_v<N>.json`` (challenger and champion
  scored on the same holdout: quality metrics, single-row latency, bias, coverage, golden inputs);
- the MLflow registry (aliases ``champion``, ``challenger``, ``previous-champion``; each version's
  lifecycle tag, model type and training-time holdout metrics) and the promotion history;
- the daily drift reports ``<data>/reports/drift_report_<day>.json`` written by monitoring.

Quality gates come from ``gate_lookup`` when it knows the verdicts recorded for that evaluation (the
blocking checks of the Dagster instance, see :mod:`mlops_assets.training.report_cli`); otherwise they are
recomputed from the saved evaluation with the default thresholds, and ``training_data_valid`` (which
only the instance records) is reported as unknown.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops_assets.training.tracking import RegistryUnavailable, TrackingConfig, sqlite_path

#: The first line of every rendered report; a PR-comment job finds its earlier comment by it.
REPORT_MARKER = "<!-- mlops-model-report -->"

EVALUATION_PATTERN = re.compile(r"^evaluation_v(\d+)\.json$")
DRIFT_PATTERN = re.compile(r"^drift_report_(\d{4}-\d{2}-\d{2})\.json$")

ALIASES = ("champion", "challenger", "previous-champion")


def compared(task: str) -> tuple[tuple[str, bool], ...]:
    """Rows of the side-by-side table for a task: (label, higher is better)."""
    from mlops_assets.training.metrics import metric_names
    from mlops_assets.training.task import HIGHER_IS_BETTER

    quality = tuple((m, m in HIGHER_IS_BETTER) for m in metric_names(task))
    return (
        *quality,
        ("p50_latency_ms", False),
        ("p99_latency_ms", False),
        ("robust_p99_latency_ms", False),
        ("bias_score", False),
    )


PASS, FAIL, SKIPPED, UNKNOWN = "pass", "FAIL", "skipped", "unknown"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the registry describes it."""

    version: int
    aliases: list[str]
    lifecycle: str | None
    model_type: str | None
    run_id: str | None
    created_at: str | None
    holdout_metrics: dict[str, float]  # the run's holdout_* metrics, logged at training time


@dataclass(frozen=True)
class RegistryState:
    """What the MLflow registry holds for one model."""

    tracking_uri: str
    model_name: str
    aliases: dict[str, int]  # alias -> version
    versions: dict[int, VersionInfo]
    n_versions: int
    history: list[dict[str, Any]]  # the last alias moves, oldest first
    note: str = ""  # why the registry could not be read, or that it is empty
    unavailable: str = ""  # set when the store is missing, unreadable or unreachable: why
    store_missing: bool = False  # the store does not exist at all (a fresh folder, or a lost store)

    def version(self, number: int | None) -> VersionInfo | None:
        return self.versions.get(number) if number is not None else None


@dataclass(frozen=True)
class Evaluation:
    """One saved evaluation report (``evaluation_v<N>.json``)."""

    path: Path
    evaluated_at: datetime  # the file's modification time
    challenger_version: int
    champion_version: int | None
    n_holdout: int
    data: dict[str, Any]

    @property
    def has_champion(self) -> bool:
        return "champion" in self.data.get("metrics", {})

    def value(self, model: str, name: str) -> float | None:
        """A compared quantity of ``model`` (challenger or champion); None when not recorded."""
        if name.endswith("_latency_ms"):
            value = self.data.get("latency_ms", {}).get(model, {}).get(name.removesuffix("_latency_ms"))
        elif name == "bias_score":
            value = bias_score(self.data.get("fairness", []), model)
        else:
            value = self.data.get("metrics", {}).get(model, {}).get(name)
        return _number(value)


@dataclass(frozen=True)
class ComparisonRow:
    metric: str
    champion: float | None
    challenger: float | None
    higher_is_better: bool

    @property
    def delta(self) -> float | None:
        """Challenger minus champion."""
        if self.champion is None or self.challenger is None:
            return None
        return self.challenger - self.champion

    @property
    def verdict(self) -> str:
        """``better``/``worse``/``same`` for the challenger ('' without both values)."""
        delta = self.delta
        if delta is None:
            return ""
        if abs(delta) < 5e-5:  # equal at the four decimals shown
            return "same"
        return "better" if (delta > 0) == self.higher_is_better else "worse"


@dataclass(frozen=True)
class GateRow:
    """One quality gate's verdict as reported."""

    name: str
    status: str  # pass, FAIL, skipped, unknown
    measured: float | None
    threshold: float | None
    detail: str


#: ``gate_lookup(evaluation_json_path)`` -> (source description, gate rows) recorded for exactly that
#: evaluation, or None when nothing recorded it.
GateLookup = Callable[[Path], "tuple[str, list[GateRow]] | None"]


@dataclass(frozen=True)
class DriftDay:
    """The headline of one daily drift report."""

    day: str
    path: Path
    champion_version: int | None
    drift_share: float | None
    drift_share_threshold: float | None
    dataset_drift: bool
    n_features: int
    drifted: list[dict[str, Any]]  # feature, test, statistic, p_value of each drifted feature
    prediction_drift: bool | None
    current_rows: int | None
    estimated: dict[str, float | None]
    realized: dict[str, float | None]
    realized_labels: int
    training: dict[str, float | None]


@dataclass
class ModelReport:
    """Everything ``mlops report`` shows, with markdown and JSON renderings."""

    generated_at: datetime
    data_root: Path
    model_name: str
    registry: RegistryState
    evaluation: Evaluation | None
    comparison: list[ComparisonRow]
    gates: list[GateRow]
    gates_source: str
    drift: list[DriftDay]  # newest last
    notes: list[str] = field(default_factory=list)

    @property
    def failed_gates(self) -> list[str]:
        return [g.name for g in self.gates if g.status == FAIL]

    @property
    def registry_unavailable(self) -> bool:
        """The registry cannot be read although something was evaluated or the store exists.

        A missing store with no saved evaluation is a data folder where nothing was trained yet.
        """
        reg = self.registry
        return bool(reg.unavailable) and (self.evaluation is not None or not reg.store_missing)

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``not_evaluated`` or ``registry_unavailable``.

        A saved evaluation is never reported as passed while the registry behind it is missing or
        unreadable: its challenger and champion cannot be confirmed, so a CI gate fails closed.
        """
        if self.registry_unavailable:
            return "registry_unavailable"
        if self.evaluation is None:
            return "not_evaluated"
        return "failed" if self.failed_gates else "passed"

    def headline(self) -> str:
        """One sentence: what was judged and the verdict."""
        if self.registry_unavailable:
            ev = self.evaluation
            saved = (
                f"the saved evaluation of challenger v{ev.challenger_version} cannot be checked against it"
                if ev is not None
                else "there is no challenger, champion or quality-gate result to report"
            )
            return (
                f"The MLflow registry is {'missing' if self.registry.store_missing else 'unavailable'}: "
                f"{self.registry.unavailable}; {saved}, so no quality-gate verdict is given."
            )
        if self.evaluation is None:
            champion = self.registry.aliases.get("champion")
            where = f"`{self.data_root}`"
            if champion is not None:
                return (
                    f"No saved evaluation in {where}; the registry's champion is v{champion}. "
                    "Nothing to compare until a challenger is evaluated."
                )
            return (
                f"No model has been trained and evaluated in {where} yet: there is no challenger, "
                "champion or quality-gate result to report."
            )
        ev = self.evaluation
        against = f"against champion v{ev.champion_version}" if ev.has_champion else "with no champion yet"
        subject = f"Challenger v{ev.challenger_version} ({against})"
        if self.failed_gates:
            return (
                f"{subject} FAILED {len(self.failed_gates)} blocking quality gate(s): "
                f"{', '.join(self.failed_gates)}."
            )
        unknown = [g.name for g in self.gates if g.status == UNKNOWN]
        tail = f" ({', '.join(unknown)}: not recorded)" if unknown else ""
        return f"{subject} passed every blocking quality gate{tail}."

    def to_dict(self) -> dict[str, Any]:
        ev = self.evaluation
        return _json_ready(
            {
                "status": self.status,
                "headline": self.headline(),
                "generated_at": self.generated_at.isoformat(),
                "data_root": str(self.data_root),
                "model_name": self.model_name,
                "registry": {
                    "tracking_uri": self.registry.tracking_uri,
                    "aliases": self.registry.aliases,
                    "n_versions": self.registry.n_versions,
                    "versions": {str(k): asdict(v) for k, v in self.registry.versions.items()},
                    "history": self.registry.history,
                    "note": self.registry.note,
                    "unavailable": self.registry.unavailable or None,
                },
                "evaluation": None
                if ev is None
                else {
                    "path": str(ev.path),
                    "evaluated_at": ev.evaluated_at.isoformat(),
                    "challenger_version": ev.challenger_version,
                    "champion_version": ev.champion_version,
                    "n_holdout": ev.n_holdout,
                    "summary": ev.data.get("summary", {}),
                },
                "comparison": [
                    {**asdict(r), "delta": r.delta, "verdict": r.verdict} for r in self.comparison
                ],
                "gates": [asdict(g) for g in self.gates],
                "gates_source": self.gates_source,
                "failed_gates": self.failed_gates,
                "drift": [{**asdict(d), "path": str(d.path)} for d in self.drift],
                "notes": self.notes,
            }
        )

    def to_markdown(self) -> str:
        return render_markdown(self)


# --------------------------------------------------------------------------- reading


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def bias_score(fairness: Sequence[Mapping[str, Any]], model: str) -> float | None:
    """Largest between-group difference of ``model`` over the sensitive attributes (as the bias gate)."""
    values = [_number(row.get("score")) for row in fairness if row.get("model") == model]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def latest_evaluation(reports_dir: str | Path) -> tuple[Evaluation | None, list[str]]:
    """The most recently written ``evaluation_v<N>.json`` (ties: highest N), and notes on unreadable files."""
    reports_dir = Path(reports_dir)
    notes: list[str] = []
    candidates = []
    if reports_dir.is_dir():
        for path in reports_dir.iterdir():
            match = EVALUATION_PATTERN.match(path.name)
            if match:
                candidates.append((path.stat().st_mtime, int(match.group(1)), path))
    for mtime, version, path in sorted(candidates, reverse=True):
        try:
            data = json.loads(path.read_text())
            summary = data["summary"]
            champion = summary.get("champion_version")
            return (
                Evaluation(
                    path=path,
                    evaluated_at=datetime.fromtimestamp(mtime, UTC),
                    challenger_version=int(summary.get("challenger_version") or version),
                    champion_version=int(champion) if champion is not None else None,
                    n_holdout=int(summary.get("n_holdout") or 0),
                    data=data,
                ),
                notes,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"skipped unreadable evaluation {path.name}: {exc}")
    return None, notes


def comparison_rows(evaluation: Evaluation) -> list[ComparisonRow]:
    """Champion and challenger side by side on the evaluation's holdout."""
    champion = evaluation.has_champion
    return [
        ComparisonRow(
            name,
            evaluation.value("champion", name) if champion else None,
            evaluation.value("challenger", name),
            higher,
        )
        for name, higher in compared(evaluation.data.get("summary", {}).get("task", "binary_classification"))
    ]


def recomputed_gates(evaluation: Evaluation, gates_spec=None) -> list[GateRow]:
    """The gates judged again from the saved evaluation (the spec's thresholds, or the defaults).

    ``training_data_valid`` depends on validation results that only the Dagster instance records: it is
    reported as unknown here.
    """
    import pandas as pd

    from mlops_assets.training.evaluate import EvaluationReport, GoldenResult
    from mlops_assets.training.gates import NOT_APPLICABLE, evaluate_gates

    data, summary = evaluation.data, evaluation.data["summary"]
    nan = float("nan")
    report = EvaluationReport(
        task=summary.get("task", "binary_classification"),
        metric=summary.get("metric", "roc_auc"),
        model_name="",
        challenger_version=evaluation.challenger_version,
        champion_version=evaluation.champion_version,
        n_holdout=evaluation.n_holdout,
        threshold=nan,
        metrics={k: {m: nan if v is None else v for m, v in d.items()} for k, d in data["metrics"].items()},
        train_metrics={m: nan if v is None else v for m, v in data.get("train_metrics", {}).items()},
        latency_ms=data["latency_ms"],
        fairness=pd.DataFrame(
            data.get("fairness", []), columns=["model", "attribute", "groups", "score", "detail"]
        ),
        fairness_note=data.get("fairness_note", ""),
        row_coverage=float(summary["row_coverage"]),
        segment_coverage=float(summary["segment_coverage"]),
        uncovered_segments=list(data.get("uncovered_segments", [])),
        segments_checked=int(data.get("segments_checked", 0)),
        golden=[
            GoldenResult(g["name"], g["score"], g["passed"], g.get("expectation", ""))
            for g in data.get("golden", [])
        ],
    )
    rows = []
    for gate in evaluate_gates(report, gates_spec):
        if gate.name == "training_data_valid":
            rows.append(
                GateRow(
                    gate.name,
                    UNKNOWN,
                    None,
                    None,
                    "not recorded in the saved evaluation: the Dagster instance that ran it holds this gate",
                )
            )
            continue
        status = SKIPPED if gate.status == NOT_APPLICABLE else (PASS if gate.passed else FAIL)
        rows.append(GateRow(gate.name, status, _number(gate.measured), _number(gate.threshold), gate.message))
    return rows


def read_registry(
    tracking: TrackingConfig, versions: Sequence[int] = (), history_tail: int = 5
) -> RegistryState:
    """Aliases and the given versions of ``tracking.model_name``; never creates a store that is not there."""
    uri, name = tracking.tracking_uri, tracking.model_name

    def empty(note: str) -> RegistryState:
        return RegistryState(uri, name, {}, {}, 0, [], note)

    from mlflow.exceptions import MlflowException

    from mlops_assets.training.tracking import registry_client

    try:
        client = registry_client(tracking)
    except RegistryUnavailable as exc:
        return RegistryState(
            uri, name, {}, {}, 0, [], exc.reason, unavailable=exc.reason, store_missing=exc.missing
        )
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return empty(f"no registered model {name!r}")
        raise
    aliases = {alias: int(v) for alias, v in (model.aliases or {}).items()}
    n_versions = len(client.search_model_versions(f"name='{name}'"))
    wanted = sorted({*aliases.values(), *(int(v) for v in versions if v is not None)})
    infos = {}
    for number in wanted:
        try:
            mv = client.get_model_version(name, str(number))
        except MlflowException:
            continue
        metrics: dict[str, float] = {}
        model_type = mv.tags.get("model_type")
        if mv.run_id:
            run = client.get_run(mv.run_id)
            metrics = {
                k.removeprefix("holdout_"): float(v)
                for k, v in run.data.metrics.items()
                if k.startswith("holdout_")
            }
            model_type = model_type or run.data.params.get("model_type")
        created = (
            datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
            if mv.creation_timestamp
            else None
        )
        infos[number] = VersionInfo(
            version=number,
            aliases=sorted(a for a, v in aliases.items() if v == number),
            lifecycle=mv.tags.get("lifecycle"),
            model_type=model_type,
            run_id=mv.run_id,
            created_at=created,
            holdout_metrics=metrics,
        )
    return RegistryState(
        uri, name, aliases, infos, n_versions, promotion_moves(tracking, name, history_tail), ""
    )


def promotion_moves(tracking: TrackingConfig, model_name: str, tail: int) -> list[dict[str, Any]]:
    """The last ``tail`` alias moves of the model from the promotion history next to a local store."""
    db = sqlite_path(tracking.tracking_uri)
    if db is None:
        return []
    path = db.with_name("promotion_history.sqlite")
    if not path.exists():
        return []
    import pandas as pd

    from mlops_assets.training.registry import read_promotion_history

    history = read_promotion_history(path)
    history = history[history["model_name"] == model_name].tail(tail)
    return [
        {
            "at": row.at.isoformat(timespec="seconds"),
            "action": row.action,
            "version": int(row.version),
            "previous_version": None if pd.isna(row.previous_version) else int(row.previous_version),
            "reason": row.reason,
        }
        for row in history.itertuples()
    ]


def drift_days(reports_dir: str | Path, last: int = 7) -> tuple[list[DriftDay], list[str]]:
    """The ``last`` newest daily drift reports (oldest first), and notes on unreadable files."""
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir() or last <= 0:
        return [], []
    found = sorted(
        (m.group(1), p) for p in reports_dir.iterdir() if (m := DRIFT_PATTERN.match(p.name)) is not None
    )
    days, notes = [], []
    for day, path in found[-last:]:
        try:
            data = json.loads(path.read_text())
            summary = data.get("summary", {})
            champion = summary.get("champion_version")
            days.append(
                DriftDay(
                    day=day,
                    path=path,
                    champion_version=int(champion) if champion is not None else None,
                    drift_share=_number(data.get("drift_share")),
                    drift_share_threshold=_number(data.get("drift_share_threshold")),
                    dataset_drift=bool(data.get("dataset_drift")),
                    n_features=int(data.get("n_features") or len(data.get("features", []))),
                    drifted=[
                        {k: f.get(k) for k in ("feature", "test", "statistic", "p_value")}
                        for f in data.get("features", [])
                        if f.get("drifted")
                    ],
                    prediction_drift=summary.get("prediction_drift"),
                    current_rows=summary.get("current_rows", data.get("current_rows")),
                    estimated={m: _number(summary.get(f"estimated_{m}")) for m in ("accuracy", "roc_auc")},
                    realized={m: _number(summary.get(f"realized_{m}")) for m in ("accuracy", "roc_auc")},
                    realized_labels=int(summary.get("realized_labels") or 0),
                    training={m: _number(summary.get(f"training_{m}")) for m in ("accuracy", "roc_auc")},
                )
            )
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            notes.append(f"skipped unreadable drift report {path.name}: {exc}")
    return days, notes


def build_model_report(
    project,
    *,
    tracking: TrackingConfig | None = None,
    gate_lookup: GateLookup | None = None,
    drift_last: int = 7,
    now: datetime | None = None,
) -> ModelReport:
    """Read the evaluation, the registry and the drift reports of a project's data folder in any state."""
    paths = project.paths
    tracking = tracking or TrackingConfig.for_project(project)
    evaluation, notes = latest_evaluation(paths.reports)
    evaluated = [evaluation.challenger_version, evaluation.champion_version] if evaluation else []
    try:
        registry = read_registry(tracking, [v for v in evaluated if v is not None])
    except Exception as exc:  # an unreachable tracking server must not hide the saved reports
        note = f"registry not readable: {exc}"
        registry = RegistryState(
            tracking.tracking_uri, tracking.model_name, {}, {}, 0, [], note, unavailable=note
        )
    comparison, gates, source = [], [], ""
    if evaluation is not None:
        comparison = comparison_rows(evaluation)
        recorded = None
        if gate_lookup is not None:
            try:
                recorded = gate_lookup(evaluation.path)
            except Exception as exc:  # e.g. an instance on a database that is not reachable from here
                notes.append(f"gate verdicts not readable from the Dagster instance: {exc}")
        if recorded is not None:
            source, gates = recorded
        else:
            source = (
                f"recomputed from {evaluation.path.name} with the spec's thresholds "
                "(no Dagster run recorded this evaluation)"
            )
            gates = recomputed_gates(evaluation, project.spec.gates)
        alias_challenger = registry.aliases.get("challenger")
        if alias_challenger is not None and alias_challenger != evaluation.challenger_version:
            notes.append(
                f"the registry's challenger is v{alias_challenger}, which has no saved evaluation yet; "
                f"this report shows the newest evaluation (v{evaluation.challenger_version})"
            )
        champion = registry.aliases.get("champion")
        if champion is not None and champion != evaluation.champion_version:
            if champion == evaluation.challenger_version:
                notes.append(f"v{champion} has been promoted since this evaluation: it is the champion now")
            else:
                notes.append(
                    f"the champion is v{champion} now; this evaluation compared against "
                    f"{f'v{evaluation.champion_version}' if evaluation.champion_version else 'no champion'}"
                )
    drift, drift_notes = drift_days(paths.reports, drift_last)
    return ModelReport(
        generated_at=now or datetime.now(UTC),
        data_root=paths.root,
        model_name=tracking.model_name,
        registry=registry,
        evaluation=evaluation,
        comparison=comparison,
        gates=gates,
        gates_source=source,
        drift=drift,
        notes=notes + drift_notes,
    )


# --------------------------------------------------------------------------- rendering


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _version_label(info: VersionInfo | None, version: int | None) -> str:
    if version is None:
        return "none"
    if info is None:
        return f"v{version} (not in the registry)"
    parts = [p for p in (info.model_type, info.lifecycle) if p]
    return f"v{version}" + (f" ({', '.join(parts)})" if parts else "")


def render_markdown(report: ModelReport) -> str:
    """The report as GitHub-flavoured markdown."""
    reg, ev = report.registry, report.evaluation
    lines = [
        REPORT_MARKER,
        f"# Model report: {report.model_name}",
        "",
        f"**{report.headline()}**",
        "",
        f"Data `{report.data_root}` · MLflow `{reg.tracking_uri}` · generated "
        f"{report.generated_at:%Y-%m-%d %H:%M:%S} UTC",
        "",
        "## Challenger vs champion",
        "",
    ]
    if ev is None:
        lines += ["No evaluation report under `reports/` (`evaluation_v<N>.json`).", ""]
    else:
        challenger = reg.version(ev.challenger_version)
        champion = reg.version(ev.champion_version)
        if ev.has_champion:
            lines += [
                f"Challenger {_version_label(challenger, ev.challenger_version)} against champion "
                f"{_version_label(champion, ev.champion_version)} on the same {ev.n_holdout} holdout rows "
                f"(`{ev.path.name}`, {ev.evaluated_at:%Y-%m-%d %H:%M:%S} UTC).",
                "",
                f"| metric | champion v{ev.champion_version} | challenger v{ev.challenger_version} | delta "
                "| challenger is |",
                "|---|---:|---:|---:|---|",
            ]
            for row in report.comparison:
                lines.append(
                    f"| {_metric_label(row)} | {fmt(row.champion)} | {fmt(row.challenger)} | "
                    f"{_signed(row.delta)} | {row.verdict} |"
                )
        else:
            lines += [
                f"Challenger {_version_label(challenger, ev.challenger_version)} on {ev.n_holdout} holdout rows "
                f"(`{ev.path.name}`, {ev.evaluated_at:%Y-%m-%d %H:%M:%S} UTC). There was no champion to "
                "compare with: the challenger was judged on absolute thresholds only.",
                "",
                f"| metric | challenger v{ev.challenger_version} |",
                "|---|---:|",
            ]
            lines += [f"| {_metric_label(row)} | {fmt(row.challenger)} |" for row in report.comparison]
        summary, golden = ev.data.get("summary", {}), ev.data.get("golden", [])
        sanity = (
            "not applicable (no golden cases)"
            if not golden
            else ("holds" if all(g.get("passed") for g in golden) else "FAILS")
        )
        lines += [
            "",
            f"Coverage: rows {fmt(_number(summary.get('row_coverage')))}, segments "
            f"{fmt(_number(summary.get('segment_coverage')))}; golden-input sanity {sanity}.",
            "",
        ]
    lines += ["## Quality gates", ""]
    if not report.gates:
        lines += ["No quality gate has been evaluated.", ""]
    else:
        lines += [
            f"Source: {report.gates_source}.",
            "",
            "| gate | result | measured | threshold | detail |",
            "|---|---|---:|---:|---|",
        ]
        for g in report.gates:
            lines.append(
                f"| {g.name} | {g.status} | {fmt(g.measured)} | {fmt(g.threshold)} | {_cell(g.detail[:400])} |"
            )
        lines.append("")
    lines += ["## Registry", ""]
    if reg.note:
        lines += [f"{reg.note}.", ""]
    if reg.aliases:
        lines += [
            f"{reg.n_versions} registered version(s).",
            "",
            "| alias | version | lifecycle | model type | holdout accuracy | holdout ROC AUC | run | registered |",
            "|---|---:|---|---|---:|---:|---|---|",
        ]
        for alias in ALIASES:
            if alias not in reg.aliases:
                continue
            info = reg.version(reg.aliases[alias])
            if info is None:
                lines.append(f"| {alias} | {reg.aliases[alias]} | | | | | | |")
                continue
            lines.append(
                f"| {alias} | {info.version} | {info.lifecycle or ''} | {info.model_type or ''} | "
                f"{fmt(info.holdout_metrics.get('accuracy'))} | {fmt(info.holdout_metrics.get('roc_auc'))} | "
                f"`{(info.run_id or '')[:8]}` | {info.created_at or ''} |"
            )
        lines += ["", "Holdout metrics here are each version's own, logged when it was trained.", ""]
    if reg.history:
        lines += [
            "Last alias moves:",
            "",
            "| at | action | version | previous | reason |",
            "|---|---|---:|---:|---|",
        ]
        for move in reg.history:
            previous = move["previous_version"] if move["previous_version"] is not None else "none"
            lines.append(
                f"| {move['at']} | {move['action']} | {move['version']} | {previous} | "
                f"{_cell(move['reason'][:200])} |"
            )
        lines.append("")
    lines += ["## Drift", ""]
    if not report.drift:
        lines += ["No daily drift report under `reports/` (`drift_report_<day>.json`).", ""]
    else:
        latest = report.drift[-1]
        verdict = "DATASET DRIFT" if latest.dataset_drift else "no dataset drift"
        lines += [
            f"Latest day {latest.day} (champion v{latest.champion_version}, {latest.current_rows} rows): "
            f"{verdict}, drift share {fmt(latest.drift_share, 2)} "
            f"({len(latest.drifted)} of {latest.n_features} features; threshold "
            f"{fmt(latest.drift_share_threshold, 2)}); prediction drift "
            f"{'yes' if latest.prediction_drift else 'no'}.",
            "",
        ]
        if latest.drifted:
            lines += ["| drifted feature | test | statistic | p-value |", "|---|---|---:|---:|"]
            for f in latest.drifted:
                lines.append(
                    f"| {f['feature']} | {f['test']} | {fmt(_number(f['statistic']))} | "
                    f"{_pvalue(_number(f['p_value']))} |"
                )
            lines.append("")
        lines += [
            "| metric | training | estimated (CBPE) | realized |",
            "|---|---:|---:|---:|",
        ]
        for metric in ("accuracy", "roc_auc"):
            lines.append(
                f"| {metric} | {fmt(latest.training[metric])} | {fmt(latest.estimated[metric])} | "
                f"{fmt(latest.realized[metric])} ({latest.realized_labels} labels) |"
            )
        lines += [
            "",
            f"Last {len(report.drift)} day(s):",
            "",
            "| day | champion | drift share | drifted features | prediction drift | est. accuracy | realized accuracy |",
            "|---|---:|---:|---|---|---:|---:|",
        ]
        for d in report.drift:
            names = [f["feature"] for f in d.drifted]
            shown = ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")
            lines.append(
                f"| {d.day} | v{d.champion_version} | {fmt(d.drift_share, 2)} | {shown or 'none'} | "
                f"{'yes' if d.prediction_drift else 'no'} | {fmt(d.estimated['accuracy'])} | "
                f"{fmt(d.realized['accuracy'])} |"
            )
        lines.append("")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(lines)


def _metric_label(row: ComparisonRow) -> str:
    return f"{row.metric} ({'higher' if row.higher_is_better else 'lower'} is better)"


def _pvalue(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"
