"""Readable metadata for ingestion results: counts, reasons, files, schema (no Dagster import)."""

from __future__ import annotations

from mlops_assets.ingestion.validate import DayResult


def reasons_markdown(by_reason: dict[str, int]) -> str:
    if not by_reason:
        return "no rows quarantined"
    lines = ["| reason | rows |", "|---|---:|"]
    lines += [f"| `{reason}` | {count} |" for reason, count in by_reason.items()]
    return "\n".join(lines)


def files_markdown(result: DayResult) -> str:
    if not result.files:
        return "no landing files for this day"
    lines = ["| file | status | rows read | note |", "|---|---|---:|---|"]
    for f in result.files:
        note = f.reason or ""
        if f.coerced_columns:
            note += "; coerced " + ", ".join(f"{c} (arrived as {t})" for c, t in f.coerced_columns.items())
        if f.extra_columns:
            note += "; extra columns ignored: " + ", ".join(f.extra_columns)
        lines.append(f"| `{f.name}` | {f.status} | {f.rows_read} | {note.strip('; ').replace('|', '/')} |")
    return "\n".join(lines)


def range_summary_markdown(results: list[DayResult]) -> str:
    read = sum(r.rows_read for r in results)
    kept = sum(r.rows_kept for r in results)
    quarantined = sum(r.rows_quarantined for r in results)
    return (
        f"{results[0].table}: {len(results)} days {results[0].day}..{results[-1].day}: {read} rows read = "
        f"{kept} kept + {quarantined} quarantined"
    )
