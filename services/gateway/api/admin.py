"""A tenant's administration: usage, alerts, limits and tenant settings.

Anyone with a key reads what concerns it (a user key: its own usage and limits); changing limits or tenant
settings needs an admin key of the tenant.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from pydantic import ValidationError

from moteur.gateway import validation as check
from moteur.gateway.admission import AdmissionControl
from moteur.gateway.api import convert
from moteur.gateway.api.rpc import Context, admin_only, authenticated
from moteur.gateway.auth import Authenticator
from moteur.gateway.limits import LimitScope, LimitSet
from moteur.gateway.response_cache import ResponseCache
from moteur.gateway.tenants import TenantSettings
from moteur.gateway.usage import GROUPS, TokenUsage, UsageLedger, usage_report
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from moteur.runtime.identity import Identity
from moteur.runtime.ids import is_valid_id
from moteur.runtime.timestamps import to_datetime
from moteur.v1 import gateway_pb2


class AdminRpcs:
    def __init__(self, auth: Authenticator, keys: ApiKeyStore, usage: UsageLedger, admission: AdmissionControl,
                 tenants: TenantSettings, cache: ResponseCache) -> None:
        self._cache = cache
        self.auth = auth
        self._keys = keys
        self._usage = usage
        self._admission = admission
        self._tenants = tenants

    @authenticated
    async def GetUsage(self, request: gateway_pb2.GetUsageRequest, identity: Identity,
                       context: Context) -> gateway_pb2.GetUsageResponse:
        user = check.acting_user(identity, request.user_id)  # a user key sees its own usage only
        if request.group_by not in GROUPS:
            raise InvalidArgument("group_by", f"one of {', '.join(repr(g) for g in GROUPS)}")
        now = datetime.now(UTC)
        start = to_datetime("start_time", request.start_time) if request.HasField("start_time") else now.replace(
            hour=0, minute=0, second=0, microsecond=0)
        end = to_datetime("end_time", request.end_time) if request.HasField("end_time") else now
        if end <= start:
            raise InvalidArgument("end_time", "must be after start_time")
        rows = await usage_report(self._usage, identity.tenant, user, start, end, request.group_by)
        total = sum((r.usage for r in rows), TokenUsage())
        return gateway_pb2.GetUsageResponse(
            rows=[gateway_pb2.UsageRow(group=r.group, requests=r.requests, usage=convert.usage(r.usage))
                  for r in rows],
            total=convert.usage(total),
        )

    @authenticated
    async def ListAlerts(self, request: gateway_pb2.ListAlertsRequest, identity: Identity,
                         context: Context) -> gateway_pb2.ListAlertsResponse:
        size = check.page_size(request.page_size, 20, 100)
        alerts, cursor = await self._admission.alerts.list(identity.tenant, size, check.page_token(request.page_token))
        return gateway_pb2.ListAlertsResponse(
            alerts=[gateway_pb2.Alert(
                id=a.id, scope=a.scope, limit=a.limit, threshold_percent=a.threshold_percent, used=a.used,
                limit_value=a.limit_value, created_at=convert.timestamp(a.created_at),
            ) for a in alerts],
            next_page_token=cursor,
        )

    @authenticated
    async def GetLimits(self, request: gateway_pb2.GetLimitsRequest, identity: Identity,
                        context: Context) -> gateway_pb2.Limits:
        scope = await self._limit_scope(identity, request.scope)
        limits = await self._admission.catalog.limits(scope, identity.tier)
        return gateway_pb2.Limits(scope=scope.name, tier=identity.tier, **limits.model_dump())

    @admin_only("changing limits")
    async def SetLimits(self, request: gateway_pb2.SetLimitsRequest, identity: Identity,
                        context: Context) -> gateway_pb2.Limits:
        scope = await self._limit_scope(identity, request.limits.scope)
        fields = {name: getattr(request.limits, name) for name in LimitSet.model_fields}
        try:
            limits = LimitSet(**fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise InvalidArgument(f"limits.{error['loc'][0]}", error["msg"].lower()) from None
        await self._admission.catalog.override(scope, limits)
        return gateway_pb2.Limits(scope=scope.name, tier=identity.tier, **limits.model_dump())

    @authenticated
    async def GetTenantSettings(self, request: gateway_pb2.GetTenantSettingsRequest, identity: Identity,
                                context: Context) -> gateway_pb2.TenantSettings:
        return convert.tenant_settings(await self._tenants.get(identity.tenant))

    @admin_only("changing tenant settings")
    async def SetTenantSettings(self, request: gateway_pb2.TenantSettings, identity: Identity,
                                context: Context) -> gateway_pb2.TenantSettings:
        fields = ("memory_recall", "fact_extraction", "message_memory")
        was = await self._tenants.get(identity.tenant)
        cache = convert.cache_policy(request.response_cache) if request.HasField("response_cache") else None
        if cache is not None:
            turned_on = cache.enabled and not was.response_cache.enabled
            cache = replace(cache, since_ms=int(time.time() * 1000) if turned_on else was.response_cache.since_ms)
        switches = await self._tenants.set(
            identity.tenant, cache, **{f: getattr(request, f) if request.HasField(f) else None for f in fields}
        )
        if was.response_cache.enabled and not switches.response_cache.enabled:
            # Unreachable already (the digest holds when the cache was turned on): this frees the space.
            await self._cache.clear(identity)
        return convert.tenant_settings(switches)

    async def _limit_scope(self, identity: Identity, name: str) -> LimitScope:
        """A scope of the caller's own tenant: "tenant", "key:<id>" or "user:<id>". A user key (not an admin)
        names only its own key or user; another user's or key's limits are not its to read."""
        if name in ("", "tenant"):
            return LimitScope(identity.tenant, "tenant", identity.tenant)
        kind, _, value = name.partition(":")
        if kind == "key" and is_valid_id(value):
            if identity.user and not identity.admin and value != identity.key_id:
                raise PermissionDenied("a user key reads its own limits only: scope \"key:<its own id>\"")
            if not await self._keys.exists(identity.tenant, value):
                raise NotFound(f"key {value} not found")
            return LimitScope(identity.tenant, "key", value)
        if kind == "user" and value:
            if len(value) > check.MAX_USER_ID_CHARS or not value.isascii() or not value.isprintable():
                raise InvalidArgument("scope", f"a user id is at most {check.MAX_USER_ID_CHARS} printable ASCII "
                                               "characters")
            if identity.user and not identity.admin and value != identity.user:
                raise PermissionDenied("a user key reads its own limits only: scope \"user:<its own user>\"")
            return LimitScope(identity.tenant, "user", value)
        raise InvalidArgument("scope", 'one of "tenant", "key:<key id>" (a 26-character id from ListKeys) or '
                                       '"user:<user id>"')
