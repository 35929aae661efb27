"""Alternated rounds: the fanout's headline comparisons (transport-cc's cost, tern against the C ceiling) measured as
several rounds in which each forwarder takes a turn on a fresh process, the order changing from round to round. A
drift of the machine (other work, the host's load) then weighs on the turns of one round alike, so each round gives
its own ratio; the figures are the median of those and their spread, which says whether a target is judged."""
from __future__ import annotations

import statistics


def turn_order(names: tuple[str, ...], index: int) -> tuple[str, ...]:
    """The turns of round `index`: `names` rotated by it, so each forwarder takes each place in turn."""
    k = index % len(names)
    return names[k:] + names[:k]


def paired_order(pair: tuple[str, str], other: str, index: int) -> tuple[str, str, str]:
    """The turns of round `index` when a round's main figure compares the two forwarders of `pair`: they are always
    adjacent (a rotation of three puts `other` between them in one round of three, twice as far apart in time, so
    the drift the rounds are meant to cancel weighs more on that round), which goes first alternates from round to
    round, and `other` comes after them in rounds 0 and 1 of every four and before them in rounds 2 and 3."""
    first, second = pair if index % 2 == 0 else pair[::-1]
    return (first, second, other) if index % 4 < 2 else (other, first, second)


def spread(values: list[float]) -> dict:
    """The median of `values`, their range, and each of them (in round order)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values}


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
            "by_first": {first: statistics.median(c) for first, c in by_first.items()}}


def verdict(figure: dict, target: float, at_most: bool, unit: str = "rounds") -> str:
    """Whether each value of `figure` (a spread: one per round, or per window) meets `target` (<= it when
    `at_most`, else >=)."""
    met = sum(value <= target if at_most else value >= target for value in figure["each"])
    if met == len(figure["each"]):
        return f"met in every {unit[:-1]}"
    return f"missed in every {unit[:-1]}" if met == 0 else f"met in {met} of {len(figure['each'])} {unit}"
