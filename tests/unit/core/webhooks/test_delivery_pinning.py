"""DNS rebinding: a webhook host that resolves to a global address when the URL is
checked and to an inside address a moment later must not get the request inside. A
delivery connects to the addresses the check resolved, with the name kept in the Host
header. The resolver here answers differently on each lookup, as a rebinding attacker's
does; the receiver is a real HTTP server on loopback."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from core.kit.settings import Settings
from core.webhooks.delivery import Attempt, send
from tests.webhook_receiver import Receiver

HOST = "hooks.rebind.test"


def rebinding(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Make HOST resolve to each answer in turn (the last one from then on); returns the
    answers given, in order."""
    real = socket.getaddrinfo
    given: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HOST:
            return real(host, port, *args, **kwargs)
        address = answers[min(len(given), len(answers) - 1)]
        given.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return given


def attempt(receiver: Receiver) -> Attempt:
    port = receiver.server.server_address[1]
    return Attempt("whd_1", f"http://{HOST}:{port}/hooks", ["whsec_" + "A" * 32], b"{}")


def test_a_delivery_goes_to_the_address_that_was_checked(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # allowed: 127.0.0.1 only; a second lookup would say 127.0.0.2, where nothing listens
    given = rebinding(monkeypatch, "127.0.0.1", "127.0.0.2")
    settings = Settings(webhook_allowed_hosts=["127.0.0.1/32"], webhook_timeout_seconds=5)
    outcome = send(attempt(receiver), settings)
    assert outcome.ok, outcome
    assert given == ["127.0.0.1"]  # looked up once
    (got,) = receiver.received
    port = receiver.server.server_address[1]
    assert {k.lower(): v for k, v in got.headers.items()}["host"] == f"{HOST}:{port}"


def test_a_name_that_turns_inside_after_the_check_gets_nothing_inside(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # global at the check, loopback (this receiver) from then on: the request must go to
    # the global address (unreachable here, so the attempt fails and is retried later)
    given = rebinding(monkeypatch, "8.8.8.8", "127.0.0.1")
    settings = Settings(webhook_allowed_hosts=[], webhook_timeout_seconds=1)  # not the env's
    outcome = send(attempt(receiver), settings)
    assert not outcome.ok and outcome.error, outcome
    assert given == ["8.8.8.8"]
    assert receiver.received == []
    # and a name that resolves inside at the check is refused before any connection
    given = rebinding(monkeypatch, "127.0.0.1")
    outcome = send(attempt(receiver), settings)
    assert outcome.error is not None and outcome.error.startswith("refused: the URL its host")
    assert receiver.received == []
