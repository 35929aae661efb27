"""A bottleneck link simulated in Python, for the bandwidth estimator's tests (no real network).

The sender paces fixed-size packets at min(demand, estimate) (what an allocator fills; the demand may change with
time, as an allocator's choice of layer does), or at a probe's target while a probe cluster runs; the link is a
drop-tail FIFO of `queue_bytes` drained at `capacity(t)`, then a fixed propagation delay and optional random loss; the
receiver reports every `feedback_us` all packets up to the last one arrived (TWCC's behaviour), and that report
reaches the sender one propagation delay later."""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from engine.harness import BweHarness

PACKET = 1200                 # bytes: a full video packet
REMOTE_CLOCK_OFFSET = 7_300_000_000  # the receiver's clock has its own origin (µs)


@dataclass
class Link:
    capacity: Callable[[int], float]      # bit/s at time t (µs)
    queue_bytes: int = 30_000             # drop-tail limit (a tbf-like shaper's queue)
    delay_us: int = 25_000                # one-way propagation
    loss: float = 0.0                     # random loss after the queue
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass
class Trace:
    times: list[int] = field(default_factory=list)        # feedback arrival times (µs)
    estimates: list[int] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    probes: list[tuple[int, int, str, int]] = field(default_factory=list)  # (start, target, status, result)

    def estimate_at(self, t: int) -> int:
        """The estimate as of time t (the last feedback at or before it)."""
        value = self.estimates[0]
        for when, estimate in zip(self.times, self.estimates):
            if when > t:
                break
            value = estimate
        return value

    def window(self, start: int, end: int) -> list[int]:
        return [e for when, e in zip(self.times, self.estimates) if start <= when <= end]


def run(bwe: BweHarness, link: Link, duration_us: int, demand_bps: float | Callable[[int], float], *,
        probe_every_us: int = 0, probe_packets: int = 15, feedback_us: int = 100_000,
        observe: Callable[[int, BweHarness], None] | None = None) -> Trace:
    """Drives `bwe` for `duration_us` of simulated time over `link`; returns what the estimate did."""
    trace = Trace()
    t = seq = link_free = 0
    end = duration_us
    pending: deque[tuple[int, int, int, int | None, int]] = deque()  # (seq, send, size, local arrival, cluster)
    next_feedback = feedback_us
    next_probe = probe_every_us if probe_every_us else end + 1
    cluster = -1
    cluster_left = 0
    cluster_target = 0.0
    cluster_id = 0
    started: list[tuple[int, int, int]] = []
    while t < end:
        demand = demand_bps(t) if callable(demand_bps) else demand_bps
        if t >= next_feedback:
            report_at = next_feedback
            last = -1
            for i, p in enumerate(pending):
                if p[3] is not None and p[3] <= report_at:
                    last = i
            report = [pending.popleft() for _ in range(last + 1)]
            now = report_at + link.delay_us
            bwe.feedback([(s, send, size, None if arrival is None else arrival + REMOTE_CLOCK_OFFSET, c)
                          for s, send, size, arrival, c in report], now)
            trace.times.append(now)
            trace.estimates.append(bwe.estimate_bps)
            trace.states.append(bwe.state)
            if observe is not None:
                observe(now, bwe)
            next_feedback += feedback_us
            continue
        if cluster_left == 0 and t >= next_probe:
            next_probe = t + probe_every_us
            if not bwe.congested(t) and bwe.estimate_bps < demand:
                cluster_id += 1
                cluster, cluster_left = cluster_id, probe_packets
                cluster_target = 2.0 * bwe.estimate_bps
                bwe.probe_start(cluster, int(cluster_target), t)
                started.append((cluster, t, int(cluster_target)))
        if cluster_left:
            rate, tag = cluster_target, cluster
            cluster_left -= 1
        else:
            rate, tag = min(demand, bwe.estimate_bps), -1
        capacity = link.capacity(t)
        queued = max(0, link_free - t) * capacity / 8e6
        arrival: int | None = None
        if queued + PACKET <= link.queue_bytes:
            link_free = max(link_free, t) + int(PACKET * 8e6 / capacity)
            if link.rng.random() >= link.loss:
                arrival = link_free + link.delay_us
        pending.append((seq, t, PACKET, arrival, tag))
        seq += 1
        t += max(1, int(PACKET * 8e6 / rate))
    for cluster, when, target in started:
        trace.probes.append((when, target, bwe.probe_status(cluster, end), bwe.probe_result_bps(cluster)))
    return trace
