"""What fine-tuning costs a tenant: a price table an operator sets per tenant (or the
deployment's default, ``LORAMILL_PRICES``), read by estimates."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.kit.settings import get_settings
from core.tenants.models import Tenant


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_gpu_hour: float = Field(0.0, ge=0, le=1e6)  # times the class's GPUs (a CPU: 1)
    per_million_tokens: float = Field(0.0, ge=0, le=1e6)  # trained tokens


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    gpu_classes: dict[str, Price]

    def cost(self, gpu_class: str, gpus: int, seconds: float, tokens: int) -> float | None:
        """The price of a run; None when the table has no price for the class."""
        price = self.gpu_classes.get(gpu_class)
        if price is None:
            return None
        return round(price.per_gpu_hour * gpus * seconds / 3600
                     + price.per_million_tokens * tokens / 1e6, 4)


def for_tenant(tenant: Tenant) -> PriceTable | None:
    """The tenant's table, else the deployment's default, else none."""
    table = tenant.prices if tenant.prices is not None else get_settings().prices
    return PriceTable.model_validate(table) if table else None
