"""Latency figures of one benchmark run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    name: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_ms: float = 0.0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @classmethod
    def of(cls, name: str, concurrency: int, latencies: list[float], seconds: float) -> Figures:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return cls(name, concurrency, len(latencies), seconds, cuts[49] * 1000, cuts[98] * 1000,
                   statistics.fmean(latencies) * 1000)
