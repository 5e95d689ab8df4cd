#!/usr/bin/env bash
# In-database #[pg_test] tests. initdb refuses root, so PostgreSQL runs as the postgres user
# in a throw-away data directory.
set -euo pipefail
pg_major=$1
pgdata=$(mktemp -d /tmp/pg_segment_pgtest.XXXXXX)
trap 'rm -rf "$pgdata"' EXIT
args=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$pgdata"
    args=(--runas postgres --pgdata "$pgdata")
fi
cargo pgrx test "pg$pg_major" "${args[@]}"
