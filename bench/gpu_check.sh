#!/usr/bin/env bash
# The GPU checks, in one prepared run on a lent GPU machine (the `device` tool), all within
# about 8 minutes, results under $OUT (the device tool's) or bench/results:
#   1. training throughput and MFU on a ~1B random Llama, sequence 2,048, bf16 over NF4:
#      our recipe against TRL SFTTrainer padding-free (and with Liger's kernels where the
#      liger-kernel wheel was carried), three runs each, medians (bench/gpu_train.py);
#   2. the memory model against the measured peak of our side (goal: within 15 %);
#   3. a data-parallel smoke: one job across every GPU with torchrun (NCCL);
#   4. the serving benchmark, where vLLM is installed (its wheel is too large to carry).
# The device image has python3 with CUDA torch, transformers, peft and accelerate; carry
# the rest as wheels in .whl/ (see /work/.library/device/README.md):
#   bitsandbytes, trl, datasets (+ its needs: dill, multiprocess, xxhash, pyarrow, pandas),
#   msgspec, the sdk's loramill package, and optionally liger-kernel, flash-attn.
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-bench/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/sdk
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
started=$(date +%s)
say() { echo "== $* ($(( $(date +%s) - started )) s)"; }

say "machine"
nvidia-smi -L | tee "$RESULTS/gpu.txt"
python3 -c "
import importlib.metadata as md
for name in ('torch', 'transformers', 'peft', 'bitsandbytes', 'trl', 'liger-kernel', 'flash-attn', 'vllm'):
    try: print(name, md.version(name))
    except md.PackageNotFoundError: print(name, 'not installed')
" | tee -a "$RESULTS/gpu.txt"

say "1-2. throughput, MFU and the memory model"
timeout 330 python3 bench/gpu_train.py --out "$RESULTS" 2>&1 | tee "$RESULTS/gpu_train.log"

say "3. data-parallel smoke across $(nvidia-smi -L | wc -l) GPU(s)"
python3 - <<'PY'
import json
from pathlib import Path
from bench.gpu_train import WORK, build_data, build_model, lora
from worker.training.rank import job_arguments
from worker.training.recipe import TrainSpec
WORK.mkdir(parents=True, exist_ok=True)
spec = TrainSpec(n_epochs=1, batch_size=8, learning_rate=2e-4, seed=0, lora=lora(8),
                 checkpoint_every=-1, max_seq_len=512)
job = job_arguments(spec, build_model("smoke"), build_data(64, 512), valid_file=None,
                    work_dir=WORK / "ranks", resume_from=None)
(WORK / "ranks").mkdir(exist_ok=True)
Path(WORK / "rank-job.json").write_text(json.dumps(job))
PY
timeout 120 python3 -m torch.distributed.run --standalone \
  --nproc-per-node "$(nvidia-smi -L | wc -l)" -m worker.training.rank \
  bench/data/gpu/rank-job.json 2>&1 | tail -5 | tee "$RESULTS/rank_smoke.log"

say "4. serving"
if python3 -c "import vllm" 2>/dev/null; then
  echo "vllm is installed: start an engine and run bench/serve.py against it" \
    "(docs/serving.md); not automated here yet" | tee "$RESULTS/serve.log"
else
  echo "skipped: vllm is not installed on this machine (its wheel is over the 64 MiB" \
    "a device call can carry)" | tee "$RESULTS/serve.log"
fi
say "done"
