"""The loramill demo: a real fine-tune on the local stack, end to end.

Uploads a small dataset, starts a QLoRA job on the tiny base model, follows it with a
live progress line, downloads the published adapter version (checking every file's
sha256 against its manifest), then asks the base and the fine-tuned model the same
questions through loramill's own ``/v1/chat/completions`` with the official ``openai``
client (the serving engine loads the adapter on demand) and shows the answers side by
side. Run by ``make demo`` after ``make up``; talks to the API over HTTP like a customer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.kit.settings import read_env_file

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LORAMILL_HOME", ROOT / ".loramill"))
DATASET = ROOT / "examples" / "data" / "capitals.jsonl"
MODEL = "loramill/tiny-llama"
QUESTIONS = ["France", "Japan", "Kenya", "Canada"]


def load_dev_env() -> dict[str, str]:
    path = HOME / "dev.env"
    if not path.exists():
        sys.exit(f"{path} not found: run `make up` first")
    return read_env_file(path)


def follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Print a live progress line from the job's metrics events until it ends."""
    tty = sys.stdout.isatty()
    shown = set()
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                            params={"limit": 50}).json()["data"]
        for event in reversed(events):
            if event["id"] in shown:
                continue
            shown.add(event["id"])
            if event["type"] == "metrics":
                m = event["data"]
                eta = ""
                if job["estimated_finish"]:
                    eta = f"  ETA {max(0, job['estimated_finish'] - int(time.time()))}s"
                line = (f"  step {m['step']:>4}/{m['total_steps']}  loss {m['train_loss']:.4f}"
                        f"  {m['tokens_per_second']:.0f} tok/s{eta}")
                if tty:
                    print("\r" + line, end="", flush=True)
                elif m["step"] % max(1, m["total_steps"] // 10) == 0:
                    print(line, flush=True)
            else:
                print(("\n" if tty else "") + f"  [{event['level']}] {event['message']}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.5)


def download(client: httpx.Client, adapter: str, version: int, out: Path) -> Path:
    info = client.get(f"/v1/adapters/{adapter}/versions/{version}/download").json()
    out.mkdir(parents=True, exist_ok=True)
    for f in info["files"]:
        body = httpx.get(f["url"], timeout=120).content
        if hashlib.sha256(body).hexdigest() != f["sha256"]:
            sys.exit(f"checksum mismatch for {f['name']}")
        (out / f["name"]).write_bytes(body)
    return out


def ask(openai: Any, model: str, country: str) -> str:
    """One question through our /v1/chat/completions, with the official openai client."""
    answer = openai.chat.completions.create(
        model=model, max_tokens=10, temperature=0,
        messages=[{"role": "system", "content": "Answer with the name of the city."},
                  {"role": "user", "content": f"What is the capital of {country}?"}])
    return str(answer.choices[0].message.content or "").strip()


def wait_for_engine(openai: Any, model: str, timeout: float = 600) -> None:
    """Until the serving engine answers (it may still be starting), or exit saying why."""
    from openai import APIStatusError

    deadline = time.monotonic() + timeout
    while True:
        try:
            ask(openai, model, QUESTIONS[0])
            return
        except APIStatusError as exc:
            if exc.status_code != 503 or "starting" not in str(exc.message) \
                    or time.monotonic() > deadline:
                sys.exit(f"== the serving engine cannot answer: {exc.message}")
            print("   (the serving engine is starting; waiting)", flush=True)
            time.sleep(5)


def main() -> int:
    env = load_dev_env()
    client = httpx.Client(base_url=env["LORAMILL_API_URL"], timeout=120,
                          headers={"Authorization": f"Bearer {env['LORAMILL_API_KEY']}"})
    with DATASET.open("rb") as fh:
        response = client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": (DATASET.name, fh)})
    response.raise_for_status()
    file = response.json()
    print(f"== uploaded {file['filename']}: {file['id']}, {file['example_count']} "
          f"{file['format']} examples, sha256 {file['sha256'][:12]}…")

    response = client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": file["id"], "suffix": "capitals", "seed": 1234,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 30, "batch_size": 4, "learning_rate_multiplier": 10}}},
        "lora": {"r": 32, "alpha": 64},
    })
    response.raise_for_status()
    job = response.json()
    print(f"== created {job['id']} ({job['status']}): {MODEL}, "
          f"hyperparameters {json.dumps(job['hyperparameters'])}, LoRA r={job['lora']['r']}")
    job = follow(client, job["id"])
    print()
    if job["status"] != "succeeded":
        print(f"== job {job['status']}: {job['error']}")
        return 1
    print(f"== {job['fine_tuned_model']}  ({job['trained_tokens']} trained tokens)")

    versions = client.get("/v1/adapters/capitals/versions", params={"limit": 1}).json()
    version = versions["data"][0]
    out = download(client, "capitals", version["version"],
                   HOME / "demo" / f"capitals-v{version['version']}")
    print(f"== downloaded adapter capitals v{version['version']} to {out} "
          f"({', '.join(f['name'] for f in version['files'])}; sha256 verified)")

    from openai import OpenAI

    openai = OpenAI(base_url=env["LORAMILL_API_URL"] + "/v1", api_key=env["LORAMILL_API_KEY"],
                    timeout=120, max_retries=0)
    wait_for_engine(openai, MODEL)
    tuned = job["fine_tuned_model"]
    print(f"\n== asked through {env['LORAMILL_API_URL']}/v1/chat/completions "
          "(the openai client; adapter hot-loaded by the engine)")
    print("   question                        base model            fine-tuned")
    for country in QUESTIONS:
        before, after = ask(openai, MODEL, country), ask(openai, tuned, country)
        print(f"   capital of {country:<20} {before[:20]!r:<22} {after!r}")
    usage = client.get("/v1/usage", params={"model": tuned}).json()["data"]
    if usage:
        print(f"== usage of {tuned.split(':')[3]}: {usage[-1]['requests']} requests, "
              f"{usage[-1]['total_tokens']} tokens today (GET /v1/usage)")
    print(f"\n== ops dashboard: {env['LORAMILL_API_URL']}/ops/jobs/{job['id']} "
          f"(sign in with LORAMILL_ADMIN_KEY from {HOME / 'dev.env'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
