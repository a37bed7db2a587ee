#!/usr/bin/env bash
# Renders a report.html in headless Chromium (Debian's `chromium` package) to a PNG.
#   scripts/screenshot_report.sh DIR/report.html OUT.png [HEIGHT]
set -euo pipefail
html=$(realpath "$1"); out=$(realpath -m "$2"); height=${3:-6000}
command -v chromium >/dev/null || { echo "screenshot: needs chromium (apt-get install chromium)" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,"$height" \
  --screenshot="$out" "file://$html" 2>/dev/null
echo "screenshot $out"
