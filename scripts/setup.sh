#!/usr/bin/env bash
# Makes LibTorch available to the build: a venv holding torch==2.11.0 from the
# Python package index, shared by every clone of this user (it is 4.6 GB), and a
# link `.libtorch` in the repo that .cargo/config.toml points torch-sys at.
#
#   scripts/setup.sh          torch only (what building and testing need)
#   scripts/setup.sh --dev    also transformers, scikit-learn... for scripts/fixtures and bench/
#
# Idempotent: a second run checks the versions and returns in seconds.
# MMPROBE_VENV overrides where the venv lives.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want_torch=2.11.0
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "setup: $*" >&2; exit 1; }

# crates/mmprobe-jpeg builds libjpeg-turbo (Pillow's JPEG decoder) from the source that
# turbojpeg-sys vendors: cmake drives that build and nasm assembles its SIMD code.
missing=()
for tool in cmake nasm; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} (libjpeg-turbo's build needs them), then rerun"
  as_root=""; [ "$(id -u)" = 0 ] || as_root="sudo"
  echo "setup: apt-get install ${missing[*]} (libjpeg-turbo's build needs them)"
  { $as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed (is the Debian package index reachable?)"
fi

py=${PYTHON:-python3}
command -v "$py" >/dev/null 2>&1 || die "no python3 on PATH (install Python >= 3.10, or set PYTHON=/path/to/python)"
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "'$py' does not run"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || die "python $pyver is too old: torch $want_torch needs >= 3.10"

venv=${MMPROBE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mmprobe/venv-torch$want_torch-py$pyver}
vpy="$venv/bin/python"

# One lock per venv: two clones setting up at once must not both pip into it.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
base_stamp=$(stamp_of "$repo/scripts/requirements.txt")
dev_stamp=$(stamp_of "$repo/scripts/requirements.txt" "$repo/scripts/requirements-dev.txt")

if [ ! -x "$vpy" ]; then
  echo "setup: creating venv $venv"
  "$py" -m venv "$venv" 2>/dev/null || die "python $pyver cannot make a venv (on Debian: apt-get install python3-venv)"
fi
"$vpy" -m pip --version >/dev/null 2>&1 || die "the venv at $venv has no pip (delete it and rerun, or install python3-pip)"

install() { # $1 = requirements file, $2 = stamp file, $3 = the stamp written there once installed
  # --no-cache-dir: the wheels (3 GB for torch and its CUDA libraries) would stay in pip's cache beside the venv.
  echo "setup: pip install -r ${1#$repo/} into $venv (first time: a few minutes, ~5 GB)"
  if ! "$vpy" -m pip install --disable-pip-version-check --no-cache-dir -q -r "$1"; then
    die "pip install failed: is the Python package index reachable? (rerun to retry)"
  fi
  echo "$3" >"$2"
}
[ "$(cat "$venv/.mmprobe-base" 2>/dev/null)" = "$base_stamp" ] || install "$repo/scripts/requirements.txt" "$venv/.mmprobe-base" "$base_stamp"
if [ $dev = 1 ]; then
  [ "$(cat "$venv/.mmprobe-dev" 2>/dev/null)" = "$dev_stamp" ] || install "$repo/scripts/requirements-dev.txt" "$venv/.mmprobe-dev" "$dev_stamp"
fi

torch_dir=$("$vpy" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) \
  || die "torch does not import from $venv (delete the venv and rerun)"
have=$("$vpy" -c 'import torch; print(torch.__version__.split("+")[0])')
[ "$have" = "$want_torch" ] || die "the venv has torch $have, mmprobe needs $want_torch (delete $venv and rerun)"
[ -f "$torch_dir/lib/libtorch.so" ] || die "$torch_dir/lib/libtorch.so is missing: the torch wheel is incomplete"

# The repo-local names the build and the scripts use (both git-ignored).
ln -sfn "$torch_dir" "$repo/.libtorch"
ln -sfn "$venv" "$repo/.venv"
echo "setup: ok, libtorch $have at $torch_dir"
