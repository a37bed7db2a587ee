#!/usr/bin/env bash
# The GPU extraction benchmark (bench/gpu_bench.py says what it measures).
#   here:  bench/gpu_extract.sh pack   -> .device/ (stripped, xz'd mmprobe and loader_bench; git-ignored)
#   there: bench/gpu_extract.sh run    (carry .device; a machine with PyTorch + transformers, no cargo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
  pack)
    cargo build --release -p mmprobe
    cargo build --release -p mmprobe-extract --example loader_bench
    rm -rf .device && mkdir -p .device
    cp target/release/mmprobe target/release/examples/loader_bench .device/
    strip .device/* && xz -T2 -6 .device/*
    du -sh .device ;;
  run)
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$("${PYTHON:-python3}" -c "import torch,os;print(os.path.dirname(torch.__file__))")/lib
    (cd .device && xz -dkf ./*.xz && chmod +x mmprobe loader_bench)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    lscpu | grep -E "Model name|^CPU\(s\)" || true
    "${PYTHON:-python3}" bench/gpu_bench.py 2>&1 | tee "${OUT:-/tmp}/gpu_bench.log" ;;
  *)
    sed -n '2,4p' "$0"; exit 2 ;;
esac
