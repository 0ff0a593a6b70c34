"""``loramill.Client``: files, fine-tuning jobs, adapters and models (and, with an admin
key, the operators' endpoints)."""

from __future__ import annotations

import builtins
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from loramill._http import Transport
from loramill.admin import Admin
from loramill.errors import (
    ChecksumError,
    DownloadError,
    JobCancelledError,
    JobFailedError,
    LoramillError,
    WaitTimeoutError,
)
from loramill.types import (
    Adapter,
    AdapterVersion,
    Alias,
    Checkpoint,
    DatasetLimits,
    Estimate,
    File,
    FineTuningJob,
    JobEvent,
    Model,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class Files:
    def __init__(self, t: Transport):
        self._t = t

    def create(self, path: str | Path, *, purpose: str = "fine-tune",
               idempotency_key: str | None = None) -> File:
        """Upload a dataset; the same ``idempotency_key`` uploads it once."""
        path = Path(path)

        def parts() -> dict[str, Any]:
            return {"file": (path.name, path.open("rb"))}

        return File.of(self._t.request("POST", "/v1/files", files=parts,
                                       data={"purpose": purpose},
                                       idempotency_key=idempotency_key))

    def list(self, *, purpose: str | None = None, page_size: int = 100) -> Iterator[File]:
        params: dict[str, Any] = {"limit": page_size, **({"purpose": purpose} if purpose else {})}
        return (File.of(d) for d in self._t.pages("/v1/files", params))

    def limits(self) -> DatasetLimits:
        """The server's limits on datasets: what :func:`loramill.datasets.validate` checks."""
        return DatasetLimits.of(self._t.request("GET", "/v1/files/limits"))

    def retrieve(self, file_id: str) -> File:
        return File.of(self._t.request("GET", f"/v1/files/{file_id}"))

    def delete(self, file_id: str) -> bool:
        return bool(self._t.request("DELETE", f"/v1/files/{file_id}")["deleted"])

    def content(self, file_id: str) -> bytes:
        return b"".join(self._t.stream(f"/v1/files/{file_id}/content"))


class Jobs:
    def __init__(self, t: Transport):
        self._t = t

    def create(self, *, model: str, training_file: str, idempotency_key: str | None = None,
               **fields: Any) -> FineTuningJob:
        """Start a job: :func:`job_body`'s fields. ``model`` may be one of your fine-tuned
        or checkpoint models, to continue from it. The same ``idempotency_key`` (a CI
        run's id, say) creates one job however often the call is repeated within a day."""
        body = job_body(model=model, training_file=training_file, **fields)
        return FineTuningJob.of(self._t.request("POST", "/v1/fine_tuning/jobs", json=body,
                                                idempotency_key=idempotency_key))

    def estimate(self, *, model: str, training_file: str, **fields: Any) -> Estimate:
        """What a job with these fields would train, on which GPU class, for how long and
        at what cost; nothing is queued."""
        body = job_body(model=model, training_file=training_file, **fields)
        return Estimate.of(self._t.request("POST", "/v1/fine_tuning/estimates", json=body))

    def list(self, *, metadata: dict[str, str] | None = None,
             page_size: int = 100) -> Iterator[FineTuningJob]:
        params: dict[str, Any] = {"limit": page_size}
        params.update({f"metadata[{k}]": v for k, v in (metadata or {}).items()})
        return (FineTuningJob.of(d) for d in self._t.pages("/v1/fine_tuning/jobs", params))

    def retrieve(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.of(self._t.request("GET", f"/v1/fine_tuning/jobs/{job_id}"))

    def _action(self, job_id: str, action: str) -> FineTuningJob:
        return FineTuningJob.of(self._t.request("POST",
                                                f"/v1/fine_tuning/jobs/{job_id}/{action}"))

    def cancel(self, job_id: str) -> FineTuningJob:
        return self._action(job_id, "cancel")

    def pause(self, job_id: str) -> FineTuningJob:
        return self._action(job_id, "pause")

    def resume(self, job_id: str) -> FineTuningJob:
        return self._action(job_id, "resume")

    def events(self, job_id: str, *, page_size: int = 100) -> Iterator[JobEvent]:
        """Newest first, like the API."""
        return (JobEvent.of(d) for d in self._t.pages(f"/v1/fine_tuning/jobs/{job_id}/events",
                                                      {"limit": page_size}))

    def checkpoints(self, job_id: str) -> Iterator[Checkpoint]:
        return (Checkpoint.of(d) for d in self._t.pages(
            f"/v1/fine_tuning/jobs/{job_id}/checkpoints", {"limit": 100}))

    def new_events(self, job_id: str, seen: set[str]) -> builtins.list[JobEvent]:
        """Events not in ``seen`` (oldest first); adds them to it."""
        fresh = []
        for event in self.events(job_id, page_size=100):
            if event.id in seen:
                break
            fresh.append(event)
        seen.update(e.id for e in fresh)
        return fresh[::-1]

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 2.0,
             on_event: Callable[[JobEvent], None] | None = None,
             raise_on_failure: bool = True) -> FineTuningJob:
        """Poll until the job ends. Raises JobFailedError / JobCancelledError (unless
        ``raise_on_failure=False``) and WaitTimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            job = self.retrieve(job_id)
            if on_event is not None:
                for event in self.new_events(job_id, seen):
                    on_event(event)
            if job.done:
                if raise_on_failure and job.status == "failed":
                    raise JobFailedError(job)
                if raise_on_failure and job.status == "cancelled":
                    raise JobCancelledError(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job, timeout or 0)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline -
                                                                   time.monotonic())))


def job_body(*, model: str, training_file: str, validation_file: str | None = None,
             n_epochs: int | str = "auto", batch_size: int | str = "auto",
             learning_rate_multiplier: float | str = "auto", suffix: str | None = None,
             seed: int | None = None, metadata: dict[str, str] | None = None,
             lora: dict[str, Any] | None = None, method: str = "supervised",
             beta: float | str = "auto", max_seq_len: int | None = None,
             eval_every: int | str | None = None, early_stopping_patience: int | None = None,
             early_stopping_threshold: float | None = None,
             publish_checkpoint: str | None = None,
             integrations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job's JSON body. ``method="dpo"`` trains on a preference file; ``beta`` is DPO's
    only. The evaluation fields need a ``validation_file``."""
    hyperparameters: dict[str, Any] = {
        "n_epochs": n_epochs, "batch_size": batch_size,
        "learning_rate_multiplier": learning_rate_multiplier}
    evaluation = {"eval_every": eval_every, "early_stopping_patience": early_stopping_patience,
                  "early_stopping_threshold": early_stopping_threshold,
                  "publish_checkpoint": publish_checkpoint}
    hyperparameters.update({k: v for k, v in evaluation.items() if v is not None})
    if method == "dpo":
        hyperparameters["beta"] = beta
    body: dict[str, Any] = {
        "model": model, "training_file": training_file,
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
    }
    optional = {"validation_file": validation_file, "suffix": suffix, "seed": seed,
                "metadata": metadata, "lora": lora, "max_seq_len": max_seq_len,
                "integrations": integrations}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


class FineTuning:
    def __init__(self, t: Transport):
        self.jobs = Jobs(t)


class Adapters:
    def __init__(self, t: Transport):
        self._t = t

    def list(self) -> Iterator[Adapter]:
        return (Adapter.of(d) for d in self._t.pages("/v1/adapters", {"limit": 100}))

    def versions(self, name: str) -> Iterator[AdapterVersion]:
        return (AdapterVersion.of(d) for d in self._t.pages(f"/v1/adapters/{name}/versions",
                                                            {"limit": 100}))

    def aliases(self, name: str) -> builtins.list[Alias]:
        return [Alias.of(d) for d in
                self._t.request("GET", f"/v1/adapters/{name}/aliases")["data"]]

    def promote(self, name: str, alias: str, version: int) -> Alias:
        """Point ``alias`` (``production``, ``staging``, any name) at ``version``."""
        return Alias.of(self._t.request("PUT", f"/v1/adapters/{name}/aliases/{alias}",
                                        json={"version": version}))

    def rollback(self, name: str, alias: str) -> Alias:
        """Point ``alias`` back at the version it pointed at before."""
        return Alias.of(self._t.request("POST",
                                        f"/v1/adapters/{name}/aliases/{alias}/rollback"))

    def delete_alias(self, name: str, alias: str) -> None:
        self._t.request("DELETE", f"/v1/adapters/{name}/aliases/{alias}")

    def delete_version(self, name: str, version: int) -> AdapterVersion:
        """Delete a version and its files (refused while an alias points at it)."""
        return AdapterVersion.of(self._t.request(
            "DELETE", f"/v1/adapters/{name}/versions/{version}"))

    def export(self, name: str, version: int, format: str) -> dict[str, Any]:
        """Ask for a version as a ``merged`` model or a ``gguf`` LoRA adapter (built by a
        worker; asking again answers the same export)."""
        found: dict[str, Any] = self._t.request(
            "POST", f"/v1/adapters/{name}/versions/{version}/exports", json={"format": format})
        return found

    def get_export(self, name: str, version: int, format: str) -> dict[str, Any]:
        found: dict[str, Any] = self._t.request(
            "GET", f"/v1/adapters/{name}/versions/{version}/exports/{format}")
        return found

    def download_export(self, name: str, version: int, format: str,
                        dest: str | Path) -> Path:
        """An export's files into ``dest``, each sha256 checked against the API's list."""
        info = self._t.request(
            "GET", f"/v1/adapters/{name}/versions/{version}/exports/{format}/download")
        return _fetch(info["files"], {}, Path(dest))

    def download(self, name: str, version: int, dest: str | Path) -> Path:
        """Fetch every file of a version into ``dest`` and check each sha256 against the
        version's manifest; a mismatch raises ChecksumError and leaves no file behind.
        For ``adapter@alias``, ``client.models.download``."""
        info = self._t.request("GET", f"/v1/adapters/{name}/versions/{version}/download")
        meta = self._t.request("GET", f"/v1/adapters/{name}/versions/{version}")
        expected = {f["name"]: f["sha256"] for f in meta["manifest"]["files"]}
        expected.update({f["name"]: f["sha256"] for f in meta["files"]})
        return _fetch(info["files"], expected, Path(dest))


def _fetch(files: list[dict[str, Any]], expected: dict[str, str], dest: Path) -> Path:
    """Each presigned file into ``dest``, its sha256 checked as it is written (against
    ``expected``, else the one the API listed); a mismatch raises ChecksumError and leaves
    that file behind as nothing."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = dest / f["name"]
        partial = target.with_suffix(target.suffix + ".part")
        digest = hashlib.sha256()
        try:
            with httpx.stream("GET", f["url"], timeout=300) as response:
                if response.status_code >= 400:
                    raise DownloadError(
                        f"{f['name']}: the store answered {response.status_code} "
                        f"{response.reason_phrase} (the download URL expired or was refused;"
                        " ask for the download again)")
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{f['name']}: cannot reach the store ({exc})") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        wanted = expected.get(f["name"], f["sha256"])
        if digest.hexdigest() != wanted:
            partial.unlink()
            raise ChecksumError(f"{f['name']}: sha256 {digest.hexdigest()} does not "
                                f"match the recorded {wanted}")
        partial.replace(target)
    return dest


class Webhooks:
    """Webhook endpoints (``/v1/webhook_endpoints``, OpenAI's shape) and delivery logs."""

    def __init__(self, t: Transport):
        self._t = t

    def create(self, url: str, *, event_types: builtins.list[str] | None = None,
               name: str = "") -> dict[str, Any]:
        """The endpoint, with its ``signing_secret`` (shown this once)."""
        body: dict[str, Any] = {"url": url, "name": name}
        if event_types:
            body["event_types"] = event_types
        found: dict[str, Any] = self._t.request("POST", "/v1/webhook_endpoints", json=body)
        return found

    def list(self) -> Iterator[dict[str, Any]]:
        return self._t.pages("/v1/webhook_endpoints", {"limit": 100})

    def delete(self, endpoint_id: str) -> None:
        self._t.request("DELETE", f"/v1/webhook_endpoints/{endpoint_id}")

    def rotate_secret(self, endpoint_id: str, *, keep_old: bool = False) -> dict[str, Any]:
        found: dict[str, Any] = self._t.request(
            "POST", f"/v1/webhook_endpoints/{endpoint_id}/rotate_secret",
            json={"keep_old_secret_active_for_24_hours": keep_old})
        return found

    def test(self, endpoint_id: str, event_type: str = "fine_tuning.job.succeeded",
             ) -> dict[str, Any]:
        found: dict[str, Any] = self._t.request(
            "POST", f"/v1/webhook_endpoints/{endpoint_id}/test",
            json={"event_type": event_type})
        return found

    def deliveries(self, endpoint_id: str) -> Iterator[dict[str, Any]]:
        return self._t.pages(f"/v1/webhook_endpoints/{endpoint_id}/deliveries",
                             {"limit": 100})


class Integrations:
    """Credentials for jobs' integrations (a W&B API key), set once for the account."""

    def __init__(self, t: Transport):
        self._t = t

    def list(self) -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = self._t.request("GET", "/v1/integrations")[
            "data"]
        return found

    def set_wandb(self, api_key: str, base_url: str | None = None) -> None:
        body = {"api_key": api_key, **({"base_url": base_url} if base_url else {})}
        self._t.request("PUT", "/v1/integrations/wandb", json=body)

    def delete_wandb(self) -> None:
        self._t.request("DELETE", "/v1/integrations/wandb")


class Models:
    def __init__(self, t: Transport):
        self._t = t

    def list(self) -> list[Model]:
        return [Model.of(d) for d in self._t.request("GET", "/v1/models")["data"]]

    def retrieve(self, model: str) -> Model:
        return Model.of(self._t.request("GET", f"/v1/models/{model}"))

    def download(self, model: str, dest: str | Path) -> Path:
        """The adapter behind a fine-tuned or checkpoint model into ``dest``, each file's
        sha256 checked against the one recorded when it was saved."""
        info = self._t.request("GET", f"/v1/models/{model}/download")
        return _fetch(info["files"], {}, Path(dest))


class Client:
    """``Client(api_key=…, base_url=…)``; both default to ``LORAMILL_API_KEY`` and
    ``LORAMILL_BASE_URL`` (or ``LORAMILL_API_URL``)."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 5,
                 http_client: httpx.Client | None = None):
        api_key = api_key or os.environ.get("LORAMILL_API_KEY")
        if not api_key:
            raise LoramillError("no API key: pass api_key= or set LORAMILL_API_KEY")
        base_url = (base_url or os.environ.get("LORAMILL_BASE_URL")
                    or os.environ.get("LORAMILL_API_URL") or DEFAULT_BASE_URL)
        base_url = base_url.rstrip("/").removesuffix("/v1")
        self.base_url = base_url
        self._t = Transport(base_url, api_key, timeout=timeout, max_retries=max_retries,
                            client=http_client)
        self.files = Files(self._t)
        self.fine_tuning = FineTuning(self._t)
        self.adapters = Adapters(self._t)
        self.models = Models(self._t)
        self.webhooks = Webhooks(self._t)
        self.integrations = Integrations(self._t)
        self.admin = Admin(self._t)  # operators: needs an admin key

    def close(self) -> None:
        self._t.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
