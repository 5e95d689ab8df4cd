-- pg_segment state: readable by BI tools with plain SQL.
-- Per-model relations are created by segment_users(): segment.<model>_users (features,
-- embedding, segment per user; user_id has the source key's own type) and the view
-- segment.<model>_segments (user_id, segment_id, segment name).

CREATE SCHEMA segment;
COMMENT ON SCHEMA segment IS 'pg_segment models, centroids and per-user segments';

CREATE TABLE segment.models (
    model        text        NOT NULL,
    version      int         NOT NULL,
    source       regclass    NOT NULL,
    events       regclass,
    key_type     text        NOT NULL,
    users_table  name        NOT NULL,
    k            int         NOT NULL,
    dims         int         NOT NULL,  -- embedding width
    users        bigint      NOT NULL,
    rows_used    bigint      NOT NULL,
    rows_skipped bigint      NOT NULL,
    spec         jsonb       NOT NULL,  -- detected columns, options, feature catalogue
    params       jsonb       NOT NULL,  -- scaler, encoder weights, centroids: the fitted model
    metrics      jsonb       NOT NULL,  -- quality metrics, the score of every k tried, embedding errors
    skipped      jsonb       NOT NULL,  -- rows skipped by reason, duplicates
    trained_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);
COMMENT ON TABLE segment.models IS 'one row per fitted model version; the highest version is current';

CREATE TABLE segment.centroids (
    model          text    NOT NULL,
    version        int     NOT NULL,
    segment_id     int     NOT NULL,
    name           text    NOT NULL,
    description    text,
    users          bigint  NOT NULL,
    share          float8  NOT NULL,
    centroid       real[]  NOT NULL,
    top_categories text[]  NOT NULL DEFAULT '{}',
    profile        jsonb   NOT NULL,  -- distinguishing features: scaled means vs the population
    category_mix   jsonb   NOT NULL DEFAULT '{}',  -- mean category share of the members at fit
    PRIMARY KEY (model, version, segment_id),
    UNIQUE (model, version, name),
    FOREIGN KEY (model, version) REFERENCES segment.models ON DELETE CASCADE
);
COMMENT ON TABLE segment.centroids IS 'segments of every model version: centroid in embedding space, name, size at fit';

-- Models whose segments are kept current by triggers (segment_live).
CREATE TABLE segment.live (
    model      text        PRIMARY KEY,
    mode       text        NOT NULL CHECK (mode IN ('sync', 'async')),
    source     regclass    NOT NULL,
    events     regclass,
    since      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE segment.live IS 'models kept current by triggers, and how (sync or async)';

-- The current version of each model, with its live mode.
CREATE VIEW segment.current_models AS
SELECT DISTINCT ON (m.model) m.*, coalesce(l.mode, 'off') AS live
FROM segment.models m LEFT JOIN segment.live l USING (model)
ORDER BY m.model, m.version DESC;

-- Long form of the centroids, BigQuery ML.CENTROIDS style.
CREATE VIEW segment.centroid_values AS
SELECT c.model, c.version, c.segment_id, c.name, d.dimension::int AS dimension, d.value::float8 AS value
FROM segment.centroids c
JOIN segment.current_models m USING (model, version),
     unnest(c.centroid) WITH ORDINALITY AS d(value, dimension);

-- The silhouette / Davies-Bouldin score of every k tried by automatic k.
CREATE VIEW segment.k_scores AS
SELECT m.model, m.version, (s->>'k')::int AS k,
       (s->>'silhouette')::float8 AS silhouette,
       (s->>'davies_bouldin')::float8 AS davies_bouldin,
       (s->>'inertia')::float8 AS inertia,
       (s->>'k')::int = m.k AS chosen
FROM segment.models m, jsonb_array_elements(m.metrics->'k_scores') s;

SELECT pg_catalog.pg_extension_config_dump('segment.models', '');
SELECT pg_catalog.pg_extension_config_dump('segment.live', '');
SELECT pg_catalog.pg_extension_config_dump('segment.centroids', '');
