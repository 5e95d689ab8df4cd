// The batch pipeline end to end: segments, versions, determinism, preprocessing.

#[pg_test]
fn pg_test_segments_are_numbered_named_and_cover_everyone() {
    demo("p1", 600);
    Spi::run(&format!(
        "CREATE TEMP TABLE r AS SELECT * FROM segment_users('p1_orders', model => 'p1', \
         options => '{{{AS_OF}, \"events\": \"p1_events\", \"k_range\": [2, 8]}}')"
    ))
    .unwrap();
    let k: i64 = one("SELECT count(*) FROM r").unwrap();
    assert!(k >= 2);
    assert_eq!(one::<i64>("SELECT max(segment_id)::int8 FROM r"), Some(k), "ids are 1..k");
    assert_eq!(one::<i64>("SELECT min(segment_id)::int8 FROM r"), Some(1));
    assert_eq!(one::<i64>("SELECT count(DISTINCT name) FROM r"), Some(k), "names are unique");
    assert_eq!(one::<i64>("SELECT sum(users)::int8 FROM r"), Some(600));
    let share: f64 = one("SELECT sum(share) FROM r").unwrap();
    assert!((share - 1.0).abs() < 1e-9);
    // the per-user table agrees with the returned sizes
    assert_eq!(
        one::<i64>("SELECT count(*) FROM r JOIN (SELECT segment_id, count(*) n FROM segment.p1_users GROUP BY 1) u USING (segment_id) WHERE u.n = r.users"),
        Some(k)
    );
    // the model record keeps the detected columns and the score of every k tried
    assert_eq!(one::<String>("SELECT spec->'columns'->>'user' FROM segment.models WHERE model = 'p1'").as_deref(), Some("user_id"));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.k_scores WHERE model = 'p1'"), Some(7));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.k_scores WHERE model = 'p1' AND chosen"), Some(1));
}

#[pg_test]
fn pg_test_refit_writes_a_new_version_and_keeps_the_old_one() {
    demo("p2", 300);
    let fit = format!("SELECT count(*) FROM segment_users('p2_orders', 3, 'p2', options => '{{{AS_OF}}}')");
    Spi::run(&fit).unwrap();
    // the new users table has statistics at once (the live path plans joins against it)
    assert_eq!(
        one::<bool>("SELECT reltuples = (SELECT count(*) FROM segment.p2_users) FROM pg_class WHERE oid = 'segment.p2_users'::regclass"),
        Some(true)
    );
    Spi::run(&fit).unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.models WHERE model = 'p2'"), Some(2));
    assert_eq!(one::<i64>("SELECT count(DISTINCT version) FROM segment.centroids WHERE model = 'p2'"), Some(2));
    assert_eq!(one::<i32>("SELECT version FROM segment.current_models WHERE model = 'p2'"), Some(2));
    assert_eq!(
        one::<i64>("SELECT count(*) FROM segment.p2_users WHERE model_version <> 2"),
        Some(0),
        "every user is under the new version"
    );
}

#[pg_test]
fn pg_test_same_seed_same_centroids_and_assignments_with_any_thread_count() {
    demo("p3", 400);
    let fit = format!(
        "SELECT count(*) FROM segment_users('p3_orders', model => 'p3', options => '{{{AS_OF}, \"seed\": 5, \"events\": \"p3_events\"}}')"
    );
    Spi::run(&fit).unwrap();
    Spi::run("CREATE TEMP TABLE first_fit AS SELECT user_id, segment_id, embedding FROM segment.p3_users").unwrap();
    // the number of compute threads changes nothing
    Spi::run("SET pg_segment.max_threads = 1").unwrap();
    Spi::run(&fit).unwrap();
    Spi::run("RESET pg_segment.max_threads").unwrap();
    assert_eq!(
        one::<i64>(
            "SELECT count(*) FROM segment.centroids a JOIN segment.centroids b USING (model, segment_id) \
             WHERE model = 'p3' AND a.version = 1 AND b.version = 2 \
               AND (a.centroid <> b.centroid OR a.name <> b.name)"
        ),
        Some(0)
    );
    assert_eq!(
        one::<i64>(
            "SELECT count(*) FROM first_fit f JOIN segment.p3_users u USING (user_id) \
             WHERE f.segment_id IS DISTINCT FROM u.segment_id OR f.embedding <> u.embedding"
        ),
        Some(0)
    );
    assert_eq!(one::<String>("SELECT params::text FROM segment.models WHERE model = 'p3' AND version = 1"),
               one::<String>("SELECT params::text FROM segment.models WHERE model = 'p3' AND version = 2"));
}

#[pg_test]
fn pg_test_features_equal_plain_sql_aggregates() {
    demo("p4", 200);
    Spi::run(&format!("SELECT count(*) FROM segment_users('p4_orders', 2, 'p4', options => '{{{AS_OF}}}')")).unwrap();
    let mismatches: i64 = one(
        "SELECT count(*) FROM segment.p4_users u JOIN ( \
           SELECT user_id, count(*)::float8 AS frequency, sum(amount)::float8 AS monetary, \
                  extract(epoch FROM '2026-06-01'::timestamptz - max(created_at)) / 86400 AS recency_days, \
                  extract(epoch FROM '2026-06-01'::timestamptz - min(created_at)) / 86400 AS tenure_days \
           FROM p4_orders WHERE created_at <= '2026-06-01' GROUP BY user_id) o USING (user_id) \
         WHERE abs(u.frequency - o.frequency) > 1e-9 OR abs(u.monetary - o.monetary) > 1e-6 \
            OR abs(u.recency_days - o.recency_days) > 1e-6 OR abs(u.tenure_days - o.tenure_days) > 1e-6 \
            OR abs(u.avg_order_value - o.monetary / o.frequency) > 1e-6",
    )
    .unwrap();
    assert_eq!(mismatches, 0);
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.p4_users"), one::<i64>("SELECT count(DISTINCT user_id) FROM p4_orders"));
}

#[pg_test]
fn pg_test_unusable_rows_are_skipped_and_counted() {
    Spi::run(
        "CREATE TABLE dirty (customer_id int, ts timestamptz, total numeric, category text); \
         INSERT INTO dirty SELECT g % 40, '2026-01-01'::timestamptz + g * interval '1 hour', 10 + g % 7, 'c' || g % 3 \
           FROM generate_series(1, 400) g; \
         INSERT INTO dirty VALUES (NULL, '2026-01-01', 1, 'x'), (1, NULL, 1, 'x'), (2, '2026-01-01', NULL, 'x'), \
                                  (3, '2026-01-01', 'NaN', 'x'), (4, '2030-01-01', 5, 'x'), \
                                  (5, '2026-01-01 05:00', 16, 'c2'), (5, '2026-01-01 05:00', 16, 'c2');",
    )
    .unwrap();
    Spi::run(r#"SELECT count(*) FROM segment_users('dirty', 2, 'dirty', options => '{"as_of": "2026-06-01"}')"#).unwrap();
    let skipped: pgrx::JsonB = one("SELECT skipped FROM segment.models WHERE model = 'dirty'").unwrap();
    let s = skipped.0;
    assert_eq!(s["null_user"], 1);
    assert_eq!(s["null_time"], 1);
    assert_eq!(s["null_amount"], 1);
    assert_eq!(s["non_finite_amount"], 1);
    assert_eq!(s["after_as_of"], 1);
    assert_eq!(s["duplicates"], 1, "the repeated row, plus none in the generated ones");
    assert_eq!(one::<i64>("SELECT rows_skipped FROM segment.models WHERE model = 'dirty'"), Some(5));
    assert_eq!(one::<i64>("SELECT rows_used FROM segment.models WHERE model = 'dirty'"), Some(402));
    let freq_kept: f64 = one("SELECT frequency FROM segment.dirty_users WHERE user_id = 5").unwrap();
    Spi::run(r#"SELECT count(*) FROM segment_users('dirty', 2, 'dirty', options => '{"as_of": "2026-06-01", "dedupe": true}')"#).unwrap();
    let freq_dedup: f64 = one("SELECT frequency FROM segment.dirty_users WHERE user_id = 5").unwrap();
    assert_eq!(freq_kept - freq_dedup, 1.0, "dedupe counts the duplicate once");
}

#[pg_test]
fn pg_test_embedding_choice_is_recorded() {
    demo("p5", 300);
    let fit = |emb: &str| {
        Spi::run(&format!(
            "SELECT count(*) FROM segment_users('p5_orders', 3, 'p5_{emb}', options => '{{{AS_OF}, \"embedding\": \"{emb}\"}}')"
        ))
        .unwrap();
        let m: pgrx::JsonB = one(&format!("SELECT metrics FROM segment.models WHERE model = 'p5_{emb}'")).unwrap();
        m.0["embedding"].clone()
    };
    let auto = fit("auto");
    assert!(auto["autoencoder_holdout_mse"].is_number() && auto["pca_holdout_mse"].is_number());
    let chosen = auto["chosen"].as_str().unwrap();
    let (ae, pca) = (auto["autoencoder_holdout_mse"].as_f64().unwrap(), auto["pca_holdout_mse"].as_f64().unwrap());
    assert_eq!(chosen, if ae < pca { "autoencoder" } else { "pca" }, "auto keeps the lower held-out error");
    let pca_only = fit("pca");
    assert_eq!(pca_only["chosen"], "pca");
    assert!(pca_only["autoencoder_holdout_mse"].is_null());
    assert_eq!(fit("none")["chosen"], "none");
    assert_eq!(fit("autoencoder")["chosen"], "autoencoder");
}

#[pg_test]
fn pg_test_dbscan_leaves_noise_unassigned() {
    demo("p6", 400);
    Spi::run(&format!(
        "INSERT INTO p6_orders (user_id, created_at, amount, category) VALUES (100001, '2026-05-01', 99999, 'outlier'); \
         SELECT count(*) FROM segment_users('p6_orders', model => 'p6', options => '{{{AS_OF}, \"algorithm\": \"dbscan\", \"embedding\": \"pca\"}}')"
    ))
    .unwrap();
    let coverage: f64 = one("SELECT value FROM segment_evaluate('p6') WHERE metric = 'coverage'").unwrap();
    assert!(coverage > 0.5 && coverage <= 1.0, "{coverage}");
    let noise: i64 = one("SELECT count(*) FROM segment.p6_users WHERE segment_id IS NULL").unwrap();
    assert!((coverage - (401 - noise) as f64 / 401.0).abs() < 1e-12);
    assert_eq!(one::<i32>("SELECT segment_of(100001, 'p6')"), None, "the outlier is noise");
    let eps: f64 = one("SELECT (metrics->>'eps')::float8 FROM segment.models WHERE model = 'p6'").unwrap();
    assert!(eps > 0.0);
}

/// The order features aggregate equals the window-function definition it replaced, for every
/// order feature, with duplicates, NULL categories and a time zone, with and without dedupe.
#[pg_test]
fn pg_test_order_features_aggregate_equals_the_window_definition() {
    demo("p9", 300);
    Spi::run(
        "INSERT INTO p9_orders (user_id, created_at, amount, category) \
           SELECT user_id, created_at, amount, category FROM p9_orders WHERE order_id % 13 = 0; \
         UPDATE p9_orders SET category = NULL WHERE order_id % 17 = 0",
    )
    .unwrap();
    for dedupe in [false, true] {
        Spi::run(&format!(
            r#"SELECT count(*) FROM segment_users('p9_orders', 3, 'p9', options => '{{"as_of": "2026-06-01", "timezone": "America/New_York", "dedupe": {dedupe}}}')"#
        ))
        .unwrap();
        let (f, k) = if dedupe { (" FILTER (WHERE NOT dup)", "NOT dup AND ") } else { ("", "") };
        let tz = "'America/New_York'";
        let asof = "'2026-06-01'::timestamptz";
        let reference = format!(
            "WITH o AS (SELECT user_id AS u, created_at AS t, amount::float8 AS a, category AS c, \
                 extract(epoch FROM created_at - lag(created_at) OVER w) / 86400 AS gap, \
                 coalesce(lag(created_at) OVER w = created_at AND lag(amount::float8) OVER w = amount::float8 \
                          AND lag(category) OVER w IS NOT DISTINCT FROM category, false) AS dup \
               FROM p9_orders WHERE created_at <= {asof} \
               WINDOW w AS (PARTITION BY user_id ORDER BY created_at, amount::float8, category)) \
             SELECT u AS user_id, ARRAY[ \
                greatest(0, extract(epoch FROM {asof} - max(t){f}) / 86400), count(*){f}, sum(a){f}, avg(a){f}, \
                greatest(0, extract(epoch FROM {asof} - min(t){f}) / 86400), \
                coalesce(avg(gap){f}, greatest(0, extract(epoch FROM {asof} - min(t){f}) / 86400)), \
                coalesce(stddev_pop(gap){f}, 0), \
                count(*) FILTER (WHERE {k}t > {asof} - interval '30 days'), \
                coalesce(sum(a) FILTER (WHERE {k}t > {asof} - interval '90 days'), 0), \
                avg((extract(isodow FROM t AT TIME ZONE {tz}) >= 6)::int){f}, \
                avg(sin(2 * pi() * extract(hour FROM t AT TIME ZONE {tz}) / 24)){f}, \
                avg(cos(2 * pi() * extract(hour FROM t AT TIME ZONE {tz}) / 24)){f}]::float8[] AS f, \
                count(*) FILTER (WHERE dup) AS duplicates \
             FROM o GROUP BY u"
        );
        let mismatches: i64 = one(&format!(
            "SELECT count(*) FROM segment.p9_users s JOIN ({reference}) r USING (user_id), \
                    generate_series(1, 12) j \
             WHERE abs(s.features[j] - r.f[j]) > 1e-9 * greatest(1, abs(r.f[j]))"
        ))
        .unwrap();
        assert_eq!(mismatches, 0, "dedupe {dedupe}");
        assert_eq!(one::<i64>("SELECT count(*) FROM segment.p9_users"), one::<i64>("SELECT count(DISTINCT user_id) FROM p9_orders"));
        let dups: i64 = one(&format!("SELECT sum(duplicates)::int8 FROM ({reference}) r")).unwrap();
        assert!(dups > 0);
        assert_eq!(one::<i64>("SELECT (skipped->>'duplicates')::int8 FROM segment.current_models WHERE model = 'p9'"), Some(dups));
        // category shares: (orders in it + 2 x prior) / (orders + 2), NULL and unlisted in "other"
        let (cat_mismatches, compared): (i64, i64) = Spi::get_two(&format!(
            "WITH spec AS (SELECT spec FROM segment.current_models WHERE model = 'p9'), \
                  names AS (SELECT n - 1 AS pos, f->>'name' AS name FROM spec, jsonb_array_elements(spec->'features') WITH ORDINALITY x(f, n)), \
                  cats AS (SELECT c->>'name' AS category, round((c->>'share')::numeric, 9) AS prior FROM spec, jsonb_array_elements(spec->'categories') c), \
                  o AS (SELECT user_id, category, amount::float8 AS a, created_at AS t, \
                          coalesce(lag(created_at) OVER w = created_at AND lag(amount::float8) OVER w = amount::float8 \
                                   AND lag(category) OVER w IS NOT DISTINCT FROM category, false) AS dup \
                        FROM p9_orders WHERE created_at <= {asof} \
                        WINDOW w AS (PARTITION BY user_id ORDER BY created_at, amount::float8, category)), \
                  expected AS (SELECT o.user_id, c.category, \
                          ((count(*) FILTER (WHERE {k}o.category = c.category) + 2 * c.prior) / (count(*){f} + 2))::float8 AS share \
                        FROM o CROSS JOIN cats c GROUP BY o.user_id, c.category, c.prior) \
             SELECT count(*) FILTER (WHERE abs(s.features[n.pos + 1] - e.share) > 1e-9), count(*) \
             FROM expected e JOIN names n ON n.name = 'category:' || e.category \
                  JOIN segment.p9_users s ON s.user_id = e.user_id"
        ))
        .map(|(a, b)| (a.unwrap_or(-1), b.unwrap_or(0)))
        .unwrap();
        assert_eq!(cat_mismatches, 0, "category shares, dedupe {dedupe}");
        assert!(compared >= 300 * 4, "every user and top category compared: {compared}");
    }
}

/// Both aggregates give the same answer in parallel workers (partial states serialized,
/// deserialized and combined) as in one process.
#[pg_test]
fn pg_test_aggregates_are_equal_in_parallel_and_serial_plans() {
    demo("p10", 2000);
    Spi::run(&format!("SELECT count(*) FROM segment_users('p10_orders', 4, 'p10', options => '{{{AS_OF}}}')")).unwrap();
    let features = "SELECT md5(string_agg(user_id || ':' || f::text, ',' ORDER BY user_id)) FROM ( \
          SELECT user_id, _segment_order_features(created_at, created_at::timestamp, amount::float8, NULL::int, \
                   pg_catalog.hashtextextended(category, 0), '2026-06-01', '2026-05-01', '2026-03-01', '{}', false) AS f \
          FROM p10_orders GROUP BY user_id) s";
    let step = "SELECT _segment_kmeans_step(embedding, \
                  (SELECT array_agg(value ORDER BY segment_id, dimension) FROM segment.centroid_values WHERE model = 'p10') ::float8[], 4) \
                FROM segment.p10_users";
    Spi::run("SET max_parallel_workers_per_gather = 0").unwrap();
    let serial_features: String = one(features).unwrap();
    let serial_step: Vec<f64> = one(step).unwrap();
    Spi::run(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; \
         SET min_parallel_index_scan_size = 0; SET max_parallel_workers_per_gather = 2; SET enable_indexscan = off",
    )
    .unwrap();
    let plan: String = Spi::connect(|c| {
        c.select(&format!("EXPLAIN {features}"), None, &[]).unwrap().filter_map(|r| r.get::<String>(1).ok().flatten()).collect::<Vec<_>>().join("\n")
    });
    assert!(plan.contains("Partial") && plan.contains("Gather"), "{plan}");
    assert_eq!(one::<String>(features).unwrap(), serial_features);
    let parallel_step: Vec<f64> = one(step).unwrap();
    assert_eq!(parallel_step.len(), serial_step.len());
    for (p, s) in parallel_step.iter().zip(&serial_step) {
        assert!((p - s).abs() <= 1e-9 * s.abs().max(1.0), "{p} vs {s}");
    }
    // users per centroid: the nearest centroid is the segment
    let counts: Vec<i64> = Spi::get_one::<Vec<i64>>("SELECT array_agg(n ORDER BY segment_id) FROM (SELECT segment_id, count(*) AS n FROM segment.p10_users GROUP BY 1) s").unwrap().unwrap();
    let dims = (serial_step.len() - 1) / 4 - 1; // (dims + 1) per centroid, then the inertia
    let stride = (serial_step.len() - 1) / 4;
    assert!(dims > 0);
    let step_counts: Vec<i64> = (0..4).map(|i| serial_step[i * stride] as i64).collect();
    assert_eq!(step_counts, counts);
    // segment_drift reports each centroid's shift: right after the fit, the centroids are their members' means
    assert_eq!(one::<i64>("SELECT count(*) FROM segment_drift('p10') WHERE metric = 'centroid_shift' AND value < 0.05"), Some(4));
}

/// The aggregates called directly: rows without a time or a finite amount are not orders (a user
/// with none left has no features), and a k-means step is refused centroids of the wrong shape.
#[pg_test]
fn pg_test_aggregates_skip_unusable_rows_and_refuse_bad_centroids() {
    let features = |rows: &str| {
        one::<Vec<f64>>(&format!(
            "SELECT _segment_order_features(t, t::timestamp, a, NULL::int, NULL::int8, \
                      '2026-06-01', '2026-05-01', '2026-03-01', '{{}}', false) \
             FROM (VALUES (NULL::timestamptz, 1::float8), ('2026-01-01', 'NaN'), ('2026-01-02', 'Infinity'), \
                          ('2026-01-03', NULL){rows}) v(t, a)"
        ))
    };
    assert_eq!(features(""), None, "no usable order");
    let one_order = features(", ('2026-05-31', 25)").expect("one usable order");
    assert_eq!((one_order[0], one_order[1], one_order[2], one_order[3]), (0.0, 1.0, 1.0, 25.0), "[duplicates, recency, frequency, monetary]");
    assert_eq!(
        sqlstate_of("SELECT _segment_kmeans_step(ARRAY[1, 2]::real[], ARRAY[1, 2, 3]::float8[], 2)").as_deref(),
        Some("22023")
    );
}

#[pg_test]
fn pg_test_a_fit_leaves_the_sessions_settings_as_they_were() {
    // bulk work raises work_mem to maintenance_work_mem and turns JIT off, for itself only
    demo("p_settings", 150);
    Spi::run("SET work_mem = '1MB'; SET maintenance_work_mem = '32MB'; SET jit = on").unwrap();
    Spi::run(&format!("SELECT count(*) FROM segment_users('p_settings_orders', 2, 'p_settings', options => '{{{AS_OF}}}')")).unwrap();
    Spi::run("SELECT count(*) FROM segment_refresh('p_settings', refit => false)").unwrap();
    assert_eq!(one::<String>("SELECT current_setting('work_mem')").as_deref(), Some("1MB"));
    assert_eq!(one::<String>("SELECT current_setting('jit')").as_deref(), Some("on"));
}

#[pg_test]
fn pg_test_streaming_in_small_batches_gives_the_same_segments() {
    demo("p_stream", 700);
    let fit = format!("SELECT count(*) FROM segment_users('p_stream_orders', 4, 'p_stream', options => '{{{AS_OF}}}')");
    Spi::run(&fit).unwrap();
    Spi::run("CREATE TEMP TABLE one_batch AS SELECT user_id, segment_id, cell, distance, embedding FROM segment.p_stream_users").unwrap();
    // 700 users in batches of 100: the features are read through a cursor over 7 connections
    Spi::run("SET pg_segment.batch_users = 100").unwrap();
    Spi::run(&fit).unwrap();
    assert_eq!(
        one::<i64>(
            "SELECT count(*) FROM one_batch o FULL JOIN segment.p_stream_users u USING (user_id) \
             WHERE o.segment_id IS DISTINCT FROM u.segment_id OR o.cell IS DISTINCT FROM u.cell \
                OR o.embedding IS DISTINCT FROM u.embedding OR abs(o.distance - u.distance) > 1e-12"
        ),
        Some(0),
        "every user placed as in one batch"
    );
    assert_eq!(
        one::<i64>(
            "SELECT count(*) FROM segment.centroids a JOIN segment.centroids b USING (model, segment_id) \
             WHERE model = 'p_stream' AND a.version = 1 AND b.version = 2 \
               AND (a.centroid <> b.centroid OR a.users <> b.users OR a.name <> b.name)"
        ),
        Some(0)
    );
    // a refresh streams the same way and keeps everyone
    Spi::run("SELECT count(*) FROM segment_refresh('p_stream', refit => false)").unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.p_stream_users WHERE segment_id IS NOT NULL AND model_version = 2"), Some(700));

    // trained on a sample of 300: everyone is still placed and described
    Spi::run(&format!(
        "SELECT count(*) FROM segment_users('p_stream_orders', 4, 'p_stream', options => '{{{AS_OF}, \"sample\": 300}}')"
    ))
    .unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.p_stream_users WHERE segment_id IS NOT NULL AND model_version = 3"), Some(700));
    assert_eq!(one::<i64>("SELECT sum(users)::int8 FROM segment.centroids WHERE model = 'p_stream' AND version = 3"), Some(700));
    assert_eq!(one::<i64>("SELECT (metrics->>'training_rows')::int8 FROM segment.models WHERE model = 'p_stream' AND version = 3"), Some(300));
    assert_eq!(one::<i64>("SELECT (metrics->>'users')::int8 FROM segment.models WHERE model = 'p_stream' AND version = 3"), Some(700));
    Spi::run("RESET pg_segment.batch_users").unwrap();
}
