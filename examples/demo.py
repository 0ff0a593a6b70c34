"""The loramill demo: upload a dataset and start a fine-tuning job on the local stack.

Run by ``make demo`` after ``make up``; talks to the API over HTTP like any customer.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "examples" / "data" / "capitals.jsonl"
MODEL = "loramill/tiny-llama"


def load_dev_env() -> dict[str, str]:
    home = Path(os.environ.get("LORAMILL_HOME", ROOT / ".loramill"))
    path = home / "dev.env"
    if not path.exists():
        sys.exit(f"{path} not found: run `make up` first")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def show(title: str, obj: dict[str, object]) -> None:
    print(f"\n== {title}")
    print(json.dumps(obj, indent=2))


def main() -> int:
    env = load_dev_env()
    client = httpx.Client(
        base_url=env["LORAMILL_API_URL"],
        headers={"Authorization": f"Bearer {env['LORAMILL_API_KEY']}"}, timeout=120,
    )
    with DATASET.open("rb") as fh:
        response = client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": (DATASET.name, fh)})
    response.raise_for_status()
    file = response.json()
    show(f"uploaded {DATASET.name}", file)

    response = client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_file": file["id"], "suffix": "capitals", "seed": 1234,
        "method": {"type": "supervised",
                   "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 4}}},
        "lora": {"r": 8, "alpha": 16},
    })
    response.raise_for_status()
    job = response.json()
    show("created fine-tuning job", job)
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    print("\n== events")
    for event in reversed(events):
        print(f"  [{event['level']}] {event['message']}")
    print(f"\nPoll it:  curl -H 'Authorization: Bearer $LORAMILL_API_KEY' "
          f"{env['LORAMILL_API_URL']}/v1/fine_tuning/jobs/{job['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
