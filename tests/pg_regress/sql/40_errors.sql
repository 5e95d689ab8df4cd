-- Errors: real SQLSTATEs, lowercase messages, DETAIL and HINT that say what to fix.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;

CREATE TABLE two_keys (user_id int, customer_id int, created_at timestamptz, amount numeric);
CREATE TABLE no_amount (user_id int, created_at timestamptz, note text);
CREATE TABLE empty_orders (user_id int, created_at timestamptz, amount numeric);

SELECT * FROM segment_users('two_keys');
SELECT * FROM segment_users('no_amount');
SELECT * FROM segment_users('demo_orders', time_column => 'amount');
SELECT * FROM segment_users('demo_orders', user_column => 'buyer');
SELECT * FROM segment_users('empty_orders');
SELECT * FROM segment_users('demo_orders', k => 1);
SELECT * FROM segment_users('demo_orders', model => 'Q4 Customers');
SELECT * FROM segment_users('demo_orders', options => '{"algoritm": "kmeans"}');
SELECT * FROM segment_users('demo_orders', options => '{"k_range": [8, 3]}');
SELECT * FROM segment_users('demo_orders', options => '{"events": "page_views"}');
SELECT segment_of(1, 'nobody');

-- the SQLSTATE of each
SELECT q, sqlstate_of(q) FROM (VALUES
    ($$SELECT * FROM segment_users('two_keys')$$),
    ($$SELECT * FROM segment_users('no_amount')$$),
    ($$SELECT * FROM segment_users('demo_orders', time_column => 'amount')$$),
    ($$SELECT * FROM segment_users('empty_orders')$$),
    ($$SELECT * FROM segment_users('demo_orders', k => 1)$$),
    ($$SELECT * FROM segment_users('demo_orders', k => 30000)$$),
    ($$SELECT * FROM segment_users('demo_orders', model => 'Q4 Customers')$$),
    ($$SELECT * FROM segment_users('demo_orders', options => '{"seed": "x"}')$$),
    ($$SELECT * FROM segment_users('demo_orders', options => '{"events": "page_views"}')$$),
    ($$SELECT segment_of(1, 'nobody')$$)
) AS t(q);

-- nothing was written by the failed calls
SELECT count(*) AS models_written FROM segment.models WHERE model IN ('q4', 'nobody');
SELECT to_regclass('segment.empty_orders_users') AS leftover_table;
