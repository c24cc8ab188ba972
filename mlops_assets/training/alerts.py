"""Alert sink: every alert goes to the log and a JSON-lines file, and optionally to a webhook."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops_assets.settings import data_paths

WEBHOOK_ENV = "MLOPS_ALERT_WEBHOOK_URL"

logger = logging.getLogger("mlops_assets.alerts")


@dataclass(frozen=True)
class Alert:
    """Something a human should look at: a failed gate, a failed run, drift."""

    kind: str
    title: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    severity: str = "error"
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"details": dict(self.details)}


@dataclass(frozen=True)
class DeliveryResult:
    """Where an alert went; ``webhook_error`` says why a webhook post failed."""

    file: Path
    webhook_status: int | None = None
    webhook_error: str | None = None


class AlertSink:
    """Send alerts to the log, a JSON-lines file and, when configured, a webhook (JSON POST)."""

    def __init__(self, path: str | Path, webhook_url: str | None = None, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.webhook_url = webhook_url or None
        self.timeout_s = timeout_s

    def send(self, alert: Alert) -> DeliveryResult:
        """Deliver one alert; a webhook failure is logged and reported, never raised."""
        payload = alert.to_dict()
        logger.warning("ALERT [%s] %s: %s", alert.kind, alert.title, alert.message)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(payload, sort_keys=True, default=str) + "\n"
        # One write of one line in append mode: concurrent writers do not interleave lines.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
        if not self.webhook_url:
            return DeliveryResult(self.path)
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps(payload, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return DeliveryResult(self.path, webhook_status=response.status)
        except Exception as exc:  # a broken webhook must not hide the alert itself
            logger.error("alert webhook %s failed: %s", self.webhook_url, exc)
            return DeliveryResult(self.path, webhook_error=str(exc))


def default_alerts_path(data_root: str | Path | None = None) -> Path:
    """``<data_root>/alerts/alerts.jsonl``."""
    return data_paths(data_root).alerts / "alerts.jsonl"


def default_alert_sink(data_root: str | Path | None = None, webhook_url: str | None = None) -> AlertSink:
    """The file sink under the data root, with the webhook from the argument or ``$MLOPS_ALERT_WEBHOOK_URL``."""
    return AlertSink(default_alerts_path(data_root), webhook_url or os.environ.get(WEBHOOK_ENV))


def read_alerts(path: str | Path) -> list[dict[str, Any]]:
    """Every alert recorded in a JSON-lines file, oldest first."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gate_failure_alert(
    failed: Sequence, *, model_name: str, version: int | None, dagster_run_id: str | None = None
) -> Alert:
    """An alert listing each failed quality gate with its measured value and threshold."""
    lines = [f"{g.name}: {g.message}" for g in failed]
    return Alert(
        kind="quality_gate_failed",
        title=f"{model_name} version {version}: {len(failed)} quality gate(s) failed; not promoted",
        message="; ".join(lines),
        details={
            "model_name": model_name,
            "version": version,
            "dagster_run_id": dagster_run_id,
            "gates": [
                {"name": g.name, "measured": g.measured, "threshold": g.threshold, "message": g.message}
                for g in failed
            ],
        },
    )
