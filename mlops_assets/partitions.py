"""The daily UTC partitions shared by every daily asset."""

from __future__ import annotations

import warnings

import dagster as dg

from mlops_assets.settings import partitions_start

daily_partitions = dg.DailyPartitionsDefinition(start_date=partitions_start(), timezone="UTC")

# We rely on backfill policies and lookback partition mappings knowingly; their beta notices are noise here.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
