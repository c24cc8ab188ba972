"""Feature values from a view's stored rows, point-in-time, for any (entity, feature time) queries.

A query asks for an entity's features as of a feature time ``ft``, a UTC midnight (day index ``q``,
days since 1970-01-01): a window of ``w`` days covers the tiles of days ``q-w .. q-1``, i.e. the
records in ``[ft - w days, ft)``; ``lifetime`` every tile before ``ft``. With tiles sorted by
(entity, day), a query's window is an index range found by binary search, and:

* counts are differences of running counts (exact integers);
* sums and means are differences of running double-double sums (exact: :mod:`.exact`);
* minima and maxima reduce the window's range;
* the last / first record (``latest``, ``days_since_last``, ``days_since_first``) is the last / first
  tile of the range whose measure counted a record;
* a distinct count is the number of the entity's values whose "seen in the window" interval of
  feature days contains ``q`` (each occurrence of a value makes one such interval).

Snapshot views return the entity's latest change row before ``ft``. An entity with no row before
``ft`` gets 0 for counts, sums and distinct counts and null for everything else, and is reported as
not ``found``. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_assets.features.exact import dd_sub, segmented_prefix, to_float
from mlops_assets.features.layout import DAY_COLUMN, RECORD_TS, ViewLayout

_SHIFT = np.int64(1 << 21)  # day indexes below 2**21 (year 7700); entity codes below 2**42
_DAY_US = 86_400_000_000
_NONE = -1


@dataclass(frozen=True)
class ViewValues:
    """Feature values of one view for a list of queries, in query order."""

    columns: dict[str, pa.Array]
    found: np.ndarray  # bool: the entity had a row of this view before the feature time


def _codes(tile_keys: pa.Array, query_keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of entity keys, shared by tiles and queries (arbitrary but consistent).

    A key's code is its position among the tiles' distinct keys; every query key without a tile gets
    the same code past them (it matches no tile, whichever entity it is).
    """
    known = pc.unique(tile_keys)

    def codes(keys: pa.Array) -> np.ndarray:
        found = pc.index_in(keys, value_set=known).fill_null(len(known))
        return found.to_numpy(zero_copy_only=False).astype(np.int64)

    return codes(tile_keys), codes(query_keys.cast(tile_keys.type))


def _day_index(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)


def _range_reduce(
    fn: np.ufunc,
    values: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    empty: float,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """``fn.reduce(values[lo[i]:hi[i]])`` for every i (``empty`` where the range is empty).

    ``order`` (optional) is a permutation of the queries in which ``lo`` ascends: the ranges are then
    reduced in that order, walking ``values`` forward (any order gives the same values).
    """
    out = np.full(len(lo), empty, dtype=np.float64)
    live = hi > lo
    if not live.any() or not len(values):
        return out
    if order is None:
        idx = np.flatnonzero(live)
        order = idx[np.argsort(lo[idx], kind="stable")]
    else:
        order = order[live[order]]
    bounds = np.empty(2 * len(order), dtype=np.int64)
    bounds[0::2], bounds[1::2] = lo[order], hi[order]
    padded = np.append(values, empty)  # reduceat may point one past the end
    reduced = fn.reduceat(padded, bounds)
    out[order] = reduced[0::2]
    return out


class _Tiles:
    """One view's stored rows in (entity code, day) order, with the per-query index ranges.

    The rows stay as stored (``raw``); ``order[i]`` is the row at sorted position ``i``, so a column is
    put in sorted order only when it is read.
    """

    def __init__(
        self, layout: ViewLayout, table: pa.Table, query_keys: pa.Array, query_days: np.ndarray
    ) -> None:
        key = layout.entity_key
        t_codes, q_codes = _codes(table.column(key).combine_chunks(), query_keys)
        t_days = _day_index(table.column(DAY_COLUMN))
        if len(t_days) > 1 and bool(np.all(t_days[1:] >= t_days[:-1])):
            order = np.argsort(t_codes, kind="stable")  # rows already in day order (days read in turn)
        else:
            order = np.lexsort((t_days, t_codes))
        self.raw = table
        self.order = order
        self.raw_codes, self.raw_days = t_codes, t_days
        self.codes, self.days = t_codes[order], t_days[order]
        self.keys = self.codes * _SHIFT + self.days
        self.q_codes = q_codes
        self.q_days = query_days.astype(np.int64)
        base = q_codes * _SHIFT
        # queries in key order: binary searches for ascending needles walk the tiles forward
        self.q_order = np.argsort(base + self.q_days, kind="stable")
        self.hi = self._search(base + self.q_days)  # tiles of days < q
        self.entity_lo = self._search(base)
        self.found = self.hi > self.entity_lo
        starts = np.searchsorted(self.keys, self.codes * _SHIFT, side="left")
        self.segment_start = starts
        self.n = len(self.keys)
        self._lo: dict[int, np.ndarray] = {}

    def _search(self, needles: np.ndarray) -> np.ndarray:
        """``np.searchsorted(self.keys, needles, side="left")``, searched in the queries' key order."""
        out = np.empty(len(needles), dtype=np.int64)
        out[self.q_order] = np.searchsorted(self.keys, needles[self.q_order], side="left")
        return out

    def lo(self, window: int | None) -> np.ndarray:
        """Per query, the first tile of its window (ascending along ``q_order``, like ``hi``)."""
        if window is None:
            return self.entity_lo
        if window not in self._lo:
            self._lo[window] = np.maximum(
                self._search(self.q_codes * _SHIFT + self.q_days - window), self.entity_lo
            )
        return self._lo[window]

    def take(self, name: str, positions: np.ndarray) -> pa.Array:
        """Column ``name`` at the given sorted positions."""
        return self.raw.column(name).combine_chunks().take(pa.array(self.order[positions]))

    def ints(self, name: str) -> np.ndarray:
        values = self.raw.column(name).fill_null(0).to_numpy(zero_copy_only=False)
        return values.astype(np.int64, copy=False)[self.order]

    def floats(self, name: str, fill: float = np.nan) -> np.ndarray:
        values = self.raw.column(name).fill_null(fill).to_numpy(zero_copy_only=False)
        return values.astype(np.float64, copy=False)[self.order]

    def micros(self, name: str) -> np.ndarray:
        values = pc.cast(self.raw.column(name), pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return values[self.order]


def _timestamps_to_days(ft_days: np.ndarray, ts_us: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Fractional days from ``ts`` to the feature time (null where not ``valid``)."""
    values = (ft_days * _DAY_US - ts_us) / _DAY_US
    return pa.array(values.astype(np.float64), pa.float64(), mask=~valid)


def event_features(
    layout: ViewLayout, tiles: pa.Table, query_keys: pa.Array, query_days: np.ndarray, features: list[str]
) -> ViewValues:
    """Values of ``features`` of an event view for each query (see the module docstring)."""
    t = _Tiles(layout, tiles, query_keys, query_days)
    cache: dict[tuple, np.ndarray] = {}

    def cum_counts(measure) -> np.ndarray:
        if (measure.prefix, "C") not in cache:
            cache[(measure.prefix, "C")] = np.concatenate([[0], np.cumsum(t.ints(measure.col("n")))])
        return cache[(measure.prefix, "C")]

    def running_sums(measure) -> tuple[np.ndarray, np.ndarray]:
        if (measure.prefix, "S") not in cache:
            hi, lo = segmented_prefix(
                t.floats(measure.col("sum_hi"), 0.0), t.floats(measure.col("sum_lo"), 0.0), t.segment_start
            )
            cache[(measure.prefix, "S")] = (hi, lo)
        return cache[(measure.prefix, "S")]

    def window_sums(measure, window, lo, hi) -> np.ndarray:
        """The measure's exact sum over each query's window (shared by its sum and mean features)."""
        if (measure.prefix, "W", window) not in cache:
            s_hi, s_lo = running_sums(measure)
            has = hi > lo
            end = np.where(has, hi - 1, 0)
            begin = np.where(lo > t.entity_lo, lo - 1, 0)
            a_hi, a_lo = (s_hi[end], s_lo[end]) if t.n else (np.zeros(len(hi)), np.zeros(len(hi)))
            b_hi = np.where(lo > t.entity_lo, s_hi[begin] if t.n else 0.0, 0.0)
            b_lo = np.where(lo > t.entity_lo, s_lo[begin] if t.n else 0.0, 0.0)
            w_hi, w_lo = dd_sub(a_hi, a_lo, b_hi, b_lo)
            cache[(measure.prefix, "W", window)] = np.where(has, to_float(w_hi, w_lo), 0.0)
        return cache[(measure.prefix, "W", window)]

    def last_index(measure) -> np.ndarray:
        if (measure.prefix, "L") not in cache:
            idx = np.where(t.ints(measure.col("n")) > 0, np.arange(t.n), _NONE)
            cache[(measure.prefix, "L")] = np.maximum.accumulate(idx) if t.n else idx
        return cache[(measure.prefix, "L")]

    def first_index(measure) -> np.ndarray:
        if (measure.prefix, "F") not in cache:
            idx = np.where(t.ints(measure.col("n")) > 0, np.arange(t.n), t.n)
            acc = np.minimum.accumulate(idx[::-1])[::-1] if t.n else idx
            cache[(measure.prefix, "F")] = np.append(acc, t.n)
        return cache[(measure.prefix, "F")]

    out: dict[str, pa.Array] = {}
    for name in features:
        feat = layout.feature(name)
        m = layout.measure_of(name)
        lo, hi = t.lo(feat.window), t.hi
        if feat.agg in ("count", "mean"):
            counts = cum_counts(m)[hi] - cum_counts(m)[lo]
        if feat.agg == "count":
            out[name] = pa.array(counts, pa.int64())
        elif feat.agg in ("sum", "mean"):
            total = window_sums(m, feat.window, lo, hi)
            if feat.agg == "sum":
                out[name] = pa.array(total, pa.float64())
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = pa.array(total / counts, pa.float64(), mask=counts == 0)
        elif feat.agg in ("min", "max"):
            fn, empty = (np.fmin, np.inf) if feat.agg == "min" else (np.fmax, -np.inf)
            values = _range_reduce(fn, t.floats(m.col(feat.agg)), lo, hi, empty, t.q_order)
            out[name] = pa.array(values, pa.float64(), mask=np.isnan(values) | (values == empty))
        elif feat.agg in ("latest", "days_since_last"):
            last = last_index(m)[np.maximum(hi - 1, 0)] if t.n else np.full(len(hi), _NONE)
            valid = (hi > lo) & (last >= lo) & (last >= 0)
            pick = np.where(valid, last, 0)
            if feat.agg == "latest":
                typ = t.raw.schema.field(m.col("value")).type
                taken = t.take(m.col("value"), pick) if t.n else pa.nulls(len(hi), typ)
                out[name] = pc.if_else(pa.array(valid), taken, pa.nulls(len(hi), typ))
            else:
                ts = t.micros(m.col("last_ts"))[pick] if t.n else np.zeros(len(hi), dtype=np.int64)
                out[name] = _timestamps_to_days(t.q_days, ts, valid)
        elif feat.agg == "days_since_first":
            first = first_index(m)[lo]
            valid = (hi > lo) & (first < hi)
            pick = np.where(valid, first, 0)
            ts = t.micros(m.col("first_ts"))[pick] if t.n else np.zeros(len(hi), dtype=np.int64)
            out[name] = _timestamps_to_days(t.q_days, ts, valid)
        elif feat.agg == "distinct_count":
            out[name] = pa.array(_distinct_counts(t, m.col("distinct"), feat.window), pa.int64())
        else:  # pragma: no cover - the spec check rejects it
            raise ValueError(f"{feat.agg!r} is not an event aggregation")
    return ViewValues(out, t.found)


def _distinct_counts(t: _Tiles, column: str, window: int | None) -> np.ndarray:
    """Per query: the entity's distinct values with an occurrence in the window (see the module docstring)."""
    lists = t.raw.column(column).combine_chunks() if t.n else pa.array([], pa.list_(pa.string()))
    if len(lists) == 0 or pc.sum(pc.list_value_length(lists)).as_py() in (None, 0):
        return np.zeros(len(t.q_days), dtype=np.int64)
    values = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    v_codes = values.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ent, day = t.raw_codes[parent], t.raw_days[parent]  # (parent indexes the stored rows)
    # occurrences of each (entity, value) pair in day order; the previous occurrence of the same pair
    order = np.lexsort((day, v_codes, ent))
    ent, v_codes, day = ent[order], v_codes[order], day[order]
    same = np.zeros(len(day), dtype=bool)
    same[1:] = (ent[1:] == ent[:-1]) & (v_codes[1:] == v_codes[:-1])
    prev = np.where(same, np.roll(day, 1), np.iinfo(np.int64).min // 4)
    if window is None:  # counted from the day after a value's first occurrence, for ever
        first = ~same
        starts, s_ent = day[first] + 1, ent[first]
        ends, e_ent = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    else:  # an occurrence on day d counts for feature days d+1 .. d+w, unless the previous one already did
        starts = np.maximum(day + 1, prev + window + 1)
        ends = day + window
        keep = starts <= ends
        starts, s_ent, ends, e_ent = starts[keep], ent[keep], ends[keep], ent[keep]
    start_keys = np.sort(s_ent * _SHIFT + starts)
    end_keys = np.sort(e_ent * _SHIFT + ends)
    q = t.q_codes * _SHIFT
    begun = np.searchsorted(start_keys, q + t.q_days, side="right") - np.searchsorted(
        start_keys, q, side="left"
    )
    over = np.searchsorted(end_keys, q + t.q_days, side="left") - np.searchsorted(end_keys, q, side="left")
    return (begun - over).astype(np.int64)


def snapshot_features(
    layout: ViewLayout, rows: pa.Table, query_keys: pa.Array, query_days: np.ndarray, features: list[str]
) -> ViewValues:
    """Values of ``features`` of a snapshot view: the entity's latest change row before each feature time."""
    t = _Tiles(layout, rows, query_keys, query_days)
    valid = t.found
    pick = np.where(valid, t.hi - 1, 0)
    out: dict[str, pa.Array] = {}
    for name in features:
        feat = layout.feature(name)
        typ = t.raw.schema.field(feat.column).type
        taken = t.take(feat.column, pick) if t.n else pa.nulls(len(pick), typ)
        if feat.agg == "latest":
            out[name] = pc.if_else(pa.array(valid), taken, pa.nulls(len(pick), typ))
        else:  # days_since: whole days from the date (or the day of the timestamp) to the feature time
            if pa.types.is_timestamp(typ):
                days = np.floor_divide(
                    pc.cast(taken, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), _DAY_US
                )
            else:
                days = pc.cast(taken, pa.int32()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            has = valid & pc.is_valid(taken).to_numpy(zero_copy_only=False)
            out[name] = pa.array(t.q_days - days, pa.int64(), mask=~has)
    return ViewValues(out, valid)


def features_from_fold(
    layout: ViewLayout, state: pa.Table, query_keys: pa.Array, query_day: int, features: list[str]
) -> ViewValues:
    """Features of an event view at ``query_day`` from a fold of its tiles as of the day before.

    A fold has one row per entity in the tile schema: the lifetime state folds all of an entity's
    tiles, a window state (:mod:`.windows`) those inside its window. Read as the one tile of the day
    before, it gives the features it covers as :func:`event_features` over those tiles does (same
    operations in the same order), without reading them.
    """
    day_column = pa.array(np.full(state.num_rows, query_day - 1, dtype=np.int32), pa.date32())
    state = state.set_column(state.schema.get_field_index(DAY_COLUMN), DAY_COLUMN, day_column)
    days = np.full(len(query_keys), query_day, dtype=np.int64)
    return event_features(layout, state, query_keys, days, features)


__all__ = ["RECORD_TS", "ViewValues", "event_features", "features_from_fold", "snapshot_features"]
