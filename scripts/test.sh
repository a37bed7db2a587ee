#!/usr/bin/env bash
# The whole test suite: set-up when needed, then every crate's tests (release
# profile, the one CI and the demo build). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec cargo test --release --workspace "$@"
