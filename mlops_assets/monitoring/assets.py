"""The daily drift_report asset: the day's features and champion scores against the champion's training set."""

import dagster as dg

from mlops_assets.features.store import FeatureStore
from mlops_assets.monitoring.checks import DRIFT_ASSET, check_results, drift_check_specs
from mlops_assets.monitoring.daily import (
    DailyDrift,
    MonitoringInputError,
    MonitorSettings,
    daily_drift,
    degradation_alert,
    embedded_images,
    judge,
    load_champion_reference,
    performance_markdown,
    save_day_report,
    skipped_verdicts,
)
from mlops_assets.monitoring.report import render_markdown
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project
from mlops_assets.storage import combine_hashes
from mlops_assets.training.alerts import default_alert_sink
from mlops_assets.training.resources import MlflowResource

DRIFT_LOGIC_VERSION = "1"
_DEFAULTS = MonitorSettings()

#: Refresh the latest day when anything it reads changed (new feature or label partitions, a new champion).
#: Unlike eager(), missing upstream history does not block it: feature views read lookback windows
#: that need not be complete.
DAILY_REFRESH = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


class DriftReportConfig(dg.Config):
    """Run config of drift_report: drift methods and thresholds, performance tolerance, rendering."""

    alpha: float = _DEFAULTS.alpha  # family-wise false-alarm rate of the per-feature tests
    bonferroni: bool = _DEFAULTS.bonferroni  # each of m features tested at alpha / m
    numeric_method: str = _DEFAULTS.numeric_method  # ks, wasserstein or psi
    categorical_method: str = _DEFAULTS.categorical_method  # chi2, jensenshannon or psi
    psi_threshold: float = _DEFAULTS.psi_threshold
    wasserstein_threshold: float = _DEFAULTS.wasserstein_threshold
    jensenshannon_threshold: float = _DEFAULTS.jensenshannon_threshold
    max_drift_share: float = _DEFAULTS.max_drift_share
    prediction_alpha: float = _DEFAULTS.prediction_alpha
    max_performance_drop: float = _DEFAULTS.max_performance_drop
    realized_window_days: int = _DEFAULTS.realized_window_days
    min_labels: int = _DEFAULTS.min_labels
    histograms: str = "drifted"  # PNGs under data/reports/: drifted features + scores, all, or none
    max_embedded_histograms: int = 6  # drifted features (then the scores) embedded in the UI metadata
    alert: bool = True  # send a degradation alert when an ERROR check fails

    def settings(self) -> MonitorSettings:
        return MonitorSettings(
            alpha=self.alpha,
            bonferroni=self.bonferroni,
            numeric_method=self.numeric_method,
            categorical_method=self.categorical_method,
            psi_threshold=self.psi_threshold,
            wasserstein_threshold=self.wasserstein_threshold,
            jensenshannon_threshold=self.jensenshannon_threshold,
            max_drift_share=self.max_drift_share,
            prediction_alpha=self.prediction_alpha,
            max_performance_drop=self.max_performance_drop,
            realized_window_days=self.realized_window_days,
            min_labels=self.min_labels,
        )


def day_metadata(result: DailyDrift, saved, embedded: str, reference_source: str, population: str) -> dict:
    """Per-partition metadata: headline numbers, the rendered report, embedded histograms, file paths."""
    summary = result.summary()
    numbers = {
        k: summary[k]
        for k in (
            "estimated_accuracy",
            "estimated_roc_auc",
            "realized_accuracy",
            "realized_roc_auc",
            "training_accuracy",
            "realized_mae",
            "training_mae",
            "training_roc_auc",
        )
        if summary[k] is not None
    }
    metadata = {
        "dagster/row_count": summary["current_rows"],
        "champion_version": result.champion_version,
        "drift_share": round(result.report.drift_share, 6),
        "dataset_drift": result.report.dataset_drift,
        "drifted_features": dg.MetadataValue.json(result.report.drifted_features),
        "prediction_drift": result.prediction.drifted,
        **numbers,
        "realized_labels": summary["realized_labels"],
        "report": dg.MetadataValue.md(
            render_markdown(result.report) + "\n## Performance\n\n" + performance_markdown(result)
        ),
        "report_path": dg.MetadataValue.path(str(saved.markdown_path)),
        "reference": reference_source,
        "population": population,
    }
    if embedded:
        metadata["histograms"] = dg.MetadataValue.md(embedded)
    return metadata


def population_text(project: Project) -> str:
    population = project.spec.monitoring.population
    sources = ", ".join(population.sources) or "any event source"
    window = "ever" if population.active_within is None else f"in the last {population.active_within} days"
    return f"entities with a record in {sources} {window} up to the day; features as of D+1 00:00 UTC"


def build_drift_asset(project: Project, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The daily drift report of the project's monitored population against the champion."""
    target = project.spec.target
    population = population_text(project)
    return _drift_asset(project, partitions, target.source, population)


def _drift_asset(project: Project, partitions, label_source: str, population: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=DRIFT_ASSET,
        group_name="monitoring",
        description="Per day: the champion's input features and scores against its training set (KS / chi-squared "
        "per feature, Bonferroni-corrected; PSI, Wasserstein, Jensen-Shannon alongside), CBPE-estimated and "
        "realized accuracy / ROC AUC against training-time metrics. Saved under data/reports/drift_report_<day>.*",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=f"drift-report-v{DRIFT_LOGIC_VERSION}",
        kinds={"pandas", "scipy", "markdown"},
        deps=[
            *(dg.AssetDep(v) for v in project.view_names),
            dg.AssetDep(
                label_source,
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-(_DEFAULTS.realized_window_days - 1),
                    end_offset=0,
                    allow_nonexistent_upstream_partitions=True,
                ),
            ),
            dg.AssetDep("promotion"),
        ],
        automation_condition=DAILY_REFRESH,
        check_specs=drift_check_specs(),
    )
    def drift_report(
        context: dg.AssetExecutionContext,
        config: DriftReportConfig,
        data: DataDirResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        """Drift, prediction drift and performance (estimated, realized) of each day against the champion."""
        days = list(context.partition_keys)
        settings = config.settings()
        current = runtime_project(project, data)
        from mlops_assets.training.tracking import RegistryUnavailable

        missing_store = ""
        try:
            champion = load_champion_reference(current, mlflow.tracking)
        except RegistryUnavailable as exc:
            if not exc.missing:
                raise  # an unreadable or unreachable store fails the run, naming its file or URI
            champion, missing_store = (
                None,
                exc.reason,
            )  # nothing trained yet (or the store was lost): say which
        if champion is None:
            why = missing_store or f"{mlflow.model_name!r} has no version with alias 'champion'"
            message = (
                f"no champion: {why}, so there is no reference to compare with; run retraining_job to train "
                "and promote one"
            )
            context.log.warning(message)
            for day in days:
                context.add_asset_metadata({"status": "no champion", "message": message}, partition_key=day)
            return dg.MaterializeResult(
                data_version=dg.DataVersion("no-champion"),
                check_results=check_results(skipped_verdicts(message), None, days),
            )

        from mlops_assets.features.assets import require_store_inputs

        require_store_inputs(context, current, [label_source], days[-1], f"drift_report {days[0]}")
        store = FeatureStore(current)
        results, hashes = [], []
        for day in days:
            try:
                result = daily_drift(store, champion, day, settings)
            except MonitoringInputError as exc:
                raise dg.Failure(str(exc)) from exc
            saved = save_day_report(
                result,
                champion,
                data.paths.reports,
                histograms=config.histograms,
                max_histograms=config.max_embedded_histograms,
            )
            names = [*result.report.drifted_features, "prediction"][: config.max_embedded_histograms]
            context.add_asset_metadata(
                day_metadata(
                    result,
                    saved,
                    embedded_images(saved.image_paths, names),
                    champion.reference_source,
                    population,
                ),
                partition_key=day,
            )
            summary = result.summary()
            hashes.append(combine_hashes([str(champion.version), repr(sorted(summary.items()))]))
            results.append(result)
            context.log.info(
                f"{day}: {len(result.report.drifted_features)} of {len(result.report.features)} features drifted "
                f"(share {result.report.drift_share:.2f}), estimated accuracy {summary['estimated_accuracy']}, "
                f"realized {summary['realized_accuracy'] if summary['realized_mae'] is None else summary['realized_mae']} "
                f"({result.realized_note})"
            )

        verdicts = judge(results, settings)
        alert = degradation_alert(verdicts, champion.version, days, context.run_id) if config.alert else None
        if alert is not None:
            delivery = default_alert_sink(data.paths.root).send(alert)
            context.log.warning(f"degradation alert written to {delivery.file}: {alert.title}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(hashes[0] if len(hashes) == 1 else combine_hashes(hashes)),
            check_results=check_results(verdicts, champion.version, days),
        )

    return drift_report
