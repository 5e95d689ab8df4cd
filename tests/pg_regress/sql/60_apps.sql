-- Acting on segments: top categories, recommendations, lookalikes, names, erasure, privacy.
SET client_min_messages = warning;

SELECT count(*) AS segments
FROM segment_users('demo_orders', 4, 'apps', options => '{"as_of": "2026-06-01", "seed": 5}');

-- what each segment buys more than everybody (lift = share / population share)
SELECT c.segment_id, t.category, round(t.share::numeric, 3) AS share, round(t.lift::numeric, 2) AS lift
FROM segment.centroids c, LATERAL segment_top_categories(c.segment_id, 'apps', 2) t
WHERE c.model = 'apps' AND c.version = 1 ORDER BY c.segment_id, t.lift DESC;

-- a known customer gets their segment's favourites, never what they already buy a lot
SELECT category, round(score::numeric, 2) AS score, reason
FROM segment_recommend(42, 3, 'apps');
-- a customer the model does not know gets the population's favourites
SELECT category, reason FROM segment_recommend(-1, 2, 'apps');

-- lookalikes: the banded index search returns exactly the brute-force nearest users
WITH fast AS (
    SELECT array_agg(similar_user ORDER BY distance, similar_user) AS ids
    FROM segment_similar_users(42, 10, 'apps')),
brute AS (
    SELECT array_agg(user_id ORDER BY d, user_id) AS ids FROM (
        SELECT u.user_id,
               sqrt((SELECT sum((a::float8 - b::float8) ^ 2) FROM unnest(u.embedding, me.embedding) x(a, b))) AS d
        FROM segment.apps_users u, segment.apps_users me
        WHERE me.user_id = 42 AND u.user_id <> 42 AND u.segment_id IS NOT NULL
        ORDER BY d, u.user_id LIMIT 10) s)
SELECT fast.ids::int8[] = brute.ids AS same_as_brute_force, cardinality(fast.ids) AS found FROM fast, brute;
SELECT pg_typeof(similar_user) FROM segment_similar_users(42::int8, 1, 'apps');

-- names people give survive a label-stable re-fit
SELECT segment_rename('apps', 1, 'VIP', 'hand-picked name');
SELECT count(*) AS refit_segments FROM segment_refresh('apps', refit => true);
SELECT version, segment_id, name, description FROM segment.centroids
WHERE model = 'apps' AND segment_id = 1 ORDER BY version;
SELECT sqlstate_of($$SELECT segment_rename('apps', 2, 'VIP')$$) AS duplicate_name,
       sqlstate_of($$SELECT segment_rename('apps', 99, 'x')$$) AS no_such_segment;

-- privacy: small segments are merged (or left out) in reports
SET pg_segment.min_segment_size = 100000;
SELECT count(*) AS reported_segments FROM segment_describe('apps');
SELECT count(*) AS top_categories_of_a_small_segment FROM segment_top_categories(1, 'apps');
RESET pg_segment.min_segment_size;
SELECT count(*) AS reported_segments FROM segment_describe('apps');
SELECT sqlstate_of($$SELECT * FROM segment_describe('apps', epsilon => -1)$$) AS bad_epsilon;
-- with a generous epsilon the noisy sizes are close to the exact ones
SELECT bool_and(abs(n.users - e.users) <= 50) AS noisy_sizes_close
FROM segment_describe('apps', epsilon => 1) n JOIN segment_describe('apps') e USING (segment_id);

-- erasure: every trace of customer 42 is gone from the model
SELECT segment_forget(42, 'apps') > 0 AS removed;
SELECT (SELECT count(*) FROM segment.apps_users WHERE user_id = 42) AS users_rows,
       (SELECT count(*) FROM segment.apps_history WHERE user_id = 42) AS history_rows,
       segment_of(42, 'apps') AS segment;
