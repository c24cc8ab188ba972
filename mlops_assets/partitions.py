"""The daily UTC partitions every daily asset of a project shares: from the spec's start to its end."""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg

from mlops_assets.project import Project

# We rely on backfill policies and lookback partition mappings knowingly; their beta notices are noise here.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def daily_partitions(project: Project) -> dg.DailyPartitionsDefinition:
    """Days ``partitions.start`` .. ``partitions.end`` (a day, the last landing day, or open: up to today)."""
    end = project.partitions_end()
    return dg.DailyPartitionsDefinition(
        start_date=project.spec.partitions.start.isoformat(),
        end_date=(end + timedelta(days=1)).isoformat() if end is not None else None,
        timezone="UTC",
    )
