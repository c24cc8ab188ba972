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
from typing import TextIO

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
) -> int:
    """Drift of two files printed as a table or JSON; 0 on success (1 on drift with fail_on_drift), 2 on bad input."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ref = read_table(reference, "reference")
        cur = read_table(current, "current")
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
        out.write(render_markdown(report))
    if report_dir is not None:
        saved = save_drift_report(report, ref, cur, report_dir)
        err.write(f"report written to {saved.markdown_path}\n")
    return 1 if (fail_on_drift and report.dataset_drift) else 0


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
    )


if __name__ == "__main__":
    raise SystemExit(drift_command())
