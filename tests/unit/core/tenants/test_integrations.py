"""Whether a job's W&B integration can log on this deployment, and with which key."""

from __future__ import annotations

import pytest

from core.kit.errors import InvalidRequest
from core.kit.settings import Settings
from core.tenants import integrations
from core.tenants.models import Tenant


def tenant(key: str | None = None) -> Tenant:
    return Tenant(id="t", name="t", integrations={"wandb": {"api_key": key}} if key else None)


def test_online_needs_a_key_the_tenants_first() -> None:
    online = Settings(wandb_mode="online", wandb_api_key=None)
    with pytest.raises(InvalidRequest) as refused:
        integrations.check_usable(tenant(), online, ["wandb"])
    assert refused.value.code == "integration_not_configured"
    integrations.check_usable(tenant("k" * 40), online, ["wandb"])
    shared = Settings(wandb_mode="online", wandb_api_key="deployment-key")
    assert integrations.wandb_for(tenant(), shared).api_key == "deployment-key"
    assert integrations.wandb_for(tenant("own-key-1234"), shared).api_key == "own-key-1234"


def test_offline_needs_no_key_and_disabled_refuses() -> None:
    integrations.check_usable(tenant(), Settings(wandb_mode="offline"), ["wandb"])
    integrations.check_usable(tenant(), Settings(wandb_mode="disabled"), [])
    with pytest.raises(InvalidRequest) as refused:
        integrations.check_usable(tenant(), Settings(wandb_mode="disabled"), ["wandb"])
    assert refused.value.code == "integration_unavailable"
