"""Quota alerts: crossing 80 % and 100 % of a quota records one event per threshold and period.

"Once" is enforced by MongoDB, not by memory: the event's ``_id`` names the tenant, scope, limit,
period and threshold, so every replica may try and only the first insert lands. A configured webhook
receives the events that landed.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from moteur.gateway.limiter import QuotaUse
from moteur.gateway.metrics import QUOTA_ALERTS
from moteur.runtime.ids import new_id

log = structlog.get_logger("moteur.gateway.alerts")
THRESHOLDS = (80, 100)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    id: str
    tenant: str
    scope: str
    limit: str
    threshold_percent: int
    used: int
    limit_value: int
    period: str
    created_at: datetime


class AlertLog:
    def __init__(self, db: AsyncDatabase, webhook_url: str = "") -> None:
        self._alerts = db["alerts"]
        self._webhook_url = webhook_url
        self._deliveries: set[asyncio.Task[None]] = set()

    async def ensure_indexes(self) -> None:
        await self._alerts.create_index([("tenant", 1), ("created_at", DESCENDING)])
        await self._alerts.create_index("dedup", unique=True)

    async def record(self, uses: list[QuotaUse], thresholds: tuple[int, ...] = THRESHOLDS) -> list[AlertEvent]:
        """Record the thresholds these usages have reached; returns the events that are new."""
        events = []
        for use in uses:
            for threshold in thresholds:
                if use.used * 100 < threshold * use.limit_value:
                    continue
                event = AlertEvent(new_id(), use.scope.tenant, use.scope.name, use.limit, threshold, use.used,
                                   use.limit_value, use.period, datetime.now(UTC))
                dedup = "\x1f".join((event.tenant, event.scope, event.limit, event.period, str(threshold)))
                try:
                    await self._alerts.insert_one({"_id": event.id, "dedup": dedup, **_doc(event)})
                except DuplicateKeyError:
                    continue
                QUOTA_ALERTS.labels(use.limit, str(threshold)).inc()
                log.warning("quota.alert", tenant=event.tenant, scope=event.scope, limit=event.limit,
                            threshold=threshold, used=event.used, limit_value=event.limit_value)
                events.append(event)
                self._deliver(event)
        return events

    async def list(self, tenant: str, page_size: int, before_id: str = "") -> tuple[list[AlertEvent], str]:
        query: dict[str, Any] = {"tenant": tenant}
        if before_id:
            query["_id"] = {"$lt": before_id}
        docs = await self._alerts.find(query).sort("_id", -1).limit(page_size + 1).to_list()
        page = [AlertEvent(d["_id"], d["tenant"], d["scope"], d["limit"], d["threshold_percent"], d["used"],
                           d["limit_value"], d["period"], d["created_at"]) for d in docs[:page_size]]
        return page, (page[-1].id if len(docs) > page_size else "")

    def _deliver(self, event: AlertEvent) -> None:
        if not self._webhook_url:
            return
        task = asyncio.create_task(asyncio.to_thread(self._post, event))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def _post(self, event: AlertEvent) -> None:
        body = json.dumps({**_doc(event), "id": event.id, "created_at": event.created_at.isoformat()}).encode()
        request = urllib.request.Request(self._webhook_url, body, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except OSError as exc:  # the event is recorded in MongoDB either way
            log.warning("quota.alert_webhook_failed", url=self._webhook_url, error=str(exc))


def _doc(event: AlertEvent) -> dict[str, Any]:
    return {"tenant": event.tenant, "scope": event.scope, "limit": event.limit,
            "threshold_percent": event.threshold_percent, "used": event.used, "limit_value": event.limit_value,
            "period": event.period, "created_at": event.created_at}
