"""Batch scoring: the champion scores entities from their point-in-time features; in shadow mode the challenger too.

:func:`features_as_of` is the one offline read behind batch scoring and behind a ``POST /predict`` with
``as_of`` (a replay): both score the same frame with the same pipeline, so a replay reproduces the batch
score exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlops_assets.serving.models import ServedModel
from mlops_assets.serving.routing import CHALLENGER, CHAMPION, RolloutState

if TYPE_CHECKING:
    from mlops_assets.features.store import FeatureStore

COLUMNS = ("arm", "model_version", "score", "shadow", "mode", "scored_at")
AS_OF_COLUMN = "as_of"
STATUS_SUFFIX = "__status"
FRESH, EXPIRED, MISSING = "fresh", "expired", "missing"


def _utc(value: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {value!r}")
    return stamp.tz_convert("UTC")


def features_as_of(
    store: FeatureStore, entity_ids: Sequence[Any], as_of: datetime, features: list[str]
) -> pd.DataFrame:
    """Each entity's features as of ``as_of`` from the offline store, with per view ``__feature_timestamp`` and ``__status``.

    Values are :meth:`FeatureStore.get_historical_features` at that time (as of the UTC midnight at or before it).
    A view's status, judged at ``as_of``: ``expired`` when the newest day it has stored is older than its TTL
    at that time (its values are null, whatever the entity), ``missing`` when the entity had no row of the view
    yet, ``fresh`` otherwise. A view with no stored day at all raises ``FeatureDataMissing``.
    """
    from mlops_assets.features.layout import select_features
    from mlops_assets.features.pit import TS_SUFFIX
    from mlops_assets.features.tiles import stored_days

    at = _utc(as_of)
    wanted = select_features(store.spec, list(features))
    key = entity_key(store, features)
    if key == AS_OF_COLUMN:
        raise ValueError(f"the entity key may not be named {AS_OF_COLUMN!r}")
    frame = pd.DataFrame({key: list(entity_ids), AS_OF_COLUMN: at})
    out = store.get_historical_features(frame, list(features), timestamp_column=AS_OF_COLUMN)
    midnight = at.floor("D")
    for view in wanted:
        stored = stored_days(store.paths, view)
        newest = pd.Timestamp(stored[-1], tz="UTC") + timedelta(days=1) if stored else None
        read_at = min(midnight, newest) if newest is not None else midnight
        ttl = store.layout(view).view.ttl
        expired = newest is not None and ttl is not None and at - read_at > pd.Timedelta(ttl)
        stamps = out[f"{view}{TS_SUFFIX}"]
        out[f"{view}{STATUS_SUFFIX}"] = [
            FRESH if pd.notna(t) else EXPIRED if expired else MISSING for t in stamps
        ]
    return out


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


def score_as_of(
    store: FeatureStore,
    entity_ids: Sequence[Any],
    as_of: datetime,
    models: Mapping[str, ServedModel],
    state: RolloutState | None = None,
) -> pd.DataFrame:
    """:func:`score_entities` on the entities' features as of ``as_of`` (a backtest or a day's batch)."""
    if CHAMPION not in models:
        raise ValueError("no champion model to score with")
    wanted = list(
        dict.fromkeys(
            f for arm in (CHAMPION, CHALLENGER) if arm in models for f in models[arm].predictor.features
        )
    )
    frame = features_as_of(store, entity_ids, as_of, wanted)
    return score_entities(
        frame, entity_key(store, wanted), models, state, scored_at=_utc(as_of).to_pydatetime()
    )


def entity_key(store: FeatureStore, features: list[str]) -> str:
    """The join key of the entity the features describe (one entity for all of them)."""
    from mlops_assets.features.layout import select_features

    keys = {store.layout(v).entity_key for v in select_features(store.spec, list(features))}
    if len(keys) != 1:
        raise ValueError(f"the features belong to entities with different join keys {sorted(keys)}")
    return keys.pop()
