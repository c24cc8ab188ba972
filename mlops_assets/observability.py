"""Prometheus metrics beyond the serving app's request counters: the online store's per-view freshness and the
drift report's headline numbers, exported by the serving app's ``GET /metrics`` (no pushgateway).

The drift report writes its numbers as a Prometheus textfile, ``<data>/reports/metrics/drift.prom`` (the
node-exporter textfile format, so a node exporter can collect it too); the serving app re-exports the file's
gauges on every scrape, and the online store's refresh and feature times are read from the store itself. The
Grafana dashboard (``deploy/grafana/``) and the alert rules (``deploy/prometheus/``) query these names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from mlops_assets.settings import DataPaths

DRIFT_TEXTFILE = "drift.prom"
LAST_REFRESH = "mlops_online_features_last_refresh_timestamp_seconds"
FEATURE_TIME = "mlops_online_features_feature_timestamp_seconds"
VIEW_ROWS = "mlops_online_features_rows"
VIEW_TTL = "mlops_online_features_ttl_seconds"
DRIFT_SHARE = "mlops_drift_share"
DATASET_DRIFT = "mlops_drift_dataset_drift"
ESTIMATED = "mlops_drift_estimated_performance"
REALIZED = "mlops_drift_realized_performance"
TRAINING = "mlops_drift_training_performance"
REPORT_DAY = "mlops_drift_report_day_timestamp_seconds"
REPORT_WRITTEN = "mlops_drift_report_last_run_timestamp_seconds"


def drift_textfile(paths: DataPaths) -> Path:
    return paths.reports / "metrics" / DRIFT_TEXTFILE


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def drift_metrics_text(
    day: str,
    champion_version: Any,
    drift_share: float,
    dataset_drift: bool,
    summary: Mapping[str, Any],
    written_at: float | None = None,
) -> str:
    """The drift report's latest day as Prometheus exposition text: drift share, dataset drift, and each estimated,
    realized and training-time performance metric of the summary (``estimated_roc_auc`` -> metric="roc_auc")."""
    version = _label(champion_version)
    lines = [
        f"# HELP {DRIFT_SHARE} Share of the champion's input features that drifted on the latest reported day",
        f"# TYPE {DRIFT_SHARE} gauge",
        f'{DRIFT_SHARE}{{model_version="{version}"}} {float(drift_share)!r}',
        f"# HELP {DATASET_DRIFT} 1 when the latest reported day's drift share reached the dataset-drift threshold",
        f"# TYPE {DATASET_DRIFT} gauge",
        f'{DATASET_DRIFT}{{model_version="{version}"}} {1.0 if dataset_drift else 0.0}',
    ]
    for prefix, name, help_text in (
        ("estimated_", ESTIMATED, "Confidence-based (CBPE) estimate of the champion's performance"),
        ("realized_", REALIZED, "The champion's performance on the realized labels of the recent days"),
        ("training_", TRAINING, "The champion's training-time holdout performance (the reference)"),
    ):
        values = {
            k.removeprefix(prefix): float(v)
            for k, v in summary.items()
            if k.startswith(prefix)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(float(v))
            and k != f"{prefix}labels"
        }
        if not values:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [
            f'{name}{{metric="{_label(metric)}",model_version="{version}"}} {value!r}'
            for metric, value in sorted(values.items())
        ]
    day_ts = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp()
    lines += [
        f"# HELP {REPORT_DAY} The day the latest drift report judged (UTC midnight)",
        f"# TYPE {REPORT_DAY} gauge",
        f"{REPORT_DAY} {day_ts!r}",
        f"# HELP {REPORT_WRITTEN} When the drift report last ran",
        f"# TYPE {REPORT_WRITTEN} gauge",
        f"{REPORT_WRITTEN} {float(written_at if written_at is not None else time.time())!r}",
    ]
    return "\n".join(lines) + "\n"


def write_drift_textfile(
    paths: DataPaths, day: str, champion_version: Any, comparison, summary: Mapping
) -> Path:
    """Write the latest reported day's numbers to ``reports/metrics/drift.prom`` (atomically)."""
    from mlops_assets.storage import write_file_atomic

    text = drift_metrics_text(
        day, champion_version, comparison.drift_share, comparison.dataset_drift, summary
    )
    path = drift_textfile(paths)
    write_file_atomic(text.encode(), path)
    return path


class MonitoringCollector:
    """A prometheus_client collector: the online store's per-view freshness and the drift textfile's gauges,
    read at scrape time."""

    def __init__(self, paths: DataPaths | None, online_store=None) -> None:
        self.paths = paths
        self.online_store = online_store

    def describe(self) -> Iterable:
        return []  # computed at scrape time (no fixed set of samples)

    def collect(self) -> Iterable:
        from prometheus_client.core import GaugeMetricFamily

        views = None
        if self.online_store is not None:
            try:
                views = self.online_store.views()
            except Exception:  # an unreadable store: /health says why; no freshness samples
                views = None
        if views is not None:
            refreshed = GaugeMetricFamily(
                LAST_REFRESH, "When the online store last refreshed the view (Unix time)", labels=["view"]
            )
            feature = GaugeMetricFamily(
                FEATURE_TIME,
                "The feature time of the view's values in the online store (Unix time)",
                labels=["view"],
            )
            rows = GaugeMetricFamily(VIEW_ROWS, "Entities of the view in the online store", labels=["view"])
            ttl = GaugeMetricFamily(
                VIEW_TTL, "The view's TTL (how old its values may be when served)", labels=["view"]
            )
            for view, item in sorted(views.items()):
                if item["refreshed_at"] is not None:
                    refreshed.add_metric([view], item["refreshed_at"].timestamp())
                if item["feature_time"] is not None:
                    feature.add_metric([view], item["feature_time"].timestamp())
                rows.add_metric([view], float(item["rows"] or 0))
                if item["ttl_seconds"] is not None:
                    ttl.add_metric([view], float(item["ttl_seconds"]))
            yield from (refreshed, feature, rows, ttl)
        if self.paths is not None:
            path = drift_textfile(self.paths)
            try:
                text = path.read_text()
            except OSError:
                return
            from prometheus_client.parser import text_string_to_metric_families

            try:
                yield from text_string_to_metric_families(text)
            except ValueError:
                return  # a file being replaced; the next scrape reads the new one
