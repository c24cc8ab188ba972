"""Exact float sums for feature aggregates: per-group sums as double-doubles and their arithmetic.

A sum is kept as two float64 ``hi + lo`` with ``hi = round(hi + lo)``: 106 bits of significand, enough
to hold real-world sums (amounts with a few decimals, totals far below 2**53 of their smallest unit)
exactly, so a window's sum computed as the difference of two running sums is the correctly rounded
sum of its values, the same as ``math.fsum`` over the raw records, whatever the order of the records.
"""

from __future__ import annotations

import math

import numpy as np


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s + e == a + b`` exactly with ``s = fl(a + b)`` (Knuth)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _fast_two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    return s, b - (s - a)


def dd_add(
    ahi: np.ndarray, alo: np.ndarray, bhi: np.ndarray, blo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Double-double addition (the accurate variant: both low parts carried with their errors)."""
    with np.errstate(invalid="ignore", over="ignore"):
        s, e = two_sum(ahi, bhi)
        t, f = two_sum(alo, blo)
        e = e + t
        s, e = _fast_two_sum(s, e)
        e = e + f
        s, e = _fast_two_sum(s, e)
    return _clean(s, e)


def dd_sub(
    ahi: np.ndarray, alo: np.ndarray, bhi: np.ndarray, blo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return dd_add(ahi, alo, -bhi, -blo)


def _clean(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Infinite or NaN sums keep their ``hi``; ``lo`` is then 0 (no NaN from inf - inf)."""
    bad = ~np.isfinite(hi)
    if np.any(bad):
        lo = np.where(bad, 0.0, lo)
    return hi, lo


def group_sums(values: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact sums of consecutive groups of ``values`` (``sizes`` elements each) as ``(hi, lo)``.

    ``hi`` is the correctly rounded sum (``math.fsum``), ``lo`` the correctly rounded remainder.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    hi = np.zeros(len(sizes), dtype=np.float64)
    lo = np.zeros(len(sizes), dtype=np.float64)
    if not len(sizes):
        return hi, lo
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    single = sizes == 1
    hi[single] = values[starts[single]]
    for g in np.flatnonzero(sizes > 1):
        chunk = values[starts[g] : starts[g] + sizes[g]].tolist()
        total = math.fsum(chunk)
        hi[g] = total
        if math.isfinite(total):
            chunk.append(-total)
            lo[g] = math.fsum(chunk)
    return hi, lo


def segmented_prefix(
    hi: np.ndarray, lo: np.ndarray, segment_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Running double-double sums restarting at each segment: ``P[i] = x[start(i)] + ... + x[i]``.

    ``segment_start[i]`` is the index of the first element of i's segment (elements of a segment are
    consecutive). Each step adds one element to every segment at once, so the work is vectorised
    over segments and the loop runs as many times as the longest segment is long.
    """
    n = len(hi)
    out_hi, out_lo = hi.astype(np.float64, copy=True), lo.astype(np.float64, copy=True)
    if n == 0:
        return out_hi, out_lo
    position = np.arange(n) - segment_start
    order = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[order], np.arange(int(position.max()) + 2))
    for j in range(1, len(bounds) - 1):
        idx = order[bounds[j] : bounds[j + 1]]
        out_hi[idx], out_lo[idx] = dd_add(out_hi[idx - 1], out_lo[idx - 1], hi[idx], lo[idx])
    return out_hi, out_lo


def to_float(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The double nearest a double-double (``hi`` itself once normalised)."""
    with np.errstate(invalid="ignore"):
        return hi + lo
