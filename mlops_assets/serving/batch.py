"""Batch scoring: the champion scores every active customer of a day; in shadow mode the challenger too."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pandas as pd

from mlops_assets.serving.models import ServedModel
from mlops_assets.serving.routing import CHALLENGER, CHAMPION, RolloutState

COLUMNS = ("customer_id", "arm", "model_version", "score", "shadow", "mode", "scored_at")


def score_customers(
    features: pd.DataFrame,
    models: Mapping[str, ServedModel],
    state: RolloutState | None = None,
    scored_at: datetime | None = None,
) -> pd.DataFrame:
    """One row per customer and scoring model: the champion always, the challenger as well in shadow mode."""
    if "customer_id" not in features.columns:
        raise ValueError(f"features need a customer_id column; they have {list(features.columns)}")
    if CHAMPION not in models:
        raise ValueError("no champion model to score with")
    state = state or RolloutState()
    scored_at = scored_at or datetime.now(UTC)
    arms = [CHAMPION] + ([CHALLENGER] if state.mode == "shadow" and CHALLENGER in models else [])
    frames = []
    for arm in arms:
        model = models[arm]
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": features["customer_id"].astype(str).to_numpy(),
                    "arm": arm,
                    "model_version": model.version,
                    "score": model.predictor.predict_frame(features),
                    "shadow": arm != CHAMPION,
                    "mode": state.mode,
                    "scored_at": pd.Timestamp(scored_at),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]
