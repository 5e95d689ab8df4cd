-- What BI tools read: plain views with a segment column and a segment name.
SET client_min_messages = warning;

SELECT column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'segment' AND table_name = 'default_segments'
ORDER BY ordinal_position;

-- one row per user of the demo, every assigned user has a segment name
SELECT count(*) = (SELECT count(*) FROM segment.default_users) AS all_users,
       count(*) FILTER (WHERE segment_id IS NOT NULL AND segment IS NULL) AS unnamed
FROM segment.default_segments;

-- join to a customer table without a cast
SELECT count(*) AS joined
FROM demo_personas c JOIN segment.default_segments s ON s.user_id = c.user_id;

-- describe: sizes add up to the users, RFM means are there, names unique
SELECT sum(users) = (SELECT count(*) FROM segment.default_users) AS sizes_add_up,
       count(DISTINCT name) = count(*) AS unique_names,
       bool_and(recency_days >= 0 AND frequency >= 0 AND monetary >= 0) AS rfm_present,
       bool_and(jsonb_typeof(profile) = 'object') AS profiles
FROM segment_describe();

-- evaluate: the documented metrics, in order
SELECT metric, value IS NOT NULL AS has_value FROM segment_evaluate();

-- centroids long form: k x dims rows for the current version
SELECT count(*) = (SELECT k * dims FROM segment.current_models WHERE model = 'default') AS centroid_values
FROM segment.centroid_values WHERE model = 'default';
