#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh needs on a lent GPU machine (nothing can
# be fetched there; its image has CUDA torch, transformers, peft, accelerate, pandas,
# pyarrow, xxhash). About 46 MB, under the 64 MiB a device call carries:
#   bash bench/gpu_wheels.sh && run(command="bash bench/gpu_check.sh", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  bitsandbytes trl datasets dill multiprocess msgspec liger-kernel
du -sh .whl
