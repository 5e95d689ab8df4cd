#!/usr/bin/env bash
# Eight writer connections insert, update and delete orders for overlapping customers for
# STRESS_SECONDS (60) while segment_refresh runs three times and the model is re-fitted once;
# then the same in async mode with two concurrent segment_process callers. 0 errors, 0
# deadlocks, and afterwards every customer is consistent: features and segment equal a batch
# recompute, everyone is under the current version, and the history has no gaps (each change
# starts where the previous one ended, the last one ends in the current segment).
set -uo pipefail
q() { timeout 600 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
secs=${STRESS_SECONDS:-60}
work=$(mktemp -d); [ -n "${KEEP_WORK:-}" ] || trap 'rm -rf "$work"' EXIT; [ -n "${KEEP_WORK:-}" ] && echo "# work: $work"
q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_demo(3000, 6, now(), 'ws')" \
  -c "CREATE INDEX ON ws_orders (user_id)" -c "CREATE INDEX ON ws_events (user_id)" >/dev/null
q -c "SET client_min_messages = warning" \
  -c "SELECT count(*) FROM segment_users('ws_orders', model => 'ws', options => '{\"events\": \"ws_events\", \"k_range\": [4, 8], \"live\": \"sync\"}')" >/dev/null

writer() {  # $1 writer, $2 deadline (epoch s); customers 1..200 shared by all writers
    local w=$1 end=$2 i=0
    while [ "$(date +%s)" -lt "$end" ]; do
        i=$((i + 1))
        local u=$(( (i * 7 + w * 13) % 200 + 1 )) v=$(( (i * 11 + w * 3) % 200 + 1 ))
        case $(( (i + w) % 5 )) in
            0) echo "INSERT INTO ws_orders (user_id, created_at, amount, category) VALUES ($u, now() - interval '$((i % 48)) hours', $((i % 90 + 5)), 'books');" ;;
            1) echo "UPDATE ws_orders SET amount = amount + 1 WHERE order_id = (SELECT max(order_id) FROM ws_orders WHERE user_id = $u);" ;;
            2) echo "DELETE FROM ws_orders WHERE order_id = (SELECT min(order_id) FROM ws_orders WHERE user_id = $u);" ;;
            3) echo "UPDATE ws_orders SET user_id = $v WHERE order_id = (SELECT max(order_id) FROM ws_orders WHERE user_id = $u);" ;;
            4) echo "INSERT INTO ws_orders (user_id, created_at, amount, category) SELECT $u, now() - g * interval '1 day', 20, 'toys' FROM generate_series(1, 3) g;" ;;
        esac
        if [ $((i % 25)) = 0 ]; then sleep 0.05; fi
    done | q > "$work/writer$w.out" 2>&1
    echo $? > "$work/writer$w.rc"
}
consistent() {  # $1 label
    q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS ws_state" \
      -c "CREATE TABLE ws_state AS SELECT user_id, segment_id, model_version, frequency, monetary FROM segment.ws_users" >/dev/null
    check "$1: everyone is under the current version" \
      "$(q -c "SELECT count(*) FROM ws_state WHERE model_version <> (SELECT max(version) FROM segment.models WHERE model = 'ws')")" "0"
    check "$1: the history has no gaps" "$(q -c "
      WITH h AS (SELECT user_id, from_segment, to_segment,
                        lag(to_segment) OVER (PARTITION BY user_id ORDER BY changed_at, ctid) AS prev,
                        row_number() OVER (PARTITION BY user_id ORDER BY changed_at DESC, ctid DESC) AS last
                 FROM segment.ws_history)
      SELECT (SELECT count(*) FROM h WHERE prev IS DISTINCT FROM from_segment AND prev IS NOT NULL)
           + (SELECT count(*) FROM h JOIN ws_state s USING (user_id) WHERE h.last = 1 AND h.to_segment IS DISTINCT FROM s.segment_id)")" "0"
    q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_refresh('ws', refit => false)" >/dev/null
    check "$1: stored features and segments equal a batch recompute" "$(q -c "
      SELECT count(*) FROM ws_state l FULL JOIN segment.ws_users b USING (user_id)
      WHERE l.user_id IS NULL OR b.user_id IS NULL OR l.frequency IS DISTINCT FROM b.frequency
         OR abs(l.monetary - b.monetary) > 1e-9 * greatest(1, abs(b.monetary))")" "0"
}
run() {  # $1 label, then the maintenance to run during the writes
    local label=$1; shift
    local end=$(( $(date +%s) + secs ))
    for w in 1 2 3 4 5 6 7 8; do writer "$w" "$end" & done
    "$@"
    wait
    local errors=0
    for w in 1 2 3 4 5 6 7 8; do [ "$(cat "$work/writer$w.rc")" = 0 ] || errors=$((errors + 1)); done
    check "$label: 8 writers for ${secs} s without an error" "$errors" "0"
    [ "$errors" = 0 ] || grep -h -m2 -E 'ERROR|FATAL' "$work"/writer*.out | sort | uniq -c | head -5 | sed 's/^/# /'
    check "$label: no deadlock, no fallback warning" "$(cat "$work"/writer*.out | grep -ciE 'deadlock|WARNING')" "0"
}
sync_maintenance() {
    local ok=0
    for i in 1 2 3; do
        sleep $(( secs / 5 ))
        q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_refresh('ws', refit => false)" >/dev/null 2>>"$work/maint.err" || ok=1
    done
    q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_refresh('ws', refit => true)" >/dev/null 2>>"$work/maint.err" || ok=1
    echo $ok > "$work/maint.rc"
}
run "sync" sync_maintenance
check "sync: three refreshes and a re-fit during the writes succeed" "$(cat "$work/maint.rc")" "0"
consistent "sync"

q -c "SELECT segment_live('ws', 'async')" >/dev/null
async_maintenance() {
    local end=$(( $(date +%s) + secs )) p
    for p in 1 2; do
        ( while [ "$(date +%s)" -lt "$end" ]; do q -c "SELECT segment_process('ws', 50)" >/dev/null || { echo 1 > "$work/proc$p.rc"; break; }; sleep 0.2; done
          [ -f "$work/proc$p.rc" ] || echo 0 > "$work/proc$p.rc" ) &
    done
    wait
}
run "async" async_maintenance
check "async: two concurrent segment_process callers without an error" "$(cat "$work/proc1.rc")$(cat "$work/proc2.rc")" "00"
q -c "SELECT segment_process('ws', 1000000)" >/dev/null
check "async: the queue is empty after a final drain" "$(q -c "SELECT pending FROM segment.live_status WHERE model = 'ws'")" "0"
consistent "async"
