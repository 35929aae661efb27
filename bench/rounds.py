"""Alternated rounds: the fanout's headline comparisons (transport-cc's cost, tern against the C ceiling) measured as
several rounds in which each forwarder takes a turn on a fresh process, the order changing from round to round. A
drift of the machine (other work, the host's load) then weighs on the turns of one round alike, so each round gives
its own ratio; the figures are the median of those and their spread, with an interval of the median that says
whether a target is judged at all: on a shared VM one round's cost moves by 0.2."""
from __future__ import annotations

import math
import statistics

INTERVAL_CONFIDENCE = 0.95


def turn_order(names: tuple[str, ...], index: int) -> tuple[str, ...]:
    """The turns of round `index`: `names` rotated by it, so each forwarder takes each place in turn."""
    k = index % len(names)
    return names[k:] + names[:k]


def paired_order(pair: tuple[str, str], other: str, index: int) -> tuple[str, str, str]:
    """The turns of round `index` when a round's main figure compares the two forwarders of `pair`: they are always
    adjacent (a rotation of three puts `other` between them in one round of three, twice as far apart in time, so
    the drift the rounds are meant to cancel weighs more on that round), which goes first alternates from round to
    round, and `other` comes after them in rounds 0 and 1 of every four and before them in rounds 2 and 3 (so it is
    next to a given one of the pair in half the rounds: ratios against it compare turns a little further apart)."""
    first, second = pair if index % 2 == 0 else pair[::-1]
    return (first, second, other) if index % 4 < 2 else (other, first, second)


def spread(values: list[float]) -> dict:
    """The median of `values`, their range, each of them (in round order) and the median's interval."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values,
            "interval": interval([values])}


def interval(groups: list[list[float]]) -> list[float] | None:
    """An interval holding the mean of the groups' medians (of one group: its median) with INTERVAL_CONFIDENCE: the
    mean of the ends of each group's median interval, each at INTERVAL_CONFIDENCE ** (1 / len(groups)), so that
    all hold together (the groups are measured apart). None when a group has too few values to reach it."""
    parts = [median_interval(group, INTERVAL_CONFIDENCE ** (1 / len(groups))) for group in groups]
    if any(part is None for part in parts):
        return None
    return [statistics.mean(part[0] for part in parts), statistics.mean(part[1] for part in parts)]


def median_interval(values: list[float], confidence: float) -> list[float] | None:
    """The distribution-free interval of the median of `values`: their k-th smallest and k-th largest, for the
    largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), reaches `confidence`. None when the whole range does
    not (for 95 %: fewer than 6 values); up to 8 values the range itself is the interval."""
    ordered, n = sorted(values), len(values)
    found, below = None, 0.0
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2 ** n
        if 1 - 2 * below < confidence:
            break
        found = [ordered[k - 1], ordered[n - k]]
    return found


def compare(rounds: list[dict[str, float]], tern: str, no_twcc: str, ceiling: str) -> dict:
    """From each round's forwarded packets per CPU-second by forwarder (a round missing one of the three is left
    out): each forwarder's spread over the rounds, and per round `twcc_cost` (1 - tern / no_twcc),
    `ratio_c_ceiling` (tern / ceiling) and `ratio_c_ceiling_no_twcc` (no_twcc / ceiling), each as a spread; None
    for all when no round is whole."""
    whole = [r for r in rounds if all(r.get(name) for name in (tern, no_twcc, ceiling))]
    if not whole:
        return {"rounds_whole": 0, "pkt_per_cpu_s": None, "twcc_cost": None, "ratio_c_ceiling": None,
                "ratio_c_ceiling_no_twcc": None}
    return {
        "rounds_whole": len(whole),
        "pkt_per_cpu_s": {name: spread([r[name] for r in whole]) for name in (tern, no_twcc, ceiling)},
        "twcc_cost": spread([1 - r[tern] / r[no_twcc] for r in whole]),
        "ratio_c_ceiling": spread([r[tern] / r[ceiling] for r in whole]),
        "ratio_c_ceiling_no_twcc": spread([r[no_twcc] / r[ceiling] for r in whole]),
    }


def both_orders(costs: list[tuple[str, float | None]]) -> dict | None:
    """transport-cc's cost from measurements taken in two orders (bench/run.py twcc_turns), each given as (what went
    first, its cost; None: not counted): the spread of every counted cost, with `median` replaced by the mean of the
    two orders' medians (`by_first`), so that an advantage of going first or second cancels. None unless both
    orders have counted costs."""
    by_first: dict[str, list[float]] = {}
    for first, cost in costs:
        by_first.setdefault(first, [])
        if cost is not None:
            by_first[first].append(cost)
    counted = [cost for _, cost in costs if cost is not None]
    if len(by_first) != 2 or not all(by_first.values()):
        return None
    return {**spread(counted), "median": statistics.mean(statistics.median(c) for c in by_first.values()),
            "by_first": {first: statistics.median(c) for first, c in by_first.items()},
            "interval": interval(list(by_first.values()))}


def verdict(figure: dict, target: float, at_most: bool, unit: str = "rounds") -> str:
    """How many values of `figure` (a spread: one per round, or per window) meet `target` (<= it when `at_most`,
    else >=), and whether the median does beyond doubt: met or missed when its interval lies on one side of the
    target, not judged when it straddles it."""
    met = sum(value <= target if at_most else value >= target for value in figure["each"])
    count = (f"met in every {unit[:-1]}" if met == len(figure["each"]) else f"missed in every {unit[:-1]}"
             if met == 0 else f"met in {met} of {len(figure['each'])} {unit}")
    low, high = figure["interval"] or (None, None)
    if low is None:
        return f"{count}; too few to judge the median"
    judged = ("met" if (high <= target if at_most else low >= target) else
              "missed" if (low > target if at_most else high < target) else "not judged")
    return f"{count}; the median's {INTERVAL_CONFIDENCE * 100:g} % interval {low:.3f} to {high:.3f}: {judged}"
