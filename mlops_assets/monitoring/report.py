"""Rendering of drift reports (markdown table, per-feature PNG histograms) and the `mlops drift` command core."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pandas as pd

from mlops_assets.monitoring.drift import (
    DriftInputError,
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    compute_drift,
    read_table,
)
from mlops_assets.storage import write_file_atomic

if TYPE_CHECKING:
    from mlops_assets.monitoring.calibrate import Calibration, DayComparison

_MAX_BARS = 20  # categories drawn per categorical histogram (the most frequent ones)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _other_stats(row: FeatureDrift) -> str:
    if row.kind == "numeric":
        parts = [("KS", row.ks_statistic), ("W", row.wasserstein), ("PSI", row.psi)]
    else:
        parts = [("chi2", row.chi2_statistic), ("JS", row.jensenshannon), ("PSI", row.psi)]
    return ", ".join(f"{name} {_fmt(v, 3)}" for name, v in parts if v is not None)


def render_markdown(
    report: DriftReport, images: Mapping[str, str | Path] | None = None, embed_images: bool = False
) -> str:
    """The report as markdown: a verdict line, one table row per feature, then the histograms.

    ``images`` maps a feature to its PNG; it is linked by file name (the markdown sits next to it) or,
    with ``embed_images``, inlined as a data URI (for viewers that cannot open local files).
    """
    verdict = "**Dataset drift detected**" if report.dataset_drift else "No dataset drift"
    lines = [
        "# Drift report",
        "",
        f"{verdict}: {len(report.drifted_features)} of {len(report.features)} features drifted "
        f"(share {report.drift_share:.2f}, threshold {report.thresholds.drift_share:.2f}); "
        f"reference {report.reference_rows} rows, current {report.current_rows} rows.",
        "",
        "| feature | kind | test | statistic | p-value | threshold | drifted | null % ref / cur | other statistics |",
        "|---|---|---|---:|---:|---:|:---:|---:|---|",
    ]
    for row in report.features:
        flag = "**yes**" if row.drifted else "no"
        nulls = f"{100 * row.reference_null_share:.1f} / {100 * row.current_null_share:.1f}"
        other = _other_stats(row) + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {row.feature} | {row.kind} | {row.test} | {_fmt(row.statistic)} | {_fmt(row.p_value)} | "
            f"{row.threshold:g} | {flag} | {nulls} | {other} |"
        )
    if report.skipped:
        lines += ["", "Not tested: " + "; ".join(f"`{c}` ({why})" for c, why in report.skipped.items()) + "."]
    if images:
        lines += ["", "## Distributions (reference vs current)", ""]
        for feature, path in images.items():
            if embed_images:
                encoded = base64.b64encode(Path(path).read_bytes()).decode()
                target = f"data:image/png;base64,{encoded}"
            else:
                target = Path(path).name
            lines.append(f"![{feature}]({target})")
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "feature"


def plot_feature(reference: pd.Series, current: pd.Series, row: FeatureDrift) -> bytes:
    """PNG bytes of one feature's reference vs current distribution (shares per bin or category)."""
    from matplotlib.figure import Figure  # imported here: only rendering needs matplotlib

    fig = Figure(figsize=(5.0, 3.2), dpi=90)
    ax = fig.add_subplot()
    if row.kind == "numeric":
        ref = pd.to_numeric(reference).to_numpy(dtype="float64", na_value=np.nan)
        cur = pd.to_numeric(current).to_numpy(dtype="float64", na_value=np.nan)
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        pooled = np.concatenate([ref, cur])
        if pooled.size:
            low, high = np.quantile(pooled, [0.005, 0.995])
            if high <= low:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, 31)
            for values, label, color in ((ref, "reference", "tab:blue"), (cur, "current", "tab:orange")):
                if values.size:
                    counts, _ = np.histogram(np.clip(values, low, high), bins=edges)
                    ax.stairs(counts / values.size, edges, label=label, color=color, fill=True, alpha=0.45)
    else:
        ref_share = reference.value_counts(normalize=True, dropna=True)
        cur_share = current.value_counts(normalize=True, dropna=True)
        table = pd.concat([ref_share.rename("reference"), cur_share.rename("current")], axis=1).fillna(0.0)
        table = table.loc[table.max(axis=1).sort_values(ascending=False).index[:_MAX_BARS]]
        x = np.arange(len(table))
        ax.bar(x - 0.2, table["reference"], width=0.4, label="reference", color="tab:blue", alpha=0.75)
        ax.bar(x + 0.2, table["current"], width=0.4, label="current", color="tab:orange", alpha=0.75)
        ax.set_xticks(x, [str(v)[:12] for v in table.index], rotation=45 if len(table) > 6 else 0, fontsize=7)
    verdict = "DRIFT" if row.drifted else "no drift"
    ax.set_title(f"{row.feature}: {row.test} {_fmt(row.statistic, 3)} ({verdict})", fontsize=9)
    ax.set_ylabel("share of rows", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no non-null values", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass(frozen=True)
class SavedDriftReport:
    """Where a rendered drift report was written, and its markdown."""

    markdown_path: Path
    json_path: Path
    image_paths: dict[str, Path]
    markdown: str


def save_drift_report(
    report: DriftReport,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    reports_dir: str | Path,
    name: str = "drift_report",
    histograms: bool = True,
) -> SavedDriftReport:
    """Write ``<name>.md``, ``<name>.json`` and ``<name>_<feature>.png`` under ``reports_dir``.

    ``name`` is prefixed with ``drift_`` when it does not already contain ``drift``. Each file is
    written through a temporary name and a rename.
    """
    name = _slug(name)
    if "drift" not in name.lower():
        name = f"drift_{name}"
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    if histograms:
        for row in report.features:
            if row.feature in reference.columns and row.feature in current.columns:
                png = plot_feature(reference[row.feature], current[row.feature], row)
                images[row.feature] = write_file_atomic(png, out / f"{name}_{_slug(row.feature)}.png")
    markdown = render_markdown(report, images)
    md_path = write_file_atomic(markdown.encode(), out / f"{name}.md")
    json_path = write_file_atomic(json.dumps(report.to_dict(), indent=2).encode(), out / f"{name}.json")
    return SavedDriftReport(markdown_path=md_path, json_path=json_path, image_paths=images, markdown=markdown)


# --------------------------------------------------------------------------- command core


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def build_parser(prog: str = "mlops drift") -> argparse.ArgumentParser:
    """Arguments of ``mlops drift``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare two Parquet/CSV files column by column: per-feature drift and dataset drift.",
    )
    parser.add_argument("reference", help="reference data (.parquet file or folder, or .csv)")
    parser.add_argument("current", help="current data (.parquet file or folder, or .csv)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--columns", help="comma-separated columns to test (default: all shared columns)")
    parser.add_argument("--categorical", help="comma-separated numeric columns to treat as categorical")
    parser.add_argument(
        "--method",
        choices=["ks", "chi2", "wasserstein", "jensenshannon", "psi"],
        help="force one method for every column (must apply to each column's kind)",
    )
    parser.add_argument(
        "--numeric-method", choices=["ks", "wasserstein", "psi"], help="method for numeric columns"
    )
    parser.add_argument(
        "--categorical-method",
        choices=["chi2", "jensenshannon", "psi"],
        help="method for categorical columns",
    )
    parser.add_argument(
        "--drift-share",
        type=float,
        default=DriftThresholds.drift_share,
        help="share of drifted features at which the dataset has drifted (default 0.5)",
    )
    parser.add_argument(
        "--report-dir", help="also write the markdown, JSON and PNG histograms to this folder"
    )
    parser.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 1 when the dataset drifted"
    )
    parser.add_argument(
        "--reference-period",
        metavar="COLUMN",
        help="the reference is a period: split it into one chunk per day of this date/timestamp column and judge "
        "the current data against bands calibrated on the chunks' natural variation (each chunk against the "
        "rest, mean +- 3 sd, NannyML-style) instead of fixed thresholds; effect sizes decide (wasserstein or "
        "ks or psi for numeric, jensenshannon or psi for categorical columns), plus a multivariate PCA "
        "reconstruction error; needs at least 10 days. The bands fit a current file of about one day's rows",
    )
    return parser


def run_drift(
    reference: str | Path,
    current: str | Path,
    as_json: bool = False,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    method: str | None = None,
    numeric_method: str | None = None,
    categorical_method: str | None = None,
    drift_share: float = DriftThresholds.drift_share,
    report_dir: str | Path | None = None,
    fail_on_drift: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    reference_period: str | None = None,
) -> int:
    """Drift of two files printed as a table or JSON; 0 on success (1 on drift with fail_on_drift), 2 on bad input.

    With ``reference_period`` (a date/timestamp column of the reference), the thresholds are calibrated on the
    reference's days (:func:`calibrated_drift`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = (
            _calibration_settings(method, numeric_method, categorical_method) if reference_period else None
        )
        ref = read_table(reference, "reference")
        cur = read_table(current, "current")
        if reference_period is not None:
            report = calibrated_drift(ref, cur, reference_period, columns, categorical, settings, reference)
        else:
            report = compute_drift(
                ref,
                cur,
                columns=columns,
                categorical=categorical,
                thresholds=DriftThresholds(drift_share=drift_share),
                method=method,
                numeric_method=numeric_method,
                categorical_method=categorical_method,
            )
    except (DriftInputError, ValueError) as exc:
        where = (
            ""
            if str(reference) in str(exc) or str(current) in str(exc)
            else f" [reference: {reference}, current: {current}]"
        )
        err.write(f"error: {exc}{where}\n")
        return 2
    if as_json:
        out.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        out.write(report.markdown() if reference_period is not None else render_markdown(report))
    if report_dir is not None:
        if reference_period is not None:
            markdown_path = report.save(report_dir)
        else:
            markdown_path = save_drift_report(report, ref, cur, report_dir).markdown_path
        err.write(f"report written to {markdown_path}\n")
    return 1 if (fail_on_drift and report.dataset_drift) else 0


# --------------------------------------------------------------------------- calibrated on a reference period


def _calibration_settings(method: str | None, numeric_method: str | None, categorical_method: str | None):
    """The calibration settings of ``--method`` / ``--numeric-method`` / ``--categorical-method``; an error for a
    method the calibrated report does not use (chi2: its p-value is not an effect size)."""
    from mlops_assets.monitoring.calibrate import (
        CATEGORICAL_STATISTICS,
        NUMERIC_STATISTICS,
        CalibrationSettings,
    )

    for option, value, allowed in (
        ("--method", method, (*NUMERIC_STATISTICS, *CATEGORICAL_STATISTICS)),
        ("--numeric-method", numeric_method, NUMERIC_STATISTICS),
        ("--categorical-method", categorical_method, CATEGORICAL_STATISTICS),
    ):
        if value is not None and value not in allowed:
            raise DriftInputError(
                f"{option} {value} cannot be calibrated with --reference-period: "
                f"numeric columns take one of {NUMERIC_STATISTICS}, categorical ones one of {CATEGORICAL_STATISTICS}"
            )
    chosen = {
        "numeric_method": numeric_method or (method if method in NUMERIC_STATISTICS else None),
        "categorical_method": categorical_method or (method if method in CATEGORICAL_STATISTICS else None),
    }
    return CalibrationSettings(**{k: v for k, v in chosen.items() if v is not None})


def reference_chunks(frame: pd.DataFrame, column: str, source: str | Path) -> tuple[list[str], np.ndarray]:
    """The days of ``column`` (oldest first) and each row's chunk index, with an error naming the file and column."""
    if column not in frame.columns:
        raise DriftInputError(
            f"{source}: --reference-period column {column!r} is not in the reference data "
            f"(columns: {list(frame.columns)[:20]})"
        )
    try:
        times = pd.to_datetime(frame[column], utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise DriftInputError(
            f"{source}: --reference-period column {column!r} is not a date or timestamp ({exc})"
        ) from exc
    missing = int(times.isna().sum())
    if missing:
        raise DriftInputError(
            f"{source}: --reference-period column {column!r} has {missing} empty value(s); every reference "
            "row needs its day"
        )
    labels = times.dt.strftime("%Y-%m-%d")
    days = sorted(labels.unique())
    return days, labels.map({d: i for i, d in enumerate(days)}).to_numpy(dtype="int64")


@dataclass
class CalibratedDrift:
    """``mlops drift --reference-period``: the current data against bands calibrated on the reference's days."""

    comparison: DayComparison
    calibration: Calibration
    column: str
    skipped: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        c, cal = self.comparison, self.calibration
        lower, upper = c.multivariate_edges if c.multivariate_edges else (None, None)
        return {
            "mode": "calibrated",
            "reference_period": {
                "column": self.column,
                "first_day": cal.days[0],
                "last_day": cal.days[-1],
                "chunks": len(cal.days),
                "rows": cal.reference_rows,
            },
            "band_rule": cal.settings.rule(),
            "dataset_drift": bool(c.dataset_drift),
            "drift_share": float(c.drift_share),
            "drift_share_upper": float(c.drift_share_upper),
            "drift_share_alarm": bool(c.drift_alarm),
            "multivariate_error": c.multivariate_error,
            "multivariate_band": [lower, upper],
            "multivariate_alarm": bool(c.multivariate_alarm),
            "n_features": len(c.tested),
            "n_drifted": len(c.drifted_features),
            "current_rows": c.current_rows,
            "features": [row.to_dict() for row in c.features],  # worst first; excluded ones last
            "skipped": dict(self.skipped),
        }

    @property
    def dataset_drift(self) -> bool:
        return bool(self.comparison.dataset_drift)

    def save(self, folder: str | Path) -> Path:
        """``drift_report.md`` and ``drift_report.json`` in ``folder``; the markdown's path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_file_atomic(
            (json.dumps(self.to_dict(), indent=2) + "\n").encode(), folder / "drift_report.json"
        )
        return write_file_atomic(self.markdown().encode(), folder / "drift_report.md")

    def markdown(self) -> str:
        from mlops_assets.monitoring.day_report import bands_text, feature_table_lines, verdict_line

        c, cal = self.comparison, self.calibration
        lines = [
            "# Drift report (calibrated on the reference period)",
            "",
            verdict_line(c),
            "",
            f"Reference: {cal.days[0]}..{cal.days[-1]} by `{self.column}` ({len(cal.days)} daily chunks, "
            f"{cal.reference_rows} rows); current {c.current_rows} rows. {bands_text(cal.settings)}",
            "",
            *feature_table_lines(c),
        ]
        if self.skipped:
            lines += ["", "Not tested:"] + [f"- `{k}`: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines) + "\n"


def calibrated_drift(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    column: str,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    settings=None,
    source: str | Path = "reference",
) -> CalibratedDrift:
    """``cur`` against bands calibrated on the daily chunks of ``ref`` (split by its ``column``)."""
    from mlops_assets.monitoring.calibrate import CalibrationSettings, ReferenceData, calibrate, compare_day
    from mlops_assets.monitoring.drift import feature_columns

    days, chunks = reference_chunks(ref, column, source)
    kinds, skipped = feature_columns(
        ref.drop(columns=[column]), cur.drop(columns=[column], errors="ignore"), columns, categorical
    )
    skipped = {column: "the reference period's day column", **skipped}
    if not kinds:
        raise DriftInputError(f"{source}: no column to test besides the reference period's {column!r}")
    frame = ref[list(kinds)].reset_index(drop=True)
    reference = ReferenceData(
        days=days,
        frame=frame,
        chunks=chunks,
        numeric=[c for c, k in kinds.items() if k == "numeric"],
        categorical=[c for c, k in kinds.items() if k == "categorical"],
    )
    settings = settings or CalibrationSettings()
    if len(days) < settings.min_chunks:
        raise DriftInputError(
            f"{source}: the reference period holds {len(days)} day(s) of {column!r} "
            f"({days[0]}..{days[-1]}); calibrating needs at least {settings.min_chunks}"
        )
    calibration = calibrate(reference, settings)
    return CalibratedDrift(compare_day(calibration, cur[list(kinds)]), calibration, column, skipped)


def drift_command(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """``mlops drift REFERENCE CURRENT [--json] ...`` from command-line arguments; returns the exit status."""
    try:
        args = build_parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse exits on --help and on bad arguments
        return int(exc.code or 0)
    return run_drift(
        args.reference,
        args.current,
        as_json=args.json,
        columns=_split(args.columns),
        categorical=_split(args.categorical),
        method=args.method,
        numeric_method=args.numeric_method,
        categorical_method=args.categorical_method,
        drift_share=args.drift_share,
        report_dir=args.report_dir,
        fail_on_drift=args.fail_on_drift,
        out=out,
        err=err,
        reference_period=args.reference_period,
    )


if __name__ == "__main__":
    raise SystemExit(drift_command())
