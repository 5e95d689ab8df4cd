-- Column detection from common names, explicit columns, and every key type.
SET client_min_messages = warning;

CREATE TABLE shop (
    order_no bigserial, customer_id text, ordered_at date, total numeric(10,2), department text
);
INSERT INTO shop (customer_id, ordered_at, total, department)
SELECT 'c' || (g % 60), date '2026-01-01' + (g % 150), 5 + (g * 7) % 90, (ARRAY['a', 'b', 'c'])[1 + g % 3]
FROM generate_series(1, 900) g;

SELECT count(*) AS segments FROM segment_users('shop', 3, 'shop', options => '{"as_of": "2026-06-01"}');
SELECT spec->'columns' AS detected FROM segment.current_models WHERE model = 'shop';
SELECT format_type(atttypid, atttypmod) AS key_type
FROM pg_attribute WHERE attrelid = 'segment.shop_users'::regclass AND attname = 'user_id';

-- a mixed-case, quoted table in its own schema, columns passed explicitly
CREATE SCHEMA "Sales Data";
CREATE TABLE "Sales Data"."Orders; DROP TABLE shop" ("Client" uuid, "When" timestamptz, "Amt" float8);
INSERT INTO "Sales Data"."Orders; DROP TABLE shop"
SELECT md5((g % 40)::text)::uuid, timestamptz '2026-01-01' + g * interval '5 hours', (g % 11) * 2.5 + 1
FROM generate_series(1, 600) g;
SELECT count(*) AS segments
FROM segment_users('"Sales Data"."Orders; DROP TABLE shop"', 2, 'sales', user_column => 'Client',
                   time_column => 'When', amount_column => 'Amt', options => '{"as_of": "2026-06-01"}');
SELECT count(*) AS shop_still_there FROM shop;
SELECT format_type(atttypid, atttypmod) AS key_type
FROM pg_attribute WHERE attrelid = 'segment.sales_users'::regclass AND attname = 'user_id';
SELECT segment_of(md5('3')::uuid, 'sales') IS NOT NULL AS uuid_lookup;
-- int4 keys, and integer literals of any width for a bigint key
CREATE TABLE small_keys AS SELECT (g % 30)::int4 AS user_id, timestamptz '2026-01-01' + g * interval '1 day' AS ts, g % 17 + 1 AS amount FROM generate_series(1, 300) g;
SELECT count(*) AS segments FROM segment_users('small_keys', 2, 'small', options => '{"as_of": "2026-12-01"}');
SELECT segment_of(5, 'small') = segment_of(5::int8, 'small') AS any_width,
       segment_of(5, 'default') IS NOT DISTINCT FROM segment_of(5::int2, 'default') AS bigint_key;
