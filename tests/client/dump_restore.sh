#!/usr/bin/env bash
# pg_dump -> pg_restore into a fresh database gives the same models, centroids and assignments,
# and the restored live triggers keep working. Runs as the postgres superuser (restoring
# CREATE EXTENSION needs one) on the main cluster, in two throw-away databases.
set -uo pipefail
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
here=$(cd "$(dirname "$0")" && pwd)
as_pg="$here/../../scripts/as-postgres.sh"
bin=/usr/lib/postgresql/15/bin
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
src=pg_segment_dump_src dst=pg_segment_dump_dst
work=$(mktemp -d /tmp/pg_segment_dump.XXXXXX); chmod 777 "$work"
cleanup() { "$as_pg" psql -X -q -c "DROP DATABASE IF EXISTS $src" -c "DROP DATABASE IF EXISTS $dst" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT
cleanup; work=$(mktemp -d /tmp/pg_segment_dump.XXXXXX); chmod 777 "$work"
q() { local db=$1; shift; timeout 300 "$as_pg" psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
"$as_pg" psql -X -q -c "CREATE DATABASE $src" -c "CREATE DATABASE $dst"
q $src -c "SET client_min_messages = warning" -c "CREATE EXTENSION pg_segment" \
  -c "SELECT count(*) FROM segment_demo(800, 3, date_trunc('day', now()), 'dr')" \
  -c "CREATE INDEX ON dr_orders (user_id)" \
  -c "SELECT count(*) FROM segment_users('dr_orders', model => 'dr', options => '{\"events\": \"dr_events\", \"live\": \"sync\"}')" \
  -c "SELECT segment_rename('dr', 1, 'Hand named', 'kept by the dump')" \
  -c "INSERT INTO dr_orders (user_id, created_at, amount, category) SELECT user_id, now(), 70, 'toys' FROM dr_personas WHERE user_id % 50 = 0" >/dev/null
"$as_pg" "$bin/pg_dump" -Fc -f "$work/src.dump" $src 2> "$work/dump.err"
check "pg_dump succeeds" "$?:$(wc -l < "$work/dump.err")" "0:0"
"$as_pg" "$bin/pg_restore" --exit-on-error -d $dst "$work/src.dump" 2> "$work/restore.err"
check "pg_restore into a fresh database succeeds" "$?" "0"
[ -s "$work/restore.err" ] && sed 's/^/# /' "$work/restore.err" | head -5
fingerprint() {
    q "$1" -c "SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
                 SELECT 'm' || model || version || k || dims || users || params::text AS x FROM segment.models
                 UNION ALL SELECT 'c' || model || version || segment_id || name || coalesce(description, '') || centroid::text FROM segment.centroids
                 UNION ALL SELECT 'u' || user_id || coalesce(segment_id, -1) || coalesce(cell, -1) || features::text || embedding::text FROM segment.dr_users
                 UNION ALL SELECT 'l' || model || mode FROM segment.live) s"
}
check "models, centroids, names, assignments and live mode are the same after restore" "$(fingerprint $dst)" "$(fingerprint $src)"
check "the history came along" "$(q $dst -c "SELECT count(*) FROM segment.dr_history")" "$(q $src -c "SELECT count(*) FROM segment.dr_history")"
# live mode works in the restored database: a lapsed customer starts buying again
user=$(q $dst -c "SELECT min(user_id) FROM dr_personas WHERE persona = 'lapsed'")
before=$(q $dst -c "SELECT updated_at FROM segment.dr_users WHERE user_id = $user")
q $dst -c "INSERT INTO dr_orders (user_id, created_at, amount, category)
           SELECT $user, date_trunc('day', now()) - g * interval '2 days', 20, 'grocery' FROM generate_series(1, 40) g" >/dev/null
check "the restored live triggers update the customer" \
  "$(q $dst -c "SELECT updated_at > '$before' AND frequency >= 40 FROM segment.dr_users WHERE user_id = $user")" "t"
check "segment_of and segment_similar_users work after restore" \
  "$(q $dst -c "SELECT segment_of($user, 'dr') IS NOT NULL AND (SELECT count(*) FROM segment_similar_users($user::int8, 5, 'dr')) = 5")" "t"
