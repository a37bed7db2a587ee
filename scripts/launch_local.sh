#!/usr/bin/env bash
# N extraction processes into one store at once, one per GPU of this machine.
#
#   scripts/launch_local.sh N --model DIR --data FILE --out STORE [other extract flags]
#
# Process i runs `mmprobe extract FLAGS --shard i/N --device cuda:0` with
# CUDA_VISIBLE_DEVICES=i, logging to $LOG_DIR/mmprobe-shard-i.log (LOG_DIR
# defaults to the current folder). Waits for all; exits 1 naming the shards
# that failed (rerun the same command: finished chunks are kept).
# MMPROBE_DEVICE=cpu runs the N processes on the CPU instead (--device cpu, no
# CUDA_VISIBLE_DEVICES). MMPROBE names the binary (default: mmprobe on PATH).
set -euo pipefail
n=${1:?usage: scripts/launch_local.sh N EXTRACT_FLAGS...}
shift
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "launch_local: N must be a positive number, not '$n'" >&2; exit 2; }
bin=${MMPROBE:-mmprobe}
logs=${LOG_DIR:-.}
mkdir -p "$logs"
pids=()
for ((i = 0; i < n; i++)); do
  log="$logs/mmprobe-shard-$i.log"
  if [[ ${MMPROBE_DEVICE:-cuda} == cpu ]]; then
    "$bin" extract "$@" --shard "$i/$n" --device cpu >"$log" 2>&1 &
  else
    CUDA_VISIBLE_DEVICES=$i "$bin" extract "$@" --shard "$i/$n" --device cuda:0 >"$log" 2>&1 &
  fi
  pids+=($!)
done
failed=()
for ((i = 0; i < n; i++)); do
  wait "${pids[$i]}" || failed+=("$i")
done
if ((${#failed[@]})); then
  echo "launch_local: shards ${failed[*]} of $n failed; see $logs/mmprobe-shard-<i>.log" >&2
  exit 1
fi
# The last shard to finish says the store is complete.
if grep -qh "^store .*(complete)" "$logs"/mmprobe-shard-*.log; then
  grep -h "^store .*(complete)" "$logs"/mmprobe-shard-*.log | head -1
else
  echo "launch_local: every shard finished but none saw the store complete; see $logs" >&2
  exit 1
fi
