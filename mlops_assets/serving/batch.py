"""Batch scoring: the champion scores every monitored entity of a day; in shadow mode the challenger too."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pandas as pd

from mlops_assets.serving.models import ServedModel
from mlops_assets.serving.routing import CHALLENGER, CHAMPION, RolloutState

COLUMNS = ("arm", "model_version", "score", "shadow", "mode", "scored_at")


def score_entities(
    features: pd.DataFrame,
    key: str,
    models: Mapping[str, ServedModel],
    state: RolloutState | None = None,
    scored_at: datetime | None = None,
) -> pd.DataFrame:
    """One row per entity and scoring model: the champion always, the challenger as well in shadow mode."""
    if key not in features.columns:
        raise ValueError(f"features need the entity key column {key!r}; they have {list(features.columns)}")
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
                    key: features[key].to_numpy(),
                    "arm": arm,
                    "model_version": model.version,
                    "score": model.predictor.predict_frame(features),
                    "shadow": arm != CHAMPION,
                    "mode": state.mode,
                    "scored_at": pd.Timestamp(scored_at),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[[key, *COLUMNS]]
