#!/usr/bin/env bash
# An analyst whose maintenance_work_mem is too small for the order features aggregate is told so
# up front (NOTICE with the memory needed and a hint), the fit still succeeds, and the session's
# settings are as before.
set -uo pipefail
q() { timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_demo(3000, 4, date_trunc('day', now()), 'mn')" >/dev/null
fit="SELECT count(*) FROM segment_users('mn_orders', 3, 'mn')"
small=$(q -c "SET maintenance_work_mem = '1MB'" -c "SET work_mem = '64kB'" -c "SET hash_mem_multiplier = 1" \
          -c "$fit" -c "SHOW work_mem" 2>"$work/small.err")
check "a fit with 1MB of maintenance_work_mem succeeds and leaves work_mem alone" "$(tr '\n' ' ' <<<"$small")" "3 64kB "
check "it says up front that the order features need more memory" \
  "$(grep -c 'pg_segment: the order features of [0-9]* rows need at least [0-9]* MB, more than the 1 MB maintenance_work_mem allows' "$work/small.err")" "1"
check "and how much to set" "$(grep -c "HINT:  SET maintenance_work_mem = '[0-9]*MB' makes this fit faster" "$work/small.err")" "1"
q -c "ANALYZE mn_orders" -c "SET maintenance_work_mem = '1MB'" -c "SET work_mem = '64kB'" -c "SET hash_mem_multiplier = 1" \
  -c "SELECT count(*) FROM segment_refresh('mn', refit => false)" >/dev/null 2>"$work/refresh.err"
check "a refresh says so too" "$(grep -c "HINT:  SET maintenance_work_mem = '[0-9]*MB' makes this refresh faster" "$work/refresh.err")" "1"
q -c "SET maintenance_work_mem = '256MB'" -c "$fit" >/dev/null 2>"$work/large.err"
check "with enough memory it says nothing about it" "$(grep -c 'need at least' "$work/large.err")" "0"
