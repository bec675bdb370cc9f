"""How the audit head is used: a measurement kept by the journal (``AuditedStore.append_stats``),
printed by ``rsign serve`` at shutdown and read back by the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field

# The line ``rsign serve`` prints on stderr at shutdown, followed by ``AppendStats.summary()`` as JSON.
APPEND_STATS_PREFIX = "audit head: "


@dataclass
class AppendStats:
    """How the audit head is used: groups committed, records and callers in them, and how long each
    group held the head (from locking it to the end of its commit). The head is the one point every
    replica's appends pass through, so its hold time bounds the cluster's append rate:
    ``1 / hold`` groups per second whatever the number of replicas (README, Benchmarks)."""

    groups: int = 0
    members: int = 0
    records: int = 0
    hold_total: float = 0.0
    hold_max: float = 0.0
    # The last holds (seconds), for percentiles; bounded so that a long run costs no memory.
    recent: list[float] = field(default_factory=list)

    RECENT = 10_000

    def add(self, members: int, records: int, hold: float) -> None:
        self.groups += 1
        self.members += members
        self.records += records
        self.hold_total += hold
        self.hold_max = max(self.hold_max, hold)
        if len(self.recent) >= self.RECENT:
            del self.recent[: self.RECENT // 2]
        self.recent.append(hold)

    def summary(self) -> dict[str, float]:
        """Milliseconds, rounded; a snapshot for logs and benchmarks."""
        ordered = sorted(self.recent)

        def pct(q: float) -> float:
            return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0

        n = max(1, self.groups)
        return {
            "groups": self.groups,
            "records": self.records,
            "callers_per_group": round(self.members / n, 2),
            "head_hold_ms_mean": round(1000 * self.hold_total / n, 3),
            "head_hold_ms_p50": pct(0.5),
            "head_hold_ms_p99": pct(0.99),
            "head_hold_ms_max": round(1000 * self.hold_max, 3),
        }
