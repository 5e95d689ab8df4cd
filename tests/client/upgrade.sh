#!/usr/bin/env bash
# Upgrade: install the previous released version (0.1.0, kept frozen in sql/), create a model
# with live triggers, ALTER EXTENSION pg_segment UPDATE, and check the model, its assignments
# and live mode survive. Runs as the postgres superuser in a throw-away database.
set -uo pipefail
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
here=$(cd "$(dirname "$0")" && pwd)
as_pg="$here/../../scripts/as-postgres.sh"
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
db=pg_segment_upgrade
previous=0.1.0
current=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -1)
q() { timeout 300 "$as_pg" psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
"$as_pg" psql -X -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
fresh=pg_segment_upgrade_fresh
"$as_pg" psql -X -q -c "DROP DATABASE IF EXISTS $fresh" -c "CREATE DATABASE $fresh" >/dev/null
trap '"$as_pg" psql -X -q -c "DROP DATABASE IF EXISTS $db" -c "DROP DATABASE IF EXISTS $fresh" >/dev/null 2>&1' EXIT
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION pg_segment VERSION '$previous'" \
  -c "SELECT count(*) FROM segment_demo(600, 4, date_trunc('day', now()), 'up')" \
  -c "SELECT count(*) FROM segment_users('up_orders', model => 'up', options => '{\"events\": \"up_events\", \"live\": \"sync\"}')" >/dev/null
# 0.1.0's queue had a primary key (its triggers de-duplicated on insert); this library's code
# makes it without one, so put it back to have what a 0.1.0 installation has
q -c "ALTER TABLE segment.up_queue ADD PRIMARY KEY (user_id)"
check "version $previous installs" "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_segment'")" "$previous"
fingerprint() {
    q -c "SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
            SELECT 'm' || model || version || params::text AS x FROM segment.models
            UNION ALL SELECT 'c' || model || version || segment_id || name || centroid::text FROM segment.centroids
            UNION ALL SELECT 'u' || user_id || coalesce(segment_id, -1) || features::text || embedding::text FROM segment.up_users
            UNION ALL SELECT 'l' || model || mode FROM segment.live) s"
}
before=$(fingerprint)
# the order features of every customer as of a fixed day, by 0.1.0's aggregate (hour and weekday
# computed by SQL) and, after the update, by the current one (from the local time)
order_features() {
    q -c "SELECT md5(string_agg(user_id || ':' || f::text, ',' ORDER BY user_id)) FROM (
            SELECT user_id, _segment_order_features($1, amount::float8, NULL::int, pg_catalog.hashtextextended(category, 0),
                     $2 '2026-06-01', '2026-05-01', '2026-03-01', '{0.5,0.5}', false) AS f
            FROM up_orders WHERE amount::float8 NOT IN ('NaN', 'Infinity', '-Infinity') GROUP BY user_id) s"
}
features_before=$(order_features created_at "extract(hour FROM created_at AT TIME ZONE 'America/New_York')::int,
                     extract(isodow FROM created_at AT TIME ZONE 'America/New_York') >= 6,")
q -c "ALTER EXTENSION pg_segment UPDATE" >/dev/null
check "ALTER EXTENSION pg_segment UPDATE reaches $current" "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_segment'")" "$current"
check "models, centroids, assignments and live mode survive the update" "$(fingerprint)" "$before"
check "the updated order features aggregate computes what 0.1.0's did" \
  "$(order_features "created_at, created_at AT TIME ZONE 'America/New_York'" "") ${#features_before}" "$features_before 32"
check "the update leaves room for HOT updates in the users table" \
  "$(q -c "SELECT reloptions::text FROM pg_class WHERE oid = 'segment.up_users'::regclass")" "{fillfactor=90,toast_tuple_target=8160}"
user=$(q -c "SELECT min(user_id) FROM up_personas WHERE persona = 'lapsed'")
q -c "INSERT INTO up_orders (user_id, created_at, amount, category)
      SELECT $user, date_trunc('day', now()) - g * interval '2 days', 20, 'grocery' FROM generate_series(1, 40) g" >/dev/null
check "live triggers keep working after the update" \
  "$(q -c "SELECT frequency >= 40 FROM segment.up_users WHERE user_id = $user")" "t"
check "the update re-wrote the live triggers (the queue lost its key, the trigger functions are not the extension's)" \
  "$(q -c "SELECT count(*) FROM pg_constraint WHERE conrelid = 'segment.up_queue'::regclass")/$(q -c "SELECT count(*) FROM pg_depend WHERE deptype = 'e' AND classid = 'pg_proc'::regclass AND objid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'segment'::regnamespace)")" "0/0"
q -c "SET client_min_messages = warning" -c "SELECT segment_live('up', 'async')" >/dev/null
q -c "INSERT INTO up_orders (user_id, created_at, amount, category)
      SELECT $user, date_trunc('day', now()) - g * interval '2 days', 20, 'books' FROM generate_series(1, 10) g" >/dev/null
check "async after the update: ten orders of one customer are one pending user, applied by segment_process" \
  "$(q -c "SELECT pending FROM segment.live_status WHERE model = 'up'")/$(q -c "SELECT segment_process('up')")/$(q -c "SELECT frequency >= 50 FROM segment.up_users WHERE user_id = $user")" "1/1/t"
check "a re-fit after the update writes the next version" \
  "$(q -c "SET client_min_messages = warning" -c "SELECT count(*) > 0 FROM segment_refresh('up', refit => true)" -c "SELECT max(version) FROM segment.models WHERE model = 'up'" | tail -1)" "2"

# The update script and a fresh install define the same functions (signatures, defaults, results).
functions() {
    timeout 60 "$as_pg" psql -X -q -At -d "$1" -c "
        SELECT md5(string_agg(f, '|' ORDER BY f)) FROM (
          SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') ' || pg_get_function_result(p.oid)
                 || ' ' || p.prosrc || coalesce((SELECT ' sspace ' || a.aggtransspace FROM pg_aggregate a
                                                 WHERE a.aggfnoid = p.oid), '') AS f
          FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid WHERE e.extname = 'pg_segment') s"
}
"$as_pg" psql -X -q -d $fresh -c "CREATE EXTENSION pg_segment" >/dev/null
check "the updated extension has the functions of a fresh install" "$(functions $db)" "$(functions $fresh)"
