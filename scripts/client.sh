#!/usr/bin/env bash
# Client tests: separate psql processes connecting over TCP as an ordinary (non-superuser)
# role, several at once. Each tests/client/*.sh prints "ok <name>" or "not ok <name>: why".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
su_psql() { "$here/as-postgres.sh" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

user=segment_client db=pg_segment_client
su_psql <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS $db;
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user') THEN
        CREATE ROLE $user LOGIN;
    END IF;
END \$\$;
ALTER ROLE $user PASSWORD '$user';
CREATE DATABASE $db OWNER $user;
SQL
su_psql -d "$db" <<SQL
SET client_min_messages = warning;
CREATE EXTENSION pg_segment;
-- what an analyst role needs to fit models (README, "Privileges")
GRANT USAGE, CREATE ON SCHEMA segment TO $user;
GRANT SELECT ON ALL TABLES IN SCHEMA segment TO $user;
GRANT INSERT ON segment.models, segment.centroids TO $user;
GRANT INSERT, DELETE ON segment.live TO $user;
GRANT UPDATE (name, description) ON segment.centroids TO $user;
GRANT EXECUTE ON FUNCTION _segment_enqueue() TO $user;
SQL
export PGHOST=127.0.0.1 PGPORT=${PGPORT:-5432} PGUSER=$user PGPASSWORD=$user PGDATABASE=$db

passed=0 failed=0
for t in "$root"/tests/client/*.sh; do
    out=$(bash "$t" 2>&1) || true
    echo "$out"
    passed=$((passed + $(grep -c '^ok ' <<<"$out" || true)))
    failed=$((failed + $(grep -c '^not ok ' <<<"$out" || true)))
done
echo "client: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
