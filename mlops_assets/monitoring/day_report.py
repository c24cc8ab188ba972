"""Rendering of one calibrated drift report day (no Dagster): markdown worst features first, PNG plots of the
flagged / worst features only (reference drawn from the calibration's stored counts), the trend of drift share
and estimated performance over the saved days with their bands, and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlops_assets.monitoring.calibrate import (
    EXCLUDED,
    SHAPE,
    CalibratedFeature,
    CalibrationSettings,
    DayComparison,
    FeatureBaseline,
    standardize,
)

if TYPE_CHECKING:
    from mlops_assets.monitoring.daily import DailyDrift

HISTOGRAM_MODES = ("drifted", "all", "none")
TREND_FILE = "drift_trend.png"
_MAX_BARS = 20


def number_text(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    value = float(value)
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "feature"


def plotted_features(result: DailyDrift, histograms: str = "drifted", max_plots: int | None = 6) -> list[str]:
    """The features drawn: every flagged one, or the worst when none is (``drifted``), all, or none."""
    if histograms not in HISTOGRAM_MODES:
        raise ValueError(f"histograms must be one of {HISTOGRAM_MODES}, got {histograms!r}")
    rows = result.comparison.features
    if histograms == "none":
        return []
    if histograms == "all":
        names = [r.feature for r in rows]
    else:
        # the flagged features; on a day without any, the worst one (a plot costs ~0.1 s)
        names = [r.feature for r in rows if r.drifted] or [r.feature for r in rows if r.mode != EXCLUDED][:1]
    return names[:max_plots] if max_plots is not None else names


def performance_markdown(result: DailyDrift) -> str:
    """Training-time vs estimated (with its band) vs realized, and the prediction drift line."""
    est = result.estimate.to_dict() if result.estimate else {}
    real = result.realized or {}
    on_labels = result.estimated_on_labels or {}
    lines = [
        "| metric | training (holdout) | estimated (CBPE) | estimate band | estimated on labelled rows | realized "
        "| realized drop |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for m in [m for m in ("accuracy", "roc_auc", "mae") if m in result.training_metrics or m in real]:
        band = result.estimate_edges.get(m)
        band_text = f"[{number_text(band[0])}, {number_text(band[2])}]" if band else "–"
        if m in result.estimate_alarms:
            band_text += " **below**"
        r_drop = result.realized_decay.drops.get(m) if result.realized_decay else None
        lines.append(
            f"| {m} | {number_text(result.training_metrics.get(m))} | {number_text(est.get(m))} | {band_text} | "
            f"{number_text(on_labels.get(m))} | {number_text(real.get(m))} | {number_text(r_drop)} |"
        )
    lines += ["", f"Realized: {result.realized_note}."]
    p = result.comparison.prediction
    if p is not None:
        lines += [
            "",
            f"Prediction drift ({p.test}): {number_text(p.statistic)} against its band's upper edge {number_text(p.threshold)}, "
            f"{'**drifted**' if p.drifted else 'no drift'} (KS p-value {number_text(p.p_value)}, information only; "
            f"{p.reference_count} reference vs {p.current_count} current scores).",
        ]
    return "\n".join(lines)


def verdict_line(c: DayComparison) -> str:
    """The dataset verdict: drift share against its band, and the multivariate error against its band."""
    verdict = "**Dataset drift**" if c.dataset_drift else "No dataset drift"
    lower, upper = c.multivariate_edges if c.multivariate_edges else (None, None)
    return (
        f"{verdict}: {len(c.drifted_features)} of {len(c.tested)} judged features beyond their band (drift share "
        f"{c.drift_share:.3f}, band upper edge {c.drift_share_upper:.3f}"
        f"{' **exceeded**' if c.drift_share > c.drift_share_upper else ''})"
        + (
            f"; {round(c.severe_share * len(c.tested))} feature(s) at {c.severe_level:g}x their band's distance or "
            f"more, **beyond** what the reference chunks allow ({c.severe_share_band.rule})"
            if c.severe_alarm and c.severe_share_band is not None
            else ""
        )
        + (
            f"; multivariate PCA reconstruction error {number_text(c.multivariate_error)} in band [{number_text(lower)}, "
            f"{number_text(upper)}]{' **outside**' if c.multivariate_alarm else ''}"
            if c.multivariate_error is not None
            else ""
        )
        + "."
    )


def bands_text(settings: CalibrationSettings) -> str:
    """How the bands were drawn and which statistics decide, in words."""
    return (
        f"Bands: {settings.rule()}, each chunk against the rest; alarms use effect sizes ({settings.numeric_method} "
        f"for numeric, {settings.categorical_method} for categorical features, and the change of the null share); "
        "p-values are information only."
    )


def feature_table_lines(c: DayComparison) -> list[str]:
    """Every judged feature worst first, then the notes (excluded features with their reason) and why flagged."""
    lines = [
        "| feature | kind | judged on | statistic | band center | alarm above | severity | drifted | p-value (info) "
        "| null % ref / cur |",
        "|---|---|---|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in c.tested:
        flag = "**yes**" if row.drifted else "no"
        nulls = f"{100 * row.reference_null_share:.1f} / {100 * row.current_null_share:.1f}"
        judged = f"{row.test}{' (shape)' if row.mode == SHAPE else ''}"
        lines.append(
            f"| {row.feature} | {row.kind} | {judged} | {number_text(row.statistic)} | {number_text(row.band_mean)} | "
            f"{number_text(row.threshold)} | {row.severity:.2f} | {flag} | {number_text(row.p_value)} | {nulls} |"
        )
    notes = [r for r in c.features if r.note]
    if notes:
        lines += ["", "Notes:"] + [
            f"- `{r.feature}`{' (not judged)' if r.mode == EXCLUDED else ''}: {r.note}" for r in notes
        ]
    reasons = [r for r in c.tested if r.drifted]
    if reasons:
        lines += ["", "Why flagged:"] + [f"- `{r.feature}`: {r.reason}" for r in reasons]
    return lines


def render_day_markdown(result: DailyDrift, images: Mapping[str, str | Path] | None = None) -> str:
    """The day's report: verdicts, the band rule, every feature worst first, excluded ones with their reason."""
    c = result.comparison
    cal = result.calibration
    lines = [
        f"# Drift report {result.day}",
        "",
        verdict_line(c),
        "",
        f"Reference: the monitored population's daily snapshots {cal.days[0]}..{cal.days[-1]} "
        f"({len(cal.days)} chunks, {cal.reference_rows} rows){' — this day is inside it' if result.in_reference else ''}; "
        f"current {c.current_rows} rows. {bands_text(cal.settings)}",
        "",
        f"Alarms: {', '.join(result.alarms) if result.alarms else 'none'}"
        + (
            f"; elevated (at least half-way to the alarm edge: keeps an open alarm episode open): "
            f"{', '.join(result.elevated)}"
            if result.elevated
            else ""
        )
        + ". Way to the alarm edge (1 = at the edge): "
        + ", ".join(f"{k} {v:.2f}" for k, v in result.severities.items())
        + ".",
        "",
        *feature_table_lines(c),
    ]
    lines += ["", "## Performance", "", performance_markdown(result)]
    if images:
        lines += ["", "## Distributions of the flagged and worst features (reference vs current)", ""]
        for feature, path in images.items():
            lines.append(f"![{feature}]({Path(path).name})")
    return "\n".join(lines) + "\n"


def plot_feature(baseline: FeatureBaseline, current: pd.Series, row: CalibratedFeature) -> bytes:
    """PNG of one feature's reference (from the calibration's counts) vs the day's distribution."""
    from matplotlib.figure import Figure  # only rendering needs matplotlib

    fig = Figure(figsize=(5.0, 3.2), dpi=80)
    ax = fig.add_subplot()
    if baseline.kind == "numeric":
        cur = pd.to_numeric(current).to_numpy(dtype="float64", na_value=np.nan)
        cur = cur[np.isfinite(cur)]
        if baseline.mode == SHAPE:
            cur = standardize(cur)
        grid = baseline.grid if baseline.grid is not None else np.empty(0)
        counts = baseline.counts if baseline.counts is not None else np.empty(0)
        pooled = np.concatenate([grid, cur])
        if pooled.size:
            low, high = np.quantile(pooled, [0.005, 0.995])
            if high <= low:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, 31)
            if counts.sum():
                ref_hist, _ = np.histogram(np.clip(grid, low, high), bins=edges, weights=counts)
                ax.stairs(
                    ref_hist / counts.sum(), edges, label="reference", color="tab:blue", fill=True, alpha=0.45
                )
            if cur.size:
                cur_hist, _ = np.histogram(np.clip(cur, low, high), bins=edges)
                ax.stairs(
                    cur_hist / cur.size, edges, label="current", color="tab:orange", fill=True, alpha=0.45
                )
        if baseline.mode == SHAPE:
            ax.set_xlabel("standardized within the day (shape)", fontsize=7)
    else:
        ref = pd.Series(baseline.counts, index=[str(c) for c in baseline.categories or []], dtype="float64")
        ref = ref / ref.sum() if ref.sum() else ref
        cur = current.dropna().astype(str).value_counts(normalize=True)
        table = pd.concat([ref.rename("reference"), cur.rename("current")], axis=1).fillna(0.0)
        table = table.loc[table.max(axis=1).sort_values(ascending=False).index[:_MAX_BARS]]
        x = np.arange(len(table))
        ax.bar(x - 0.2, table["reference"], width=0.4, label="reference", color="tab:blue", alpha=0.75)
        ax.bar(x + 0.2, table["current"], width=0.4, label="current", color="tab:orange", alpha=0.75)
        ax.set_xticks(x, [str(v)[:12] for v in table.index], rotation=45 if len(table) > 6 else 0, fontsize=7)
    verdict = "DRIFT" if row.drifted else "in band"
    ax.set_title(
        f"{row.feature}: {row.test} {number_text(row.statistic, 3)} (alarm > {number_text(row.threshold, 3)}, {verdict})",
        fontsize=8,
    )
    ax.set_ylabel("share of rows", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_trend(summaries: Sequence[Mapping]) -> bytes:
    """PNG of drift share and estimated performance over the days, with their calibrated bands drawn."""
    from matplotlib.figure import Figure

    rows = sorted(summaries, key=lambda s: s["day"])
    days = pd.to_datetime([s["day"] for s in rows])
    metrics = sorted({m for s in rows for m in (s.get("estimate_bands") or {})})
    fig = Figure(figsize=(7.0, 2.6 * (1 + len(metrics))), dpi=80)
    axes = fig.subplots(1 + len(metrics), 1, sharex=True, squeeze=False)[:, 0]

    def col(key, sub=None):
        out = []
        for s in rows:
            v = s.get(key)
            if sub is not None:
                v = (v or {}).get(sub)
            out.append(np.nan if v is None else float(v))
        return np.array(out)

    ax = axes[0]
    ax.plot(days, col("drift_share"), marker="o", ms=3, label="drift share", color="tab:blue")
    ax.plot(days, col("drift_share_threshold"), ls="--", color="tab:red", label="band upper edge")
    alarms = np.array([bool(s.get("drift_share_alarm")) for s in rows])
    if alarms.any():
        ax.scatter(days[alarms], col("drift_share")[alarms], color="tab:red", zorder=3, s=18, label="alarm")
    ax.set_ylabel("drift share", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    for ax, metric in zip(axes[1:], metrics, strict=True):
        lower = np.array(
            [((s.get("estimate_bands") or {}).get(metric) or {}).get("lower") or np.nan for s in rows], float
        )
        upper = np.array(
            [((s.get("estimate_bands") or {}).get(metric) or {}).get("upper") or np.nan for s in rows], float
        )
        ax.fill_between(days, lower, upper, color="tab:green", alpha=0.15, label="estimate band")
        ax.plot(
            days, col(f"estimated_{metric}"), marker="o", ms=3, color="tab:green", label=f"estimated {metric}"
        )
        realized = col(f"realized_{metric}")
        if np.isfinite(realized).any():
            ax.plot(days, realized, marker="x", ms=4, color="black", label=f"realized {metric}")
        ax.set_ylabel(metric, fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def embedded_images(paths: Mapping[str, Path], names: Sequence[str]) -> str:
    """PNGs as markdown images with base64 data URIs (the Dagster UI renders ``data:`` images)."""
    return "\n".join(
        f"![{n}](data:image/png;base64,{base64.b64encode(paths[n].read_bytes()).decode()})"
        for n in names
        if n in paths
    )


def render_html(markdown: str, images: Mapping[str, Path]) -> str:
    """A self-contained HTML page of the report: the markdown's text and tables, the PNGs inlined."""
    body = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()).replace("**", "") for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[2 : line.index("]")]
            if name in images:
                data = base64.b64encode(Path(images[name]).read_bytes()).decode()
                body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            text = html.escape(line.lstrip("- "))
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
            text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
            body.append(f"<li>{text}</li>" if line.startswith("- ") else f"<p>{text}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:1em auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(body)}</body></html>"


@dataclass(frozen=True)
class SavedDay:
    """Files written for one day's drift report."""

    markdown_path: Path
    json_path: Path
    html_path: Path
    image_paths: dict[str, Path]
    trend_path: Path | None
    markdown: str


def json_ready(value):
    """Non-finite floats as None, numpy scalars as Python values, recursively."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _saved_summaries(folder: Path, champion_version: int) -> list[dict]:
    out = []
    for path in sorted(folder.glob("drift_report_????-??-??.json")):
        try:
            summary = json.loads(path.read_text()).get("summary", {})
        except (OSError, ValueError):
            continue
        if summary.get("champion_version") == champion_version:
            out.append(summary)
    return out


def save_day_report(
    result: DailyDrift,
    reports_dir: str | Path,
    histograms: str = "drifted",
    max_histograms: int | None = 6,
    trend: bool = True,
) -> SavedDay:
    """Write ``drift_report_<day>.md/.json/.html``, PNGs of the flagged / worst features and the scores, and
    refresh ``drift_trend.png`` (this champion's saved days, bands drawn)."""
    from mlops_assets.storage import write_file_atomic

    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"drift_report_{result.day}"
    images: dict[str, Path] = {}
    cal = result.calibration
    for feature in plotted_features(result, histograms, max_histograms):
        row = result.comparison.feature(feature)
        png = plot_feature(cal.features[feature], result.current[feature], row)
        images[feature] = write_file_atomic(png, out / f"{name}_{slug(feature)}.png")
    p = result.comparison.prediction
    if histograms != "none" and p is not None and cal.prediction is not None:
        png = plot_feature(cal.prediction, pd.Series(result.current_scores), p)
        images["prediction"] = write_file_atomic(png, out / f"{name}_prediction.png")
    summary = result.summary()
    payload = {  # top-level keys as the model report (training/model_report.py) reads them
        "drift_share": summary["drift_share"],
        "drift_share_threshold": summary["drift_share_threshold"],
        "dataset_drift": summary["dataset_drift"],
        "n_features": len(result.comparison.tested),
        "current_rows": summary["current_rows"],
        "reference_rows": summary["reference_rows"],
        "summary": summary,
        "features": [r.to_dict() for r in result.comparison.features],
        "prediction": p.to_dict() if p is not None else None,
        "calibration": cal.summary(),
    }
    json_path = write_file_atomic(
        json.dumps(json_ready(payload), indent=1, default=str, allow_nan=False).encode(), out / f"{name}.json"
    )
    trend_path = None
    if trend and histograms != "none":
        trend_path = write_file_atomic(
            plot_trend(_saved_summaries(out, result.champion_version)), out / TREND_FILE
        )
        images["trend"] = trend_path
    markdown = render_day_markdown(result, images)
    md_path = write_file_atomic(markdown.encode(), out / f"{name}.md")
    html_path = write_file_atomic(render_html(markdown, images).encode(), out / f"{name}.html")
    return SavedDay(md_path, json_path, html_path, images, trend_path, markdown)
