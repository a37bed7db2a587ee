#!/usr/bin/env bash
# GPU check, for a machine with PyTorch 2.11 but no cargo (the `device` tool).
#   here:  scripts/device_check.sh pack     -> .device/ (stripped, xz'd binaries; git-ignored)
#   there: scripts/device_check.sh run      (carry .device)
# It runs `mmprobe doctor`, then the CLIP parity and extraction tests on cuda:0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
  pack)
    cargo build --release -p mmprobe
    cargo test --release -p mmprobe-extract --no-run 2>&1 | tee /tmp/mmprobe-testbins.txt >/dev/null
    rm -rf .device && mkdir -p .device
    cp target/release/mmprobe .device/
    for t in clip_parity extract_store; do
      bin=$(grep -o "target/release/deps/$t-[0-9a-f]*" /tmp/mmprobe-testbins.txt | tail -1)
      cp "$bin" ".device/$t"
    done
    strip .device/* && xz -T2 -6 .device/*
    du -sh .device ;;
  run)
    # The test binaries find fixtures by the absolute path they were built at.
    here=$(pwd)
    [ -d /work/main/scripts/fixtures ] || { mkdir -p /work && ln -sfn "$here" /work/main; }
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))")/lib
    (cd .device && xz -dkf ./*.xz && chmod +x mmprobe clip_parity extract_store)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    .device/mmprobe doctor
    MMPROBE_TEST_DEVICE=cuda:0 .device/clip_parity
    MMPROBE_TEST_DEVICE=cuda:0 .device/extract_store --test-threads 1 ;;
  *) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
