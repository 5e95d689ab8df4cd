#!/usr/bin/env bash
# Async mode scheduled with pg_cron drains the queue. pg_cron must be preloaded, so this runs a
# throw-away cluster of its own (port 5499, socket in its data directory) and stops it after.
# Bounded: waits at most 150 s for the minute-granularity schedule to fire.
set -uo pipefail
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE  # this test talks to its own cluster
here=$(cd "$(dirname "$0")" && pwd)
as_pg="$here/../../scripts/as-postgres.sh"
bin=/usr/lib/postgresql/15/bin
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
data=$(mktemp -d /tmp/pg_segment_cron.XXXXXX)
chmod 755 "$data"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
stop() { "$as_pg" "$bin/pg_ctl" -D "$data/db" -m fast stop >/dev/null 2>&1; rm -rf "$data"; }
trap stop EXIT
"$as_pg" "$bin/initdb" -D "$data/db" -A trust >/dev/null || { echo "not ok cron: initdb failed"; exit 0; }
cat >> "$data/db/postgresql.conf" <<CONF
port = 5499
listen_addresses = ''
unix_socket_directories = '$data'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
CONF
"$as_pg" "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w start >/dev/null || { echo "not ok cron: start failed"; cat "$data/log"; exit 0; }
q() { timeout 120 "$as_pg" psql -X -q -At -v ON_ERROR_STOP=1 -h "$data" -p 5499 -d postgres "$@"; }

q -c "SET client_min_messages = warning" -c "CREATE EXTENSION pg_segment" -c "CREATE EXTENSION pg_cron" \
  -c "SELECT count(*) FROM segment_demo(500, 1)" \
  -c "SELECT count(*) FROM segment_users('demo_orders', k => 4, options => '{\"events\": \"demo_events\", \"live\": \"async\"}')" >/dev/null
q -c "INSERT INTO demo_orders (user_id, created_at, amount, category) SELECT g, now(), 42, 'books' FROM generate_series(1, 25) g" >/dev/null
check "orders are queued in async mode" "$(q -c "SELECT pending FROM segment.live_status")" "25"
q -c "SELECT cron.schedule('segment-process', '* * * * *', \$\$SELECT segment_process('default')\$\$)" >/dev/null
pending=25
deadline=$((SECONDS + 150))
while [ "$SECONDS" -lt "$deadline" ]; do
    pending=$(q -c "SELECT pending FROM segment.live_status")
    [ "$pending" = 0 ] && break
    sleep 5
done
check "a pg_cron job drains the queue within two minutes" "$pending" "0"
check "the job's runs succeeded" "$(q -c "SELECT count(*) > 0 AND bool_and(status = 'succeeded') FROM cron.job_run_details")" "t"
check "the queued orders are in the features" \
  "$(q -c "SELECT count(*) FROM segment.default_users u WHERE user_id <= 25 AND u.updated_at > (SELECT since FROM segment.live)")" "25"
