#!/usr/bin/env bash
# GPU check, for a machine with PyTorch 2.11 but no cargo (the `device` tool).
#   here:  scripts/device_check.sh pack     -> .device/ (stripped, xz'd binaries; git-ignored)
#   there: scripts/device_check.sh run      (carry .device; prints to $OUT/device_check.log too)
# `run` prints the GPU and doctor, runs the CLIP, LLaVA, shapes-clip and
# shapes-llava parity tests on the device (MMPROBE_TEST_DEVICE), extracts the
# bundled shapes split with shapes-clip (both towers) and shapes-llava (decoder,
# logit lens) on the CPU, on the device in f32, in f32 with --allow-tf32, and that
# with TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (every matmul in TF32 too), timing each,
# prints the worst relative difference per tower and site of each device store
# against the CPU store (scripts/compare_stores.py), and times the patch embedding
# alone at real CLIP sizes (scripts/patch_embed_tf32.py).
# DEVICE=cpu runs the same on the CPU (to check the script where there is no GPU);
# PYTHON picks the python that has torch, numpy and pyarrow (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# (extract_store, the tiny CLIP through every site, is left out: with it .device and
# the working tree pass the device tool's 64 MiB; the shapes tests extract on the device.)
TESTS="clip_parity llava_parity shapes_clip_parity shapes_llava_parity"

section() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }

# One extraction, timed: NAME then mmprobe extract's flags.
timed_extract() {
  local name=$1 t0 t1
  shift
  section "extract $name: mmprobe extract $*"
  t0=$(now)
  if ! .device/mmprobe extract "$@"; then
    echo "$name FAILED"
    return 1
  fi
  t1=$(now)
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  echo "$name: $wall s wall (process start, CUDA set-up and model loading included)"
  TIMINGS+=("$name $wall")
}

run_all() {
  local device=${DEVICE:-cuda:0} py=${PYTHON:-python3} work
  work=$(mktemp -d)
  local fails=()
  TIMINGS=()

  section "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  for v in TORCH_ALLOW_TF32_CUBLAS_OVERRIDE NVIDIA_TF32_OVERRIDE; do echo "$v=${!v-<unset>}"; done
  # f32 must be f32 here, and --allow-tf32 must be free to use TF32.
  export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=0
  unset NVIDIA_TF32_OVERRIDE
  echo "running with TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=0, NVIDIA_TF32_OVERRIDE unset; device $device"
  .device/mmprobe doctor

  for t in $TESTS; do
    section "$t with MMPROBE_TEST_DEVICE=$device"
    if MMPROBE_TEST_DEVICE=$device ".device/$t" --test-threads 1; then :; else fails+=("$t"); fi
  done

  local data=datasets/shapes/data.csv
  local clip=(--model datasets/models/shapes-clip --data "$data" --towers vision,text --sites resid,embeds
    --layers all --select cls,eos,mean,pooled --force)
  local llava=(--model datasets/models/shapes-llava --data "$data" --towers decoder --sites resid
    --layers all --select last,mean_image,mean_text --logit-lens 5 --force)
  if [[ $device == cuda* ]]; then
    section "f32 on $device refuses TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1"
    if TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 .device/mmprobe extract "${clip[@]}" --out "$work/refused" --device "$device"; then
      echo "NOT refused"
      fails+=(tf32-override-refusal)
    else
      echo "refused, as it should be"
    fi
  fi

  local runs=("cpu --device cpu" "f32 --device $device --dtype f32" "tf32 --device $device --dtype f32 --allow-tf32")
  for r in "${runs[@]}"; do
    read -r name flags <<<"$r"
    # shellcheck disable=SC2086
    timed_extract "shapes-clip/$name" "${clip[@]}" --out "$work/$name/clip" $flags || fails+=("extract-clip-$name")
    # shellcheck disable=SC2086
    timed_extract "shapes-llava/$name" "${llava[@]}" --out "$work/$name/llava" $flags || fails+=("extract-llava-$name")
  done
  # --allow-tf32 also accepts libtorch's TF32 override for every matmul: the whole model in TF32.
  export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
  timed_extract "shapes-clip/tf32-matmul" "${clip[@]}" --out "$work/tf32-matmul/clip" --device "$device" --allow-tf32 \
    || fails+=(extract-clip-tf32-matmul)
  timed_extract "shapes-llava/tf32-matmul" "${llava[@]}" --out "$work/tf32-matmul/llava" --device "$device" \
    --allow-tf32 || fails+=(extract-llava-tf32-matmul)
  export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=0

  section "timings (wall, seconds)"
  printf '%s\n' "${TIMINGS[@]}"
  for m in clip llava; do
    section "shapes-$m: each store against the CPU store"
    for s in cpu f32 tf32 tf32-matmul; do
      "$py" -c 'import json, sys; m = json.load(open(sys.argv[1]))["model"]
print(sys.argv[2].ljust(12), "manifest: device", m["device"], "dtype", m["dtype"], "allow_tf32", m.get("allow_tf32"))' \
        "$work/$s/$m/manifest.json" "$s" || true
    done
    "$py" scripts/compare_stores.py "$work/cpu/$m" "$work"/{f32,tf32,tf32-matmul}/$m \
      --json "${OUT:-$work}/compare_$m.json" || fails+=("compare-$m")
  done

  if [[ $device == cuda* ]]; then
    section "the patch embedding alone at real CLIP sizes, in PyTorch on $device"
    "$py" scripts/patch_embed_tf32.py || fails+=(patch-embed-bench)
  fi

  section "summary"
  rm -rf "$work"
  if ((${#fails[@]})); then
    echo "FAILED: ${fails[*]}"
    return 1
  fi
  echo "all passed"
}

case "${1:-}" in
  pack)
    cargo build --release -p mmprobe
    cargo test --release -p mmprobe-extract -p mmprobe-zoo --no-run 2>&1 | tee /tmp/mmprobe-testbins.txt >/dev/null
    rm -rf .device && mkdir -p .device
    cp target/release/mmprobe .device/
    for t in $TESTS; do
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
    LD_LIBRARY_PATH=$("${PYTHON:-python3}" -c "import torch,os;print(os.path.dirname(torch.__file__))")/lib
    (cd .device && xz -dkf ./*.xz && chmod +x mmprobe $TESTS)
    log=${OUT:-/tmp}/device_check.log
    mkdir -p "$(dirname "$log")"
    run_all 2>&1 | tee "$log"
    exit "${PIPESTATUS[0]}" ;;
  *) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
