-- segment_demo(): generated e-commerce data with six planted personas and the ground truth,
-- so anyone can try pg_segment (and the tests can measure it) without real customers.
--
-- Creates (replacing them) <prefix>_orders(order_id, user_id, created_at, amount, category),
-- <prefix>_events(user_id, event_time, event_type, category) and <prefix>_personas(user_id,
-- persona) in the first schema of the search_path. Deterministic for a given seed and as_of.
CREATE FUNCTION segment_demo(
    users int DEFAULT 20000,
    seed int DEFAULT 42,
    as_of timestamptz DEFAULT date_trunc('day', now()),
    prefix text DEFAULT 'demo'
) RETURNS TABLE (persona text, customers bigint, orders bigint, events bigint)
LANGUAGE plpgsql VOLATILE
SET max_parallel_workers_per_gather = 0
AS $fn$
DECLARE
    o text := quote_ident(prefix || '_orders');
    e text := quote_ident(prefix || '_events');
    p text := quote_ident(prefix || '_personas');
BEGIN
    IF users IS NULL OR users < 1 OR users > 10000000 THEN
        RAISE EXCEPTION 'users must be between 1 and 10000000, not %', users
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prefix IS NULL OR prefix !~ '^[a-z_][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'invalid prefix "%"', prefix
            USING ERRCODE = 'invalid_name',
                  HINT = 'use lowercase letters, digits and underscores';
    END IF;
    PERFORM setseed(((seed % 1000000) / 1000000.0)::float8);

    EXECUTE format('DROP TABLE IF EXISTS %s, %s, %s', o, e, p);
    EXECUTE format('CREATE TABLE %s (user_id bigint PRIMARY KEY, persona text NOT NULL)', p);
    EXECUTE format('CREATE TABLE %s (order_id bigserial PRIMARY KEY, user_id bigint NOT NULL,
                    created_at timestamptz NOT NULL, amount numeric(12,2) NOT NULL, category text)', o);
    EXECUTE format('CREATE TABLE %s (user_id bigint NOT NULL, event_time timestamptz NOT NULL,
                    event_type text NOT NULL, category text)', e);

    -- Persona by a fixed permutation of 100 slots: 10 champions, 20 frequent small buyers,
    -- 18 bargain hunters, 17 new customers, 20 lapsed, 15 browsers.
    EXECUTE format($q$
        INSERT INTO %s
        SELECT g, CASE
            WHEN s < 10 THEN 'champions'
            WHEN s < 30 THEN 'frequent_small'
            WHEN s < 48 THEN 'bargain_hunters'
            WHEN s < 65 THEN 'new_customers'
            WHEN s < 85 THEN 'lapsed'
            ELSE 'browsers' END
        FROM generate_series(1, $1) g, LATERAL (SELECT (g * 37) %% 100 AS s) x
        ORDER BY g$q$, p) USING users;

    -- Per-user behaviour parameters, drawn in user order (deterministic after setseed).
    EXECUTE format($q$
        CREATE TEMP TABLE pg_segment_demo_params ON COMMIT DROP AS
        SELECT user_id, persona,
            CASE persona
                WHEN 'champions'       THEN 18 + floor(random() * 18)
                WHEN 'frequent_small'  THEN 35 + floor(random() * 36)
                WHEN 'bargain_hunters' THEN 8 + floor(random() * 9)
                WHEN 'new_customers'   THEN 1 + floor(random() * 2)
                WHEN 'lapsed'          THEN 4 + floor(random() * 7)
                ELSE 1 + floor(random() * 1.3)
            END::int AS n_orders,
            CASE persona
                WHEN 'champions'       THEN 180 + random() * 220
                WHEN 'frequent_small'  THEN 10 + random() * 15
                WHEN 'bargain_hunters' THEN 6 + random() * 8
                WHEN 'new_customers'   THEN 35 + random() * 55
                WHEN 'lapsed'          THEN 40 + random() * 50
                ELSE 15 + random() * 25
            END AS aov,
            CASE persona
                WHEN 'champions'       THEN random() * 12
                WHEN 'frequent_small'  THEN random() * 6
                WHEN 'bargain_hunters' THEN 10 + random() * 35
                WHEN 'new_customers'   THEN random() * 14
                WHEN 'lapsed'          THEN 240 + random() * 300
                ELSE 60 + random() * 240
            END AS recency,
            CASE persona
                WHEN 'new_customers' THEN random() * 5
                ELSE 200 + random() * 500
            END AS span,
            CASE persona
                WHEN 'champions'       THEN 18
                WHEN 'frequent_small'  THEN 7
                WHEN 'bargain_hunters' THEN 21
                ELSE 10 + floor(random() * 10)::int
            END AS hour_base,
            CASE persona WHEN 'bargain_hunters' THEN 0.75 ELSE 0.25 END AS weekend_p,
            CASE persona
                WHEN 'champions'       THEN ARRAY['electronics', 'home']
                WHEN 'frequent_small'  THEN ARRAY['grocery', 'beauty']
                WHEN 'bargain_hunters' THEN ARRAY['fashion', 'toys']
                WHEN 'lapsed'          THEN ARRAY['books', 'sports']
                WHEN 'browsers'        THEN ARRAY['fashion', 'electronics']
                ELSE (SELECT array_agg(c ORDER BY random()) FROM unnest(ARRAY['electronics','home','grocery','beauty','fashion','toys','books','sports']) c WHERE user_id > 0)
            END AS cats,
            CASE persona
                WHEN 'browsers'        THEN 60 + floor(random() * 90)
                WHEN 'champions'       THEN 20 + floor(random() * 30)
                WHEN 'bargain_hunters' THEN 25 + floor(random() * 30)
                WHEN 'frequent_small'  THEN 15 + floor(random() * 20)
                WHEN 'new_customers'   THEN 5 + floor(random() * 10)
                ELSE floor(random() * 5)
            END::int AS n_views,
            CASE persona
                WHEN 'browsers'        THEN 0.08
                WHEN 'champions'       THEN 0.5
                WHEN 'frequent_small'  THEN 0.6
                ELSE 0.3
            END AS cart_p
        FROM %s ORDER BY user_id$q$, p);

    -- Orders: the first is the latest (`recency` days before the day before as_of), the rest spread over `span`.
    EXECUTE format($q$
        INSERT INTO %s (user_id, created_at, amount, category)
        SELECT user_id,
               ((d - CASE WHEN random() < weekend_p THEN ((extract(isodow FROM d)::int + 1) %% 7) ELSE 0 END)::timestamp
                 + make_interval(hours => least(23, hour_base + floor(random() * 3)::int),
                                 mins => floor(random() * 60)::int)) AT TIME ZONE 'UTC',
               round((aov * (0.6 + 0.8 * random()))::numeric, 2),
               CASE WHEN random() < 0.8 THEN cats[1 + floor(random() * 2)::int]
                    ELSE (ARRAY['electronics','home','grocery','beauty','fashion','toys','books','sports'])[1 + floor(random() * 8)::int]
               END
        FROM (SELECT q.*, i,
                     ($1::timestamptz AT TIME ZONE 'UTC')::date
                       - 1 - (recency + CASE WHEN i = 1 THEN 0 ELSE random() * span END)::int AS d
              FROM pg_segment_demo_params q, generate_series(1, q.n_orders) i
              ORDER BY q.user_id, i) x$q$, o) USING as_of;

    -- Events: views, some carts, a purchase per order, occasional searches.
    EXECUTE format($q$
        INSERT INTO %s (user_id, event_time, event_type, category)
        SELECT user_id,
               $1 - make_interval(secs => ((recency + random() * greatest(span, 30)) * 86400)::int),
               CASE WHEN i <= n_views THEN CASE WHEN random() < cart_p * 0.4 THEN 'cart'
                                                WHEN random() < 0.1 THEN 'search' ELSE 'view' END
                    ELSE 'purchase' END,
               cats[1 + floor(random() * 2)::int]
        FROM pg_segment_demo_params q, generate_series(1, q.n_views + q.n_orders) i
        ORDER BY q.user_id, i$q$, e) USING as_of;

    EXECUTE format('ANALYZE %s; ANALYZE %s; ANALYZE %s', o, e, p);
    RETURN QUERY EXECUTE format($q$
        SELECT q.persona, count(*)::bigint, sum(q.n_orders)::bigint, sum(q.n_views + q.n_orders)::bigint
        FROM pg_segment_demo_params q GROUP BY q.persona ORDER BY q.persona$q$);
    DROP TABLE pg_segment_demo_params;
END
$fn$;
COMMENT ON FUNCTION segment_demo(int, int, timestamptz, text) IS
    'generate demo orders, events and planted personas (ground truth) for trying pg_segment';
