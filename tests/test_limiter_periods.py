"""The limiter's period math: which UTC day and month a quota counts in, when each ends (the TTL of its Redis
counter, hence its reset), and where a named period starts and ends (the ledger a lost counter is rebuilt from).
Pure functions, no Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from moteur.gateway import limiter
from moteur.gateway.limiter import QUOTA_NAMES, Budget, _periods_at, _tightest, period_bounds
from moteur.gateway.limits import LimitSet


def _second(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@pytest.mark.parametrize(("now", "day_ttl", "month_ttl", "day", "month"), [
    ("2026-11-24T13:00:00", 11 * 3600, 6 * 86400 + 11 * 3600, "2026-11-24", "2026-11"),
    ("2026-11-24T00:00:00", 86400, 7 * 86400, "2026-11-24", "2026-11"),  # a new day counts a whole day
    ("2026-11-24T23:59:59", 1, 6 * 86400 + 1, "2026-11-24", "2026-11"),  # its last second
    ("2026-11-30T23:59:59", 1, 1, "2026-11-30", "2026-11"),  # the month's last second (30 days)
    ("2026-12-01T00:00:00", 86400, 31 * 86400, "2026-12-01", "2026-12"),
    ("2026-12-31T23:00:00", 3600, 3600, "2026-12-31", "2026-12"),  # the year ends with the month
    ("2027-02-28T12:00:00", 12 * 3600, 12 * 3600, "2027-02-28", "2027-02"),  # not a leap year
    ("2028-02-28T12:00:00", 12 * 3600, 86400 + 12 * 3600, "2028-02-28", "2028-02"),  # a leap year
])
def test_the_day_and_month_of_an_instant_and_the_seconds_to_their_ends(
    now: str, day_ttl: int, month_ttl: int, day: str, month: str
) -> None:
    assert tuple(_periods_at(_second(now))) == (day_ttl, month_ttl, day, month)


def test_daily_quotas_count_in_the_day_and_the_others_in_the_month() -> None:
    periods = _periods_at(_second("2026-11-24T13:00:00"))
    assert {name: periods.of(name) for name in QUOTA_NAMES} == {
        "tokens_per_day": "2026-11-24", "cost_micro_usd_per_day": "2026-11-24",
        "tokens_per_month": "2026-11", "cost_micro_usd_per_month": "2026-11",
    }


@pytest.mark.parametrize(("period", "start", "end"), [
    ("2026-11-24", "2026-11-24", "2026-11-25"),
    ("2026-11-30", "2026-11-30", "2026-12-01"),
    ("2026-12-31", "2026-12-31", "2027-01-01"),
    ("2026-01", "2026-01-01", "2026-02-01"),  # 31 days: the 32 days added land in February, day 1 of it
    ("2026-11", "2026-11-01", "2026-12-01"),
    ("2026-12", "2026-12-01", "2027-01-01"),
    ("2027-02", "2027-02-01", "2027-03-01"),
    ("2028-02", "2028-02-01", "2028-03-01"),
])
def test_a_named_period_starts_and_ends_at_utc_midnight(period: str, start: str, end: str) -> None:
    assert period_bounds(period) == (datetime.fromisoformat(start).replace(tzinfo=UTC),
                                     datetime.fromisoformat(end).replace(tzinfo=UTC))


def test_every_instant_lies_in_its_periods_and_their_ends_are_the_counters_ttls() -> None:
    # Every 7 h 13 min over two years (a leap day included): the periods named for an instant contain it, and
    # a counter written then expires exactly when its period ends, so the next period starts from zero.
    second = _second("2027-06-01T00:00:00")
    last = _second("2029-06-01T00:00:00")
    while second < last:
        periods = _periods_at(second)
        now = datetime.fromtimestamp(second, UTC)
        for name, ttl in ((periods.day, periods.day_ttl), (periods.month, periods.month_ttl)):
            start, end = period_bounds(name)
            assert start <= now < end, (name, now)
            assert end == now + timedelta(seconds=ttl), (name, now)
        second += 7 * 3600 + 13 * 60


def test_the_periods_follow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for now, day in (("2026-11-24T23:59:59", "2026-11-24"), ("2026-11-25T00:00:00", "2026-11-25")):
        monkeypatch.setattr(limiter.time, "time", lambda now=now: _second(now) + 0.5)
        assert limiter._periods().day == day


def test_the_budget_tells_the_tightest_per_minute_limits_and_the_seconds_to_their_reset() -> None:
    limits = [LimitSet(requests_per_minute=60), LimitSet(requests_per_minute=20, tokens_per_minute=0), LimitSet()]
    assert (_tightest(limits, "requests_per_minute"), _tightest(limits, "tokens_per_minute")) == (20, -1)
    budget = Budget(limit_requests=20, remaining_requests=7, reset_requests_ms=1500)
    assert budget.as_metadata() == [("x-ratelimit-limit-requests", "20"), ("x-ratelimit-remaining-requests", "7"),
                                    ("x-ratelimit-reset-requests", "1.500s")]  # no token limit: not told
    assert Budget().as_metadata() == []
