"""The dispatcher's fair choice (core/scheduling/service.py: choose), without a database:
fewest running first, then priority, then the tenant served least recently, then age;
never past a tenant's quota; never more than the free slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.scheduling.repository import Head
from core.scheduling.service import InFlight, Pick, choose, free_slots

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


def heads(tenant: str, n: int, *, quota: int = 10, priority: int = 0,
          served: datetime | None = None, start: int = 0) -> list[Head]:
    return [Head(f"{tenant}-{start + i}", tenant, priority, T0 + timedelta(seconds=start + i),
                 quota, served) for i in range(n)]


def picked(chosen: list[Pick]) -> list[str]:
    return [p.job_id for p in chosen]


def none_running() -> InFlight:
    return InFlight.of([])


def test_a_tenant_with_a_thousand_queued_jobs_does_not_starve_another() -> None:
    queue = heads("big", 1000) + heads("small", 1, start=5000)
    assert picked(choose(queue, "cpu", 2, none_running(), NOW)) == ["big-0", "small-5000"]


def test_fewest_running_first() -> None:
    inflight = InFlight.of([("a", "cpu", 2), ("b", "cpu", 0)])
    chosen = choose(heads("a", 3) + heads("b", 3, start=10), "cpu", 3, inflight, NOW)
    assert picked(chosen) == ["b-10", "b-11", "a-0"]


def test_priority_breaks_ties_then_least_recently_served_then_age() -> None:
    queue = (heads("a", 1, priority=5, served=NOW) + heads("b", 1, served=T0, start=1)
             + heads("c", 1, served=None, start=2))
    assert picked(choose(queue, "cpu", 3, none_running(), NOW)) == ["a-0", "c-2", "b-1"]


def test_a_tenants_quota_counts_what_it_already_runs() -> None:
    inflight = InFlight.of([("a", "cpu", 1)])
    chosen = choose(heads("a", 5, quota=2), "cpu", 4, inflight, NOW)
    assert picked(chosen) == ["a-0"]


def test_never_more_than_the_free_slots() -> None:
    assert len(choose(heads("a", 5) + heads("b", 5, start=9), "cpu", 3, none_running(),
                      NOW)) == 3
    assert choose(heads("a", 5), "cpu", 0, none_running(), NOW) == []


def test_free_slots_are_capacity_minus_jobs_in_flight() -> None:
    inflight = InFlight.of([("a", "cpu", 2), ("b", "cpu", 1), ("a", "gpu-80gb", 4)])
    assert inflight.by_tenant == {"a": 6, "b": 1}
    assert free_slots({"cpu": 5, "gpu-80gb": 4, "gpu-24gb": 1}, inflight) == {
        "cpu": 2, "gpu-24gb": 1}
