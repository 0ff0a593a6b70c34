"""Adapter affinity over engine replicas (rendezvous hashing)."""

from __future__ import annotations

from collections import Counter

from core.serving.engines import by_affinity

REPLICAS = [f"http://engine-{i}:8000" for i in range(4)]
ADAPTERS = [f"adpv-{i:04d}" for i in range(2000)]


def test_each_adapter_has_one_home_whatever_the_listing_order() -> None:
    for adapter in ADAPTERS[:50]:
        order = by_affinity(adapter, REPLICAS)
        assert sorted(order) == sorted(REPLICAS)
        assert by_affinity(adapter, list(reversed(REPLICAS))) == order


def test_homes_spread_evenly() -> None:
    homes = Counter(by_affinity(a, REPLICAS)[0] for a in ADAPTERS)
    assert set(homes) == set(REPLICAS)
    assert max(homes.values()) < 1.2 * len(ADAPTERS) / len(REPLICAS), homes


def test_a_replica_going_away_moves_only_its_own_adapters() -> None:
    gone = REPLICAS[1]
    left = [r for r in REPLICAS if r != gone]
    for adapter in ADAPTERS:
        before = by_affinity(adapter, REPLICAS)
        after = by_affinity(adapter, left)
        if before[0] != gone:
            assert after[0] == before[0]
        else:
            assert after[0] == before[1]  # its next choice, as the gateway's fail-over tries
