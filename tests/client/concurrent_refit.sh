#!/usr/bin/env bash
# Readers never see a half-written model while it is re-fitted, and two concurrent fits of
# the same model both succeed as consecutive versions. Bounded: fixed iteration counts and a
# time limit on every client.
set -uo pipefail
q() { timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fit="SELECT count(*) FROM segment_users('demo_orders', options => '{\"as_of\": \"2026-06-01\", \"events\": \"demo_events\", \"k_range\": [4, 8]}')"

q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_demo(5000, 3, '2026-06-01')" >/dev/null
q -c "SET client_min_messages = warning" -c "$fit" >/dev/null
users=$(q -c "SELECT count(*) FROM segment.default_users")
check "first fit assigns every user" "$users" "5000"

# Reader 1: every statement sees all users, all under one version, and that version is the
# current one in segment.models (same snapshot).
(
    for i in $(seq 1 400); do
        q -c "SELECT count(*) || ' ' || count(*) FILTER (WHERE model_version <> (SELECT max(version) FROM segment.models WHERE model = 'default')) || ' ' || count(DISTINCT model_version) FROM segment.default_users" \
            || echo "error"
        [ -e "$work/done" ] && break
    done > "$work/reader1"
) &
# Reader 2: point lookups keep answering for known users.
(
    for i in $(seq 1 400); do
        q -c "SELECT count(*) FROM generate_series(1, 50) g WHERE segment_of(g) IS NULL" || echo "error"
        [ -e "$work/done" ] && break
    done > "$work/reader2"
) &
# Writers: three sequential re-fits on one connection, one more concurrently on another.
q -c "SET client_min_messages = warning" -c "$fit" -c "$fit" -c "$fit" > "$work/writer1" 2>&1 &
w1=$!
q -c "SET client_min_messages = warning" -c "$fit" > "$work/writer2" 2>&1 &
w2=$!
wait $w1; s1=$?
wait $w2; s2=$?
touch "$work/done"
wait

check "sequential re-fits succeed" "$s1" "0"
check "concurrent re-fit succeeds" "$s2" "0"
check "versions are consecutive" "$(q -c "SELECT string_agg(version::text, ',' ORDER BY version) FROM segment.models WHERE model = 'default'")" "1,2,3,4,5"
bad1=$(grep -cv '^5000 0 1$' "$work/reader1")
check "readers never see a partial or mixed model ($(wc -l < "$work/reader1") reads)" "$bad1" "0"
bad2=$(grep -cv '^0$' "$work/reader2")
check "segment_of answers during re-fits ($(wc -l < "$work/reader2") reads)" "$bad2" "0"
check "every version has its centroids" "$(q -c "SELECT count(DISTINCT version) FROM segment.centroids WHERE model = 'default'")" "5"
