-- Shared set-up for every pg_regress test: the extension, two helpers and the demo data.
SET client_min_messages = warning;
CREATE EXTENSION pg_segment;

-- SQLSTATE a statement fails with (NULL when it succeeds); its effects are rolled back.
CREATE FUNCTION sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;

-- Adjusted Rand index between a ground truth and a model's segments (noise = its own label).
CREATE FUNCTION adjusted_rand(truth regclass, model text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE r float8;
BEGIN
    EXECUTE format($q$
        WITH t AS (SELECT p.persona AS a, coalesce(u.segment_id, -1) AS b
                   FROM %s p JOIN segment.%I u USING (user_id)),
             n AS (SELECT count(*)::float8 AS n FROM t),
             ij AS (SELECT sum(c * (c - 1) / 2) AS s FROM (SELECT count(*)::float8 c FROM t GROUP BY a, b) x),
             ai AS (SELECT sum(c * (c - 1) / 2) AS s FROM (SELECT count(*)::float8 c FROM t GROUP BY a) x),
             bj AS (SELECT sum(c * (c - 1) / 2) AS s FROM (SELECT count(*)::float8 c FROM t GROUP BY b) x)
        SELECT (ij.s - ai.s * bj.s / (n.n * (n.n - 1) / 2))
             / ((ai.s + bj.s) / 2 - ai.s * bj.s / (n.n * (n.n - 1) / 2))
        FROM n, ij, ai, bj $q$, truth, model || '_users') INTO r;
    RETURN r;
END $$;

SELECT * FROM segment_demo(20000, 42, '2026-06-01');
