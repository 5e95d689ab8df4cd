#!/usr/bin/env bash
# segment_plot: each kind is a valid SVG that headless Chromium (Debian `chromium`, no network)
# renders into a picture that is not blank.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
q() { timeout 120 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
work=$(mktemp -d); chmod 755 "$work"; trap 'rm -rf "$work"' EXIT
q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_demo(1500, 8, date_trunc('day', now()), 'pl')" \
  -c "SELECT count(*) FROM segment_users('pl_orders', model => 'pl', options => '{\"live\": \"sync\"}')" >/dev/null
# a few days of history for the sizes chart
q -c "INSERT INTO pl_orders (user_id, created_at, amount, category)
      SELECT user_id, now(), 500, 'electronics' FROM pl_personas WHERE persona = 'bargain' ORDER BY user_id LIMIT 40" >/dev/null
q -c "UPDATE segment.pl_history SET changed_at = changed_at - interval '3 days' WHERE reason = 'fit'" 2>/dev/null || true
browser=$(command -v chromium || command -v chromium-browser || true)
for kind in map sizes profile; do
    q -c "SELECT segment_plot('pl', '$kind')" > "$work/$kind.svg"
    check "segment_plot $kind is well-formed SVG" \
      "$(python3 -c 'import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(r.tag)' "$work/$kind.svg" 2>&1)" \
      "{http://www.w3.org/2000/svg}svg"
    if [ -z "$browser" ]; then echo "not ok $kind renders: chromium is not installed (make deps installs it)"; continue; fi
    timeout 120 "$browser" --headless=new --no-sandbox --disable-gpu --no-first-run --no-default-browser-check \
        --disable-background-networking --disable-component-update --disable-sync --disable-extensions \
        --disable-default-apps --metrics-recording-only --user-data-dir="$work/profile" \
        --proxy-server='direct://' --proxy-bypass-list='*' --hide-scrollbars \
        --window-size=800,500 --screenshot="$work/$kind.png" "file://$work/$kind.svg" >"$work/$kind.log" 2>&1
    read -r w h colours coloured < <(python3 "$here/lib/png_stats.py" "$work/$kind.png" 2>&1 || echo "0 0 0 0")
    check "segment_plot $kind renders in Chromium at 800x500" "$w $h" "800 500"
    check "segment_plot $kind is not blank (>= 5 colours, >= 1% drawn)" \
      "$(awk -v c="$colours" -v s="$coloured" 'BEGIN {print (c >= 5 && s >= 0.01) ? "yes" : "no: " c " colours, " s " drawn"}')" "yes"
done
check "an unknown kind is refused with 22023" \
  "$(q -c "SELECT segment_plot('pl', 'pie')" 2>&1 | grep -o 'unknown plot kind' | head -1)" "unknown plot kind"
