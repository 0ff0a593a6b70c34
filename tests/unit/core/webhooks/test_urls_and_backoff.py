"""Which webhook URLs may be called, and when a failed delivery is tried again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.kit.settings import Settings
from core.webhooks.delivery import retry_at
from core.webhooks.service import UnsafeURL, check_url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/hook", "http://10.1.2.3/hook", "https://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]:80/", "http://0.0.0.0/",
    "http://100.64.0.1/", "ftp://8.8.8.8/", "https://user:pw@8.8.8.8/", "https:///path",
    "not a url"])
def test_internal_addresses_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url, [])


def test_global_addresses_and_what_an_operator_allows_are_callable() -> None:
    check_url("https://8.8.8.8/hook", [])
    check_url("http://127.0.0.1:9000/hook", ["127.0.0.1"])
    check_url("http://10.1.2.3/hook", ["10.0.0.0/8"])
    check_url("http://receiver.internal/hook", ["receiver.internal"])  # by name: no lookup
    with pytest.raises(UnsafeURL, match=r"10\.1\.2\.3"):
        check_url("http://10.1.2.3/hook", ["10.9.0.0/16"])


def test_retries_wait_four_times_longer_each_time_up_to_six_hours() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    settings = Settings(webhook_retry_seconds=10)
    waits = [(retry_at(now, n, settings) - now).total_seconds() for n in range(1, 9)]
    assert waits == [10, 40, 160, 640, 2560, 10240, 21600, 21600]
    assert retry_at(now, 30, settings) - now == timedelta(hours=6)
