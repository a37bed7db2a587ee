#!/usr/bin/env bash
# Executes every notebook in notebooks/ in place, from a clean notebooks/out/
# (the git-ignored folder the notebooks write their stores to), with the
# .venv Python kernel. A notebook with an error cell fails; the script exits
# non-zero when any did, after running them all.
#
#   scripts/notebooks.sh               every notebooks/NN-*.ipynb
#   scripts/notebooks.sh NOTEBOOK...   only these
#
# Needs `scripts/setup.sh --dev` (nbclient, ipykernel, matplotlib, duckdb,
# polars, scikit-learn in .venv) and `cargo build --release -p mmprobe`.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
case "${1:-}" in -h|--help) sed -n '2,11p' "$0"; exit 0 ;; esac

die() { echo "notebooks: $*" >&2; exit 1; }
py="$repo/.venv/bin/python"
[ -x "$py" ] || die "no .venv: run scripts/setup.sh --dev"
"$py" -c 'import nbclient, nbformat, ipykernel, matplotlib, duckdb, polars, sklearn' 2>/dev/null \
  || die "the notebook packages are missing from .venv: run scripts/setup.sh --dev"
[ -x target/release/mmprobe ] || die "no target/release/mmprobe: run cargo build --release -p mmprobe"

if [ $# -gt 0 ]; then notebooks=("$@"); else notebooks=(notebooks/[0-9]*.ipynb); fi
# The kernel is .venv's own python3 (found first, whatever the user's Jupyter set-up holds).
export JUPYTER_DATA_DIR="$repo/.venv/share/jupyter"
rm -rf notebooks/out
mkdir -p notebooks/out

passed=0 failed=0 t_all=$SECONDS
for nb in "${notebooks[@]}"; do
  t0=$SECONDS
  if "$py" - "$nb" <<'PY'
import sys, nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                        resources={"metadata": {"path": "notebooks"}})
try:
    client.execute()
    ok = True
except CellExecutionError as e:
    print(str(e)[-3000:], file=sys.stderr)
    ok = False
nbformat.write(nb, path)  # in place, with the error cell's output when it failed
sys.exit(0 if ok else 1)
PY
  then
    passed=$((passed + 1)); echo "notebooks: $nb ok in $((SECONDS - t0)) s"
  else
    failed=$((failed + 1)); echo "notebooks: $nb FAILED after $((SECONDS - t0)) s"
  fi
done
echo "notebooks: $passed passed, $failed failed in $((SECONDS - t_all)) s"
[ $failed -eq 0 ]
