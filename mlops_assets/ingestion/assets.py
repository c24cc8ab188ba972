"""Daily ingestion assets: one per source of the project spec, with blocking schema and quarantine-rate gates."""

import hashlib

import dagster as dg

from mlops_assets.ingestion.manifest import Manifest, ingestion_lock, partition_fingerprint, write_manifest
from mlops_assets.ingestion.report import files_markdown, range_summary_markdown, reasons_markdown
from mlops_assets.ingestion.schema import TableContract
from mlops_assets.ingestion.validate import DayResult, KeyIndex, ingest_day, write_day
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource
from mlops_assets.settings import DataPaths
from mlops_assets.storage import Rollback, combine_hashes

INGESTION_LOGIC_VERSION = "3"
SCHEMA_CHECK = "schema_valid"
QUARANTINE_CHECK = "quarantine_rate_within_threshold"
DEFAULT_MAX_QUARANTINE_RATE = 0.05


class IngestionConfig(dg.Config):
    """Run config of an ingestion asset."""

    max_quarantine_rate: float = DEFAULT_MAX_QUARANTINE_RATE


def contract_code_version(contract: TableContract) -> str:
    digest = hashlib.sha256(repr(contract).encode()).hexdigest()[:12]
    return f"ingestion-v{INGESTION_LOGIC_VERSION}-{digest}"


def column_schema(contract: TableContract) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                c.name,
                str(c.dtype),
                description=c.description,
                constraints=dg.TableColumnConstraints(
                    nullable=c.nullable, unique=(c.name,) == contract.unique_key
                ),
            )
            for c in contract.columns
        ]
    )


def day_metadata(result: DayResult) -> dict:
    """Per-partition metadata: row conservation, reasons, files and hashes."""
    return {
        "dagster/row_count": result.rows_kept,
        "rows_read": result.rows_read,
        "rows_kept": result.rows_kept,
        "rows_quarantined": result.rows_quarantined,
        "quarantine_rate": round(result.quarantine_rate, 6),
        "quarantined_by_reason": dg.MetadataValue.md(reasons_markdown(result.quarantined_by_reason)),
        "files": dg.MetadataValue.md(files_markdown(result)),
        "files_quarantined": len(result.files_quarantined),
        "content_hash": result.content_hash,
        "landing_hash": result.landing_hash,
    }


def schema_check_result(results: list[DayResult]) -> dg.AssetCheckResult:
    errors = [f"{r.day}: {e}" for r in results for e in r.schema_errors]
    warnings = [f"{r.day}: {w}" for r in results for w in r.schema_warnings]
    metadata = {
        "days": len(results),
        "errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in errors) or "none"),
        "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in warnings[:200]) or "none"),
    }
    if errors:
        return dg.AssetCheckResult(
            check_name=SCHEMA_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{len(errors)} landing file(s) miss required columns; first: {errors[0]}",
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        check_name=SCHEMA_CHECK,
        passed=not warnings,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{len(warnings)} warning(s); first: {warnings[0]}"
            if warnings
            else "every file matched the contract"
        ),
        metadata=metadata,
    )


def quarantine_check_result(results: list[DayResult], max_rate: float) -> dg.AssetCheckResult:
    over = [r for r in results if r.quarantine_rate > max_rate]
    worst = max(results, key=lambda r: r.quarantine_rate)
    metadata = {
        "max_quarantine_rate": max_rate,
        "worst_day": worst.day,
        "worst_rate": round(worst.quarantine_rate, 6),
        "days_over_threshold": dg.MetadataValue.md(
            "\n".join(
                f"- {r.day}: {r.rows_quarantined} of {r.rows_read} rows ({r.quarantine_rate:.2%}) {r.quarantined_by_reason}"
                for r in over
            )
            or "none"
        ),
    }
    if over:
        return dg.AssetCheckResult(
            check_name=QUARANTINE_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"{len(over)} day(s) quarantined more than {max_rate:.2%} of rows; worst {worst.day}: "
                f"{worst.rows_quarantined} of {worst.rows_read} rows = {worst.quarantine_rate:.2%}"
            ),
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        check_name=QUARANTINE_CHECK,
        passed=True,
        description=f"worst day {worst.day}: {worst.quarantine_rate:.2%} quarantined (threshold {max_rate:.2%})",
        metadata=metadata,
    )


def build_ingestion_asset(
    project: Project, contract: TableContract, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """A daily-partitioned asset that validates and stores one source's landing files."""
    source = project.source(contract.name)

    @dg.asset(
        name=contract.name,
        group_name="ingestion",
        description=contract.description,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=contract_code_version(contract),
        kinds={"parquet", "pandas"},
        owners=[f"team:{source.owner}"] if source.owner else None,
        tags={"mlops/source_kind": source.kind},
        metadata={
            "dagster/column_schema": column_schema(contract),
            "kind": source.kind,
            "landing_folder": f"landing/{contract.landing_folder}/ (files matching {contract.pattern!r})",
            "warehouse_path": f"warehouse/{contract.name}/date=YYYY-MM-DD/",
        },
        check_specs=[
            dg.AssetCheckSpec(
                SCHEMA_CHECK,
                asset=contract.name,
                blocking=True,
                description="Every landing file of the day has the contract's columns (ERROR); coerced "
                "types, unreadable files and missing days are warnings.",
            ),
            dg.AssetCheckSpec(
                QUARANTINE_CHECK,
                asset=contract.name,
                blocking=True,
                description="The share of rows quarantined on each day is at most max_quarantine_rate.",
            ),
        ],
    )
    def _ingest(context: dg.AssetExecutionContext, config: IngestionConfig, data: DataDirResource):
        paths = data.paths
        days = list(context.partition_keys)
        with ingestion_lock(paths, contract.name):
            results = _ingest_days(context, contract, paths, days)
        if len(days) > 1:
            context.log.info(range_summary_markdown(results))
        notes = sorted({n for r in results for n in r.landing_notes})
        for note in notes[:20]:
            context.log.warning(f"{contract.name} landing folder: {note}")
        data_version = (
            results[0].content_hash if len(results) == 1 else combine_hashes(r.content_hash for r in results)
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(data_version),
            check_results=[
                schema_check_result(results),
                quarantine_check_result(results, config.max_quarantine_rate),
            ],
        )

    return _ingest


def _ingest_days(
    context: dg.AssetExecutionContext, contract: TableContract, paths: DataPaths, days: list[str]
) -> list[DayResult]:
    """Ingest each day, recording its metadata; if a day fails, every day already written is restored to
    its previous content (partition, quarantine and manifest), so nothing is left that the run did not record."""
    landing_dir = paths.landing_dir(contract.landing_folder)
    keys = KeyIndex(contract, paths.table_dir(contract.name), exclude=days) if contract.unique_key else None
    results: list[DayResult] = []
    rollback = Rollback()
    try:
        for index, day in enumerate(days, start=1):
            result = ingest_day(contract, landing_dir, day, other_days=keys)
            partition, quarantine = (
                paths.partition_dir(contract.name, day),
                paths.quarantine_dir(contract.name, day),
            )
            manifest = paths.manifest_path(contract.name, day)
            for path in (partition, quarantine, manifest):
                rollback.save(path)
            write_day(result, partition, quarantine, landing_dir)
            rollback.wrote(partition)
            rollback.wrote(quarantine)
            files = partition_fingerprint(partition)
            write_manifest(
                paths,
                contract.name,
                day,
                Manifest(
                    landing_hash=result.landing_hash,
                    content_hash=result.content_hash,
                    rows=result.rows_kept,
                    run_id=context.run_id,
                    files=files,
                ),
            )
            rollback.wrote(manifest)
            if keys is not None:
                keys.add(day, result.kept)
            context.add_asset_metadata(
                {**day_metadata(result), "partition_files": dg.MetadataValue.json(files or {})},
                partition_key=day,
            )
            results.append(result)
            if len(days) > 1 and (index % 10 == 0 or index == len(days)):
                context.log.info(
                    f"{contract.name}: {index}/{len(days)} days ingested (last {day}: {result.rows_kept} kept, "
                    f"{result.rows_quarantined} quarantined)"
                )
    except BaseException as exc:
        written = sorted({p.name.removeprefix("date=").removesuffix(".json") for p in rollback.changed()})
        restored, problems = rollback.restore()
        failed_day = days[len(results)] if len(results) < len(days) else days[-1]
        message = (
            f"{contract.name}: ingestion failed on {failed_day} ({type(exc).__name__}: {exc}); "
            f"{len(written)} day(s) it had written were restored to their previous content "
            f"({', '.join(written[:10])}{' ...' if len(written) > 10 else ''}), so nothing unrecorded stays on disk"
        )
        if problems:
            message += (
                f"; {len(problems)} path(s) could NOT be restored (run `mlops reconcile`): "
                + "; ".join(problems[:5])
            )
        context.log.error(message)
        raise
    finally:
        rollback.close()
    return results


def build_ingestion_assets(
    project: Project, partitions: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """One ingestion asset per source of the spec."""
    return [build_ingestion_asset(project, c, partitions) for c in project.contracts.values()]
