#!/usr/bin/env bash
# Loads generated demo data into database pg_segment_demo, segments it and prints the result.
# Safe to re-run: the data and the model are replaced.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
db=${DEMO_DB:-pg_segment_demo}
users=${DEMO_USERS:-20000}
psql() { "$here/as-postgres.sh" psql -X -v ON_ERROR_STOP=1 "$@"; }

psql -q -tc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 || psql -q -c "CREATE DATABASE $db"
psql -d "$db" -q <<SQL
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_segment CASCADE;
CREATE EXTENSION pg_segment;
SQL
echo "== generating $users demo customers with six planted personas"
psql -d "$db" -c "SELECT * FROM segment_demo($users)"
echo "== SELECT * FROM segment_users('demo_orders', options => '{\"events\": \"demo_events\"}')"
psql -d "$db" -c "SELECT * FROM segment_users('demo_orders', options => '{\"events\": \"demo_events\"}')"
echo "== segment_describe()"
psql -d "$db" -c "SELECT segment_id, name, users, round(share::numeric, 3) AS share,
                         round(recency_days::numeric, 1) AS recency_days, round(frequency::numeric, 1) AS frequency,
                         round(monetary::numeric, 2) AS monetary, top_categories
                  FROM segment_describe() ORDER BY segment_id"
echo "== segment_evaluate()"
psql -d "$db" -c "SELECT metric, round(value::numeric, 4) AS value FROM segment_evaluate()"
echo "== planted persona vs segment (the generator's ground truth)"
psql -d "$db" -c "SELECT p.persona, s.segment, count(*) AS users
                  FROM demo_personas p JOIN segment.default_segments s USING (user_id)
                  GROUP BY 1, 2 ORDER BY 1, 3 DESC"
echo "try it:  sudo -u postgres psql $db   then   SELECT segment_of(42);"
