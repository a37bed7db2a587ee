#!/usr/bin/env bash
# The main job: set-up when needed, build, then run mmprobe's bundled demo.
# Until the demo lands (issue 7) this prints `mmprobe doctor`'s report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p mmprobe
exec target/release/mmprobe doctor "$@"
