"""The daily drift_report asset: the day's features and champion scores against the champion's training set."""

from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets.automation import MONITORING_FRESHNESS, arriving_days
from mlops_assets.monitoring.checks import DRIFT_ASSET, check_results, drift_check_specs
from mlops_assets.monitoring.policy import MonitorSettings
from mlops_assets.project import Project
from mlops_assets.resources import DataDirResource, runtime_project
from mlops_assets.storage import combine_hashes
from mlops_assets.training.resources import MlflowResource

if TYPE_CHECKING:  # the statistics (numpy, pandas, scipy) load in the run, not with the definitions
    from mlops_assets.monitoring.daily import DailyDrift

DRIFT_LOGIC_VERSION = "2"
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
    """Run config of drift_report: band rule, effect-size methods and floors, reference period, rendering."""

    band_sigmas: float = _DEFAULTS.band_sigmas  # alarm beyond mean + band_sigmas * sd of the reference chunks
    band_quantile: float | None = _DEFAULTS.band_quantile  # instead: this upper quantile of the chunks
    numeric_method: str = _DEFAULTS.numeric_method  # wasserstein, ks or psi (effect sizes)
    categorical_method: str = _DEFAULTS.categorical_method  # jensenshannon or psi
    min_effect: float = _DEFAULTS.min_effect
    min_jensenshannon: float = _DEFAULTS.min_jensenshannon
    min_drift_share: float = _DEFAULTS.min_drift_share
    detect_trends: bool = _DEFAULTS.detect_trends
    reference_period: str | None = _DEFAULTS.reference_period  # YYYY-MM-DD..YYYY-MM-DD
    max_performance_drop: float = _DEFAULTS.max_performance_drop
    realized_window_days: int = _DEFAULTS.realized_window_days
    min_labels: int = _DEFAULTS.min_labels
    histograms: str = "drifted"  # PNGs under data/reports/: flagged + worst features and scores, all, or none
    max_embedded_histograms: int = 6  # flagged / worst features (then the scores) embedded in the UI metadata
    alert: bool = True  # send a degradation alert when an ERROR check fails

    def settings(self) -> MonitorSettings:
        return MonitorSettings(
            band_sigmas=self.band_sigmas,
            band_quantile=self.band_quantile,
            numeric_method=self.numeric_method,
            categorical_method=self.categorical_method,
            min_effect=self.min_effect,
            min_jensenshannon=self.min_jensenshannon,
            min_drift_share=self.min_drift_share,
            detect_trends=self.detect_trends,
            reference_period=self.reference_period,
            max_performance_drop=self.max_performance_drop,
            realized_window_days=self.realized_window_days,
            min_labels=self.min_labels,
        )


def day_metadata(result: "DailyDrift", saved, embedded: str, reference_source: str, population: str) -> dict:
    """Per-partition metadata: headline numbers, the rendered report, embedded plots, file paths."""
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
            "multivariate_error",
        )
        if summary[k] is not None
    }
    c = result.comparison
    metadata = {
        "dagster/row_count": summary["current_rows"],
        "champion_version": result.champion_version,
        "drift_share": round(c.drift_share, 6),
        "drift_share_threshold": round(c.drift_share_upper, 6),
        "dataset_drift": c.dataset_drift,
        "drifted_features": dg.MetadataValue.json(c.drifted_features),
        "worst_features": dg.MetadataValue.json(summary["worst_features"]),
        "prediction_drift": summary["prediction_drift"],
        "alarms": dg.MetadataValue.json(result.alarms),
        "band_rule": result.calibration.settings.rule(),
        "reference_days": f"{result.calibration.days[0]}..{result.calibration.days[-1]}",
        **numbers,
        "realized_labels": summary["realized_labels"],
        "report": dg.MetadataValue.md(saved.markdown),
        "report_path": dg.MetadataValue.path(str(saved.markdown_path)),
        "report_html": dg.MetadataValue.path(str(saved.html_path)),
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
        description="Per day: the monitored population's features and the champion's scores against the same "
        "population over the champion's training window, with bands calibrated on that reference's daily chunks "
        "(effect sizes per feature, drift share, PCA reconstruction error, prediction drift, CBPE estimate; "
        "p-values as information), and realized performance. Saved under data/reports/drift_report_<day>.*",
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
        automation_condition=arriving_days(ignore=("promotion",)),
        freshness_policy=MONITORING_FRESHNESS,
        check_specs=drift_check_specs(),
    )
    def drift_report(
        context: dg.AssetExecutionContext,
        config: DriftReportConfig,
        data: DataDirResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        """Drift, prediction drift and performance (estimated, realized) of each day against the champion."""
        from mlops_assets.features.store import FeatureStore
        from mlops_assets.monitoring.daily import (
            MonitoringInputError,
            degradation_alert,
            judge,
            load_calibration,
            load_champion_reference,
            monitor_days,
            skipped_verdicts,
        )
        from mlops_assets.monitoring.day_report import (
            embedded_images,
            number_text,
            plotted_features,
            save_day_report,
        )
        from mlops_assets.observability import write_drift_textfile
        from mlops_assets.training.alerts import default_alert_sink
        from mlops_assets.training.tracking import RegistryUnavailable

        days = list(context.partition_keys)
        settings = config.settings()
        current = runtime_project(project, data)

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
        try:
            calibration = load_calibration(store, champion, settings, log=context.log.warning)
            found = monitor_days(store, champion, days, settings, calibration)
        except MonitoringInputError as exc:
            raise dg.Failure(str(exc)) from exc
        for i, result in enumerate(found):
            day = result.day
            saved = save_day_report(
                result,
                data.paths.reports,
                histograms=config.histograms,
                max_histograms=config.max_embedded_histograms,
                trend=i == len(found) - 1,  # the trend over the saved days: drawn once per run
            )
            names = [
                *plotted_features(result, config.histograms, config.max_embedded_histograms),
                "prediction",
            ]
            context.add_asset_metadata(
                day_metadata(
                    result,
                    saved,
                    embedded_images(saved.image_paths, names[: config.max_embedded_histograms]),
                    champion.reference_source,
                    population,
                ),
                partition_key=day,
            )
            summary = result.summary()
            hashes.append(combine_hashes([str(champion.version), repr(sorted(summary.items()))]))
            results.append(result)
            c = result.comparison
            context.log.info(
                f"{day}: {len(c.drifted_features)} of {len(c.tested)} features beyond their band "
                f"(share {c.drift_share:.2f}, upper edge {c.drift_share_upper:.2f}), alarms {result.alarms or 'none'}, "
                f"estimated accuracy {number_text(summary['estimated_accuracy'])}, "
                f"realized {number_text(summary['realized_accuracy'] if summary['realized_mae'] is None else summary['realized_mae'])} "
                f"({result.realized_note})"
            )

        # the latest day's numbers for Prometheus (re-exported by the serving app's /metrics)
        write_drift_textfile(
            current.paths, days[-1], champion.version, results[-1].comparison, results[-1].summary()
        )
        verdicts = judge(results, settings)
        alert = degradation_alert(verdicts, champion.version, days, context.run_id) if config.alert else None
        if alert is not None:
            delivery = default_alert_sink(data.paths.root).send(alert)
            context.log.warning(f"degradation alert written to {delivery.file}: {alert.title}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(hashes[0] if len(hashes) == 1 else combine_hashes(hashes)),
            check_results=check_results(verdicts, champion.version, days, results[-1].calibration.days[-1]),
        )

    return drift_report
