#!/usr/bin/env bash
# Crashes: `pg_ctl stop -m immediate` in the middle of segment_users, segment_refresh and
# segment_process, five times at different points. After each restart the previous model version
# (or the new one, complete) is in force, no committed order is lost, live mode still works, and
# every user's features and segment equal a batch recompute. Own throw-away cluster (port 5498).
set -uo pipefail
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
here=$(cd "$(dirname "$0")" && pwd)
as_pg="$here/../../scripts/as-postgres.sh"
bin=/usr/lib/postgresql/15/bin
rounds=${CRASH_ROUNDS:-6}
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
data=$(mktemp -d /tmp/pg_segment_crash.XXXXXX); chmod 755 "$data"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
stop() { "$as_pg" "$bin/pg_ctl" -D "$data/db" -m immediate stop >/dev/null 2>&1; rm -rf "$data"; }
trap stop EXIT
"$as_pg" "$bin/initdb" -D "$data/db" -A trust >/dev/null || { echo "not ok crash: initdb failed"; exit 0; }
printf "port = 5498\nlisten_addresses = ''\nunix_socket_directories = '%s'\n" "$data" >> "$data/db/postgresql.conf"
start() { "$as_pg" "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w start >/dev/null; }
crash() { "$as_pg" "$bin/pg_ctl" -D "$data/db" -m immediate stop >/dev/null 2>&1; }
q() { timeout 300 "$as_pg" psql -X -q -At -h "$data" -p 5498 -d postgres -v ON_ERROR_STOP=1 "$@"; }
start
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION pg_segment" \
  -c "SELECT count(*) FROM segment_demo(3000, 9, date_trunc('day', now()), 'cr')" \
  -c "CREATE INDEX ON cr_orders (user_id)" -c "CREATE INDEX ON cr_events (user_id)" \
  -c "SELECT count(*) FROM segment_users('cr_orders', model => 'cr', options => '{\"events\": \"cr_events\", \"k_range\": [4, 7], \"live\": \"sync\"}')" >/dev/null
t0=$(date +%s.%N); q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_refresh('cr', refit => true)" >/dev/null
fit_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
echo "# a re-fit takes $fit_s s here"

crashes=0 lost=0 inconsistent=0
for round in $(seq 1 "$rounds"); do
    ops=(refit refresh process)
    op=${ops[$(( (round - 1) % 3 ))]}
    # committed orders before the crash: these must survive it
    q -c "INSERT INTO cr_orders (user_id, created_at, amount, category)
          SELECT user_id, now(), 15 + $round, 'toys' FROM cr_personas WHERE user_id % 97 = $round" >/dev/null
    if [ "$op" = process ]; then
        q -c "SELECT segment_live('cr', 'async')" >/dev/null
        q -c "INSERT INTO cr_orders (user_id, created_at, amount, category)
              SELECT user_id, now(), 33, 'books' FROM cr_personas WHERE user_id % 5 = $((round % 5))" >/dev/null
        sql="SELECT segment_process('cr', 1000000)"
    elif [ "$op" = refresh ]; then sql="SELECT count(*) FROM segment_refresh('cr', refit => false)"
    else sql="SELECT count(*) FROM segment_refresh('cr', refit => true)"; fi
    orders=$(q -c "SELECT count(*) FROM cr_orders")
    version=$(q -c "SELECT max(version) FROM segment.models WHERE model = 'cr'")
    q -c "SET client_min_messages = warning" -c "$sql" >/dev/null 2>&1 &
    # crash at a different point of the call each round: 10% .. 90% of a re-fit's duration
    sleep "$(awk -v s="$fit_s" -v r="$round" -v n="$rounds" 'BEGIN {printf "%.2f", s * (0.1 + 0.8 * (r - 1) / (n > 1 ? n - 1 : 1))}')"
    crash; wait; crashes=$((crashes + 1))
    start
    after=$(q -c "SELECT count(*) FROM cr_orders")
    [ "$after" = "$orders" ] || lost=$((lost + 1))
    check "round $round ($op): no committed order lost" "$after" "$orders"
    cur=$(q -c "SELECT max(version) FROM segment.models WHERE model = 'cr'")
    check "round $round ($op): the previous version or a complete new one is in force" \
      "$(q -c "SELECT ($cur = $version OR $cur = $version + 1)
                 AND (SELECT count(*) FROM segment.centroids WHERE model = 'cr' AND version = $cur) = (SELECT k FROM segment.models WHERE model = 'cr' AND version = $cur)
                 AND (SELECT count(*) FROM segment.cr_users WHERE model_version <> $cur) = 0")" "t"
    if [ "$op" = process ]; then
        # the queue survived the crash: drain what is left, then back to sync
        q -c "SELECT segment_process('cr', 1000000)" >/dev/null
        check "round $round ($op): the queue is drained after the restart" "$(q -c "SELECT pending FROM segment.live_status WHERE model = 'cr'")" "0"
        q -c "SELECT segment_live('cr', 'sync')" >/dev/null
    fi
    # live mode still works
    u=$(( round * 11 ))
    q -c "INSERT INTO cr_orders (user_id, created_at, amount, category) VALUES ($u, now(), 99, 'books')" >/dev/null
    check "round $round ($op): live mode still updates a customer" \
      "$(q -c "SELECT updated_at >= now() - interval '1 minute' FROM segment.cr_users WHERE user_id = $u")" "t"
    # consistency: stored state vs a batch recompute (fields that do not move with the clock)
    q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS cr_state" -c "CREATE TABLE cr_state AS SELECT user_id, frequency, monetary FROM segment.cr_users" \
      -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_refresh('cr', refit => false)" >/dev/null
    bad=$(q -c "SELECT count(*) FROM cr_state l FULL JOIN segment.cr_users b USING (user_id)
                WHERE l.user_id IS NULL OR b.user_id IS NULL OR l.frequency IS DISTINCT FROM b.frequency
                   OR abs(l.monetary - b.monetary) > 1e-9 * greatest(1, abs(b.monetary))")
    [ "$bad" = 0 ] || inconsistent=$((inconsistent + 1))
    check "round $round ($op): every user's features equal a batch recompute" "$bad" "0"
done
echo "# crash: $crashes crashes, $lost rounds with lost orders, $inconsistent inconsistent rounds"
