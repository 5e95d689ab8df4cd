#!/usr/bin/env bash
# Sharded setup with PostgreSQL's own machinery (docs/scaling.md): two shard clusters and a
# coordinator on loopback ports; the coordinator's orders table is hash-partitioned by user_id
# into postgres_fdw foreign partitions on the shards. segment_users over it must give the same
# segments as over the same rows in one local table.
set -euo pipefail
pg_major=${1:-15}
here=$(cd "$(dirname "$0")" && pwd)
bin=/usr/lib/postgresql/$pg_major/bin
base_port=${SHARDS_PORT:-5510}
work=$(mktemp -d /tmp/pg_segment_shards.XXXXXX); chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$work"
pg() { "$here/as-postgres.sh" "$@"; }
names=(coordinator shard0 shard1)
cleanup() {
    for i in 0 1 2; do pg "$bin/pg_ctl" -D "$work/${names[$i]}" -m immediate stop >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
[ -n "${SHARDS_DEBUG:-}" ] && trap - EXIT
for i in 0 1 2; do
    pg "$bin/initdb" -D "$work/${names[$i]}" --auth=trust -U postgres >/dev/null
    pg "$bin/pg_ctl" -D "$work/${names[$i]}" -l "$work/${names[$i]}.log" -w \
       -o "-p $((base_port + i)) -k $work -c listen_addresses=127.0.0.1 -c enable_partitionwise_aggregate=on" start >/dev/null
done
sql() { local port=$1; shift; pg psql -X -q -At -v ON_ERROR_STOP=1 -h "$work" -p "$port" -d postgres "$@"; }
c=$base_port
for s in 0 1; do
    # pg_segment on the shards too, so its aggregates can run there (postgres_fdw ships
    # functions of the extensions named in the server's `extensions` option)
    sql $((base_port + 1 + s)) -c "SET client_min_messages = warning" -c "CREATE EXTENSION pg_segment" \
                               -c "CREATE TABLE orders_part (order_id bigint, user_id bigint NOT NULL, created_at timestamptz NOT NULL,
                                                            amount numeric(12,2) NOT NULL, category text)" \
                               -c "CREATE INDEX ON orders_part (user_id)"
done
sql $c >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION pg_segment;
CREATE EXTENSION postgres_fdw;
SELECT count(*) FROM segment_demo(4000, 5, '2026-06-01', 'one');
CREATE TABLE orders (order_id bigint, user_id bigint NOT NULL, created_at timestamptz NOT NULL,
                     amount numeric(12,2) NOT NULL, category text) PARTITION BY HASH (user_id);
DO \$\$ BEGIN FOR s IN 0..1 LOOP
    EXECUTE format('CREATE SERVER shard%s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host %L, port %L, dbname %L, extensions %L)',
                   s, '127.0.0.1', ($base_port + 1 + s)::text, 'postgres', 'pg_segment');
    EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER shard%s OPTIONS (user %L)', s, 'postgres');
    EXECUTE format('CREATE FOREIGN TABLE orders_%s PARTITION OF orders FOR VALUES WITH (MODULUS 2, REMAINDER %s)
                    SERVER shard%s OPTIONS (table_name %L)', s, s, s, 'orders_part');
END LOOP; END \$\$;
INSERT INTO orders SELECT * FROM one_orders;
SQL
ok=0 bad=0
check() { if [ "$2" = "$3" ]; then echo "ok $1"; ok=$((ok + 1)); else echo "not ok $1: expected '$3', got '$2'"; bad=$((bad + 1)); fi; }
check "the shards hold the orders, split by user" \
  "$(sql $((base_port + 1)) -c "SELECT count(*) > 0 FROM orders_part"),$(sql $((base_port + 2)) -c "SELECT count(*) > 0 FROM orders_part"),$(sql $c -c "SELECT (SELECT count(*) FROM orders) = (SELECT count(*) FROM one_orders)")" "t,t,t"
plan=$(sql $c -c "EXPLAIN (VERBOSE) SELECT user_id, count(*), sum(amount), max(created_at) FROM orders GROUP BY user_id")
check "a per-user aggregate is pushed down to both shards (partition-wise)" "$(grep -c 'Relations: Aggregate on' <<<"$plan")" "2"
opts='{"as_of": "2026-06-01", "seed": 11}'
sql $c -c "SET client_min_messages = warning" \
       -c "SELECT count(*) FROM segment_users('one_orders', model => 'one_node', options => '$opts')" \
       -c "SELECT count(*) FROM segment_users('orders', model => 'sharded', options => '$opts')" >/dev/null
check "the same k on one node and sharded" \
  "$(sql $c -c "SELECT string_agg(k::text, ',' ORDER BY model) FROM segment.current_models")" \
  "$(sql $c -c "SELECT k FROM segment.current_models WHERE model = 'one_node'"),$(sql $c -c "SELECT k FROM segment.current_models WHERE model = 'one_node'")"
check "every customer gets the same segment (sharded vs one node)" \
  "$(sql $c -c "SELECT count(*) FROM segment.one_node_users a FULL JOIN segment.sharded_users b USING (user_id)
                WHERE a.segment_id IS DISTINCT FROM b.segment_id")" "0"
check "the same features to 1e-9" \
  "$(sql $c -c "SELECT count(*) FROM segment.one_node_users a JOIN segment.sharded_users b USING (user_id),
                       unnest(a.features, b.features) f(x, y)
                WHERE abs(coalesce(x, 0) - coalesce(y, 0)) > 1e-9 * greatest(1, abs(x))")" "0"
echo "shards: $ok passed, $bad failed"
[ "$bad" = 0 ]
