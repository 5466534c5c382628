"""Dispatch pools: one admission queue per kind of request, sized by the models behind it.

The router's registry says how many calls the models serving each request type (or a hinted model) can
take at once (``ListModelsResponse.dispatch_capacity``). A gateway replica dispatches its share of that —
``ceil(capacity / queue_replicas)``, capped by ``queue_capacity`` — so that turns wait here, in priority
and fairness order, rather than in the router's per-deployment slots, which are first come first served.

The registry is read at start and again whenever an answer from the router carries a revision other than
the one known (the router sends it in trailing metadata): no polling. Until the router has answered once,
every pool has ``queue_capacity``.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import structlog

from moteur.gateway.metrics import DISPATCH_CAPACITY
from moteur.gateway.queue import AdmissionQueue
from moteur.gateway.settings import GatewaySettings
from moteur.runtime.identity import SCOPE_MODELS, Identity
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

REGISTRY_READER = Identity("", "service:gateway", "", scopes=frozenset({SCOPE_MODELS}))
log = structlog.get_logger("moteur.gateway.dispatch")

_TYPE_NAMES = {value: name.removeprefix("REQUEST_TYPE_").lower()
               for name, value in common_pb2.RequestType.items() if value}


class DispatchPools:
    def __init__(self, settings: GatewaySettings, router: router_pb2_grpc.RouterStub,
                 issuer: MeshTokenIssuer) -> None:
        self._issuer = issuer
        self._settings = settings
        self._router = router
        self._queues: dict[str, AdmissionQueue] = {}
        self._capacity: dict[str, int] = {}
        self.revision = ""
        self._refreshing: asyncio.Task[None] | None = None
        self._draining = False

    def key(self, request_type: int, model_hint: str) -> str:
        """The pool of a turn: its hinted model's, else its request type's, else the pool of unclassified turns."""
        if model_hint and f"model:{model_hint}" in self._capacity:
            return f"model:{model_hint}"
        name = _TYPE_NAMES.get(request_type, "any")
        return name if name in self._capacity or not self._capacity else "any"

    def queue(self, key: str) -> AdmissionQueue:
        queue = self._queues.get(key)
        if queue is None:
            capacity = self._share(key)
            queue = self._queues[key] = AdmissionQueue(
                capacity, self._settings.queue_max_queued, self._settings.queue_max_queued_per_tenant,
                self._reserve(capacity), self._settings.queue_max_wait_seconds,
            )
            if self._draining:
                queue.drain()
            DISPATCH_CAPACITY.labels(key).set(capacity)
        return queue

    def observe(self, revision: str) -> None:
        """An answer from the router named its registry revision; re-read the registry if it changed."""
        if revision and revision != self.revision and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        try:
            # The gateway's own read of the registry, for no tenant: it signs a token that may only use models.
            identity = self._issuer.sign(REGISTRY_READER, audience={"router"}, seconds=10)
            models = await self._router.ListModels(router_pb2.ListModelsRequest(), metadata=identity.as_metadata(),
                                                   timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.warning("dispatch.registry_unreadable", code=exc.code().name, kept_revision=self.revision)
            return
        self._capacity = dict(models.dispatch_capacity)
        self.revision = models.revision
        for key, queue in self._queues.items():
            capacity = self._share(key)
            queue.resize(capacity, self._reserve(capacity))
            DISPATCH_CAPACITY.labels(key).set(capacity)
        log.info("dispatch.capacity", revision=self.revision, pools=self._capacity)

    def drain(self) -> int:
        self._draining = True
        return sum(queue.drain() for queue in self._queues.values())

    def _share(self, key: str) -> int:
        registry = self._capacity.get(key)
        if registry is None:
            return self._settings.queue_capacity
        return max(1, min(self._settings.queue_capacity, math.ceil(registry / self._settings.queue_replicas)))

    def _reserve(self, capacity: int) -> int:
        return min(math.floor(capacity * self._settings.queue_critical_share), capacity - 1)
