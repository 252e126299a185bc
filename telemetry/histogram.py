"""Mergeable log-scale histograms with fixed bins, for percentiles across any set of buckets.

Bin `p<k>` holds positive values in (γ^(k-1), γ^k], `n<k>` the negatives mirrored, `z` the
values within 1e-9 of zero; γ = 1.02. A histogram is a sparse {bin: count} dict, so two merge
by adding counts. A percentile read from the merged bins is the bin's midpoint
2γ^k / (1 + γ): within 1 % of a value in that bin (relative error ≤ (γ - 1) / (γ + 1)).
Pure Python; imports nothing of ours.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

GAMMA = 1.02
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
_LOG_GAMMA = math.log(GAMMA)
_ZERO = 1e-9


def bin_of(value: float) -> str:
    magnitude = abs(value)
    if magnitude < _ZERO:
        return "z"
    k = math.ceil(math.log(magnitude) / _LOG_GAMMA - 1e-12)
    return f"{'p' if value > 0 else 'n'}{k}"


def representative(bin_name: str) -> float:
    if bin_name == "z":
        return 0.0
    k = int(bin_name[1:])
    middle = 2 * GAMMA**k / (1 + GAMMA)
    return middle if bin_name[0] == "p" else -middle


@functools.cache  # a few hundred distinct bins in practice; sorting merged histograms calls this a lot
def bin_order(bin_name: str) -> tuple[int, int]:
    """Sort key of bins: from the most negative values through zero to the largest."""
    if bin_name == "z":
        return (1, 0)
    k = int(bin_name[1:])
    return (2, k) if bin_name[0] == "p" else (0, -k)


def add(histogram: dict[str, int], value: float, count: int = 1) -> None:
    name = bin_of(value)
    histogram[name] = histogram.get(name, 0) + count


def merge(histograms: Iterable[Mapping[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for histogram in histograms:
        for name, count in histogram.items():
            merged[name] = merged.get(name, 0) + int(count)
    return merged


def merge_into(target: dict[str, int], histogram: Mapping[str, int]) -> dict[str, int]:
    """Add a stored histogram's counts (ints, as written) to `target` in place: reads merge
    hundreds of buckets per window, so no copy and no conversion per bin."""
    get = target.get
    for name, count in histogram.items():
        target[name] = get(name, 0) + count
    return target


def percentile(histogram: Mapping[str, int], q: float) -> float | None:
    """The q-quantile (0 < q ≤ 1) by the nearest-rank method, or None for an empty histogram."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for name in sorted(histogram, key=bin_order):
        seen += histogram[name]
        if seen >= rank:
            return representative(name)
    return representative(max(histogram, key=bin_order))  # not reached: counts add up to total
