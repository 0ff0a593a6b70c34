"""A cap on each tenant's requests in flight in this API process, so one tenant cannot take
every worker thread and database connection while others wait: past the cap, 429
``too_many_concurrent_requests`` with ``Retry-After``.

A request whose key was seen before is counted before anything else is done for it, in
the event loop: a flood is refused without a thread, a query or a pooled connection. The
key's owner is only remembered for that; authentication still runs for every admitted
request, so a revoked key is refused on its next request as before.
"""

from __future__ import annotations

from collections import OrderedDict

from core.kit.errors import RateLimited

REMEMBERED_KEYS = 10_000


class TenantSlots:
    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._owners: OrderedDict[str, str] = OrderedDict()

    def owner_of(self, key_hash: str) -> str | None:
        return self._owners.get(key_hash)

    def remember(self, key_hash: str, owner: str) -> None:
        self._owners[key_hash] = owner
        self._owners.move_to_end(key_hash)
        if len(self._owners) > REMEMBERED_KEYS:
            self._owners.popitem(last=False)

    def acquire(self, owner: str, limit: int) -> None:
        busy = self._in_flight.get(owner, 0)
        if limit > 0 and busy >= limit:
            error = RateLimited(
                f"too many concurrent requests: {busy} of this account's requests are in "
                f"progress (the limit is {limit}); retry shortly",
                code="too_many_concurrent_requests")
            error.headers = {"Retry-After": "1"}
            raise error
        self._in_flight[owner] = busy + 1

    def release(self, owner: str) -> None:
        left = self._in_flight.get(owner, 0) - 1
        if left > 0:
            self._in_flight[owner] = left
        else:
            self._in_flight.pop(owner, None)

    def in_flight(self) -> int:
        return sum(self._in_flight.values())


slots = TenantSlots()  # one per process: the event loop is its only user
