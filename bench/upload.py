"""Upload + validation throughput of the files API.

Uploads a generated ~200 MB chat JSONL through the running local stack's API and
compares the rate with `sha256sum` of the same file in the same run (the ceiling: the
API must at least hash every byte), three times (``--runs``); the medians are the result.
A second baseline in each run writes the same bytes to the object store alone, the way
the API does (no upload, hashing or validation): the ceiling the store sets.
Samples the API process's RSS during each upload, and times the dataset grammar alone
(``loramill.datasets``, in this process) on the same bytes.

    make up && .venv/bin/python bench/upload.py [--mb 200] [--runs 3]
Results are printed and written to bench/results/upload.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx

from core.kit.settings import read_env_file

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LORAMILL_HOME", ROOT / ".loramill"))
DATA = ROOT / "bench" / "data"
WORDS = ("the model learns to answer questions about data pipelines adapters tokens gradient "
         "training schedule packing quantization memory throughput").split(" ")


def make_dataset(path: Path, megabytes: int) -> None:
    if path.exists() and path.stat().st_size >= megabytes * 1_000_000:
        return
    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        written = 0
        while written < megabytes * 1_000_000:
            q = " ".join(rng.choices(WORDS, k=rng.randint(5, 60)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(10, 300)))
            line = json.dumps({"messages": [
                {"role": "system", "content": "You are concise."},
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            fh.write(line)
            written += len(line)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def validator_mb_s(path: Path) -> float:
    """The grammar alone: the same streaming validator the API runs, in this process."""
    from loramill.datasets.validation import DatasetValidator

    validator = DatasetValidator(max_line_bytes=4 << 20, max_json_depth=32)
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            validator.feed(chunk)
    assert validator.finish().ok
    return path.stat().st_size / 1e6 / (time.perf_counter() - t0)


def store_only_mb_s(path: Path, env: dict[str, str]) -> float:
    """The object store alone: the same bytes written to it the way the API writes them
    (core/kit/storage.py's MultipartWriter, 1 MiB writes), with no HTTP upload, hashing or
    validation: the ceiling the store sets on this machine."""
    os.environ.update(env)
    from core.kit.storage import MIN_PART_BYTES, get_storage

    storage = get_storage()
    key = f"bench/store-only-{os.getpid()}.jsonl"
    t0 = time.perf_counter()
    writer = storage.writer(key, max(8 << 20, MIN_PART_BYTES), content_type="application/jsonl")
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            writer.write(chunk)
    writer.complete()
    seconds = time.perf_counter() - t0
    storage.client.delete_object(Bucket=storage.bucket, Key=key)
    return path.stat().st_size / 1e6 / seconds


def one_run(client: httpx.Client, path: Path, api_pid: int,
            env: dict[str, str]) -> dict[str, float]:
    size = path.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    sha_s = time.perf_counter() - t0

    baseline = rss_kib(api_pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(api_pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        response = client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": (path.name, fh)})
    upload_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    response.raise_for_status()
    body = response.json()
    client.delete(f"/v1/files/{body['id']}")
    mb = size / 1e6
    store = store_only_mb_s(path, env)
    return {"sha256sum_mb_s": round(mb / sha_s, 1), "upload_mb_s": round(mb / upload_s, 1),
            "ratio_to_sha256sum": round(sha_s / upload_s, 3),
            "store_only_mb_s": round(store, 1),
            "store_only_ratio_to_sha256sum": round(store * sha_s / mb, 3),
            "api_rss_growth_mb": round((peak[0] - baseline) / 1024, 1),
            "examples": body["example_count"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = read_env_file(HOME / "dev.env")
    api_pid = int((HOME / "run" / "api.pid").read_text())
    path = DATA / f"chat-{args.mb}mb.jsonl"
    make_dataset(path, args.mb)
    client = httpx.Client(base_url=env["LORAMILL_API_URL"], timeout=600,
                          headers={"Authorization": f"Bearer {env['LORAMILL_API_KEY']}"})
    runs = []
    for i in range(args.runs):
        runs.append(one_run(client, path, api_pid, env))
        print(f"run {i + 1}: {json.dumps(runs[-1])}", flush=True)
    grammar_alone = [round(validator_mb_s(path), 1) for _ in range(args.runs)]

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    result = {
        "file_mb": round(path.stat().st_size / 1e6, 1), "examples": runs[0]["examples"],
        "runs": runs,
        "median": {key: median(key) for key in (
            "sha256sum_mb_s", "upload_mb_s", "ratio_to_sha256sum", "store_only_mb_s",
            "store_only_ratio_to_sha256sum", "api_rss_growth_mb")},
        "validator_alone_mb_s": grammar_alone,
        "cpu_count": os.cpu_count(),
    }
    out = ROOT / "bench" / "results" / "upload.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
