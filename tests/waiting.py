"""Waiting on an observable signal instead of sleeping: poll a condition until it holds or a deadline passes,
and read the signals the services expose (a Prometheus sample, a structured log event).

A test that asserts something is absent waits first for the signal that the work which could have produced it
is done (the outbox drained, a reload refused), never for a fixed time: a slow machine then makes it slower,
not wrong."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from moteur.devstack.stack import LocalStack

T = TypeVar("T")


async def eventually(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.1,
                     message: str = "the condition did not hold in time") -> T:
    """The first truthy value of ``predicate`` (sync or async), polled every ``interval`` seconds; fails the
    test with ``message`` if none comes within ``timeout`` seconds (the predicate is tried once more at the
    deadline, so a slow poll never loses the last chance)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # T, once awaited
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        await asyncio.sleep(interval)


def _samples(metrics_port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return [(s.name, s.labels, float(s.value)) for family in text_string_to_metric_families(text)
            for s in family.samples]


def metric(stack: LocalStack, service: str, name: str, **labels: str) -> float:
    """One sample of a service's /metrics (``name`` as exposed, with a counter's ``_total``), 0 when absent."""
    return next((value for sample, these, value in _samples(stack.ports[f"{service}-metrics"])
                 if sample == name and these == labels), 0.0)


def metric_sum(metrics_port: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` carrying ``labels`` (among others) at one /metrics port: a replica
    started apart from the stack has a port of its own."""
    return sum(value for sample, these, value in _samples(metrics_port)
               if sample == name and labels.items() <= these.items())


def logged(stack: LocalStack, service: str, event: str) -> list[dict[str, object]]:
    """The structured (JSON) log entries of ``event`` a service of the stack wrote so far, oldest first."""
    entries = []
    for line in (stack.data_dir / "logs" / f"{service}.log").read_text().splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            entries.append(entry)
    return entries
