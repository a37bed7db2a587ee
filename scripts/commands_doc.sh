#!/usr/bin/env bash
# Writes docs/commands.md from the binary's own --help, so the two agree
# (crates/mmprobe/tests/docs.rs checks it).
#   cargo build --release -p mmprobe && scripts/commands_doc.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/mmprobe}
out=docs/commands.md

# Subcommands of `mmprobe ARGS`, from its --help (none for a leaf command).
subcommands() {
  "$bin" "$@" --help | awk '/^Commands:/{on=1; next} on && /^$/{exit} on && /^  [a-z]/{print $1}' | grep -vx help || true
}

# Every leaf command, depth first, in the order --help lists them.
walk() {
  local subs
  subs=$(subcommands "$@")
  if [ -z "$subs" ]; then
    echo "$*"
    return
  fi
  for s in $subs; do walk "$@" "$s"; done
}

{
  cat <<'HEAD'
# Commands

Every command and flag, as `mmprobe <command> --help` prints them (this page
is generated from the binary by `scripts/commands_doc.sh`, and a test checks
that it still matches). Errors are one line on stderr with exit code 1; bad
usage exits 2. Long commands show progress on stderr: a bar on a terminal, and
elsewhere (a log, a notebook) a plain line every few seconds, with a last line
that ends `done`, or `stopped` when an error follows. What the analysis commands compute is in
[methods.md](methods.md); what `extract` writes is in
[store-format.md](store-format.md).

HEAD
  echo '```text'
  echo '$ mmprobe --help'
  "$bin" --help
  echo '```'
  for cmd in $(walk | tr ' ' '+'); do
    args=${cmd//+/ }
    printf '\n## mmprobe %s\n\n' "$args"
    echo '```text'
    echo "\$ mmprobe $args --help"
    # shellcheck disable=SC2086
    "$bin" $args --help
    echo '```'
  done
} > "$out"
echo "wrote $out"
