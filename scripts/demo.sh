#!/usr/bin/env bash
# The main job: set-up when needed, build, then run mmprobe's bundled demo
# (shapes-clip on the bundled shapes split: extract, probe, directions,
# geometry, report). Extra arguments go to `mmprobe demo` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p mmprobe
exec target/release/mmprobe demo "$@"
