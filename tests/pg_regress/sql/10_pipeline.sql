-- Acceptance: 20k generated customers with six planted personas, orders and events.
SET client_min_messages = warning;

SELECT segment_id, name, users
FROM segment_users('demo_orders', options => '{"as_of": "2026-06-01", "events": "demo_events"}')
ORDER BY segment_id;

-- automatic k finds the planted number of personas, and the segments match them
SELECT k AS chosen_k, (SELECT count(DISTINCT persona) FROM demo_personas) AS planted
FROM segment.current_models WHERE model = 'default';
SELECT adjusted_rand('demo_personas', 'default') >= 0.9 AS ari_at_least_0_9;

-- each planted persona lands in one named segment
SELECT p.persona, s.segment, count(*) AS users
FROM demo_personas p JOIN segment.default_segments s USING (user_id)
GROUP BY 1, 2 HAVING count(*) > 100 ORDER BY 1;

-- the autoencoder / PCA choice and both held-out errors are recorded
SELECT metrics->'embedding'->>'chosen' IN ('autoencoder', 'pca') AS chosen_recorded,
       (metrics->'embedding'->>'autoencoder_holdout_mse')::float8 > 0 AS autoencoder_error,
       (metrics->'embedding'->>'pca_holdout_mse')::float8 > 0 AS pca_error,
       metrics->'embedding'->>'chosen' = CASE
           WHEN (metrics->'embedding'->>'autoencoder_holdout_mse')::float8
              < (metrics->'embedding'->>'pca_holdout_mse')::float8 THEN 'autoencoder' ELSE 'pca' END
           AS lower_error_kept
FROM segment.current_models WHERE model = 'default';

-- every k tried has its scores; exactly one is chosen
SELECT count(*) AS k_tried, count(*) FILTER (WHERE chosen) AS chosen,
       bool_and(silhouette BETWEEN -1 AND 1) AS silhouettes_in_range
FROM segment.k_scores WHERE model = 'default';

-- rows used and skipped add up; orders after as_of are the only ones skipped here
SELECT rows_used + rows_skipped = (SELECT count(*) FROM demo_orders) AS adds_up,
       rows_skipped = (SELECT count(*) FROM demo_orders WHERE created_at > '2026-06-01') AS skipped_after_as_of
FROM segment.current_models WHERE model = 'default';

-- determinism: the same seed and data give identical centroids and assignments
CREATE TEMP TABLE first_fit AS SELECT user_id, segment_id, embedding FROM segment.default_users;
SELECT count(*) AS segments
FROM segment_users('demo_orders', options => '{"as_of": "2026-06-01", "events": "demo_events"}');
SELECT count(*) AS changed_centroids
FROM segment.centroids a JOIN segment.centroids b USING (model, segment_id)
WHERE a.model = 'default' AND a.version = 1 AND b.version = 2 AND a.centroid IS DISTINCT FROM b.centroid;
SELECT count(*) AS changed_users
FROM first_fit f JOIN segment.default_users u USING (user_id)
WHERE f.segment_id IS DISTINCT FROM u.segment_id OR f.embedding IS DISTINCT FROM u.embedding;
