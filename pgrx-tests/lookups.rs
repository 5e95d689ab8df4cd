// Reading segments back: segment_of / segment_embedding / describe / evaluate, key types.

#[pg_test]
fn pg_test_segment_of_matches_the_table_and_accepts_any_integer_width() {
    demo("l1", 300);
    Spi::run(&format!("SELECT count(*) FROM segment_users('l1_orders', 3, 'l1', options => '{{{AS_OF}}}')")).unwrap();
    let stored: i32 = one("SELECT segment_id FROM segment.l1_users WHERE user_id = 7").unwrap();
    assert_eq!(one::<i32>("SELECT segment_of(7, 'l1')"), Some(stored), "int4 literal for a bigint key");
    assert_eq!(one::<i32>("SELECT segment_of(7::int8, 'l1')"), Some(stored));
    assert_eq!(one::<i32>("SELECT segment_of(7::int2, 'l1')"), Some(stored));
    assert_eq!(one::<i32>("SELECT segment_of(123456789, 'l1')"), None, "unknown user");
    assert_eq!(one::<i32>("SELECT segment_of(NULL::int8, 'l1')"), None);
    let dims: i32 = one("SELECT dims FROM segment.models WHERE model = 'l1'").unwrap();
    assert_eq!(one::<i32>("SELECT array_length(segment_embedding(7, 'l1'), 1)"), Some(dims));
    // the view BI tools read names every segment
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.l1_segments WHERE segment IS NULL"), Some(0));
    // the default model name is 'default'
    Spi::run(&format!("SELECT count(*) FROM segment_users('l1_orders', 2, options => '{{{AS_OF}}}')")).unwrap();
    assert!(one::<i32>("SELECT segment_of(7)").is_some());
}

#[pg_test]
fn pg_test_text_and_uuid_keys_keep_their_type() {
    Spi::run(
        "CREATE TABLE shop_orders AS \
           SELECT 'cust-' || (g % 50) AS customer_id, md5((g % 50)::text)::uuid AS client_id, \
                  '2026-01-01'::timestamptz + g * interval '7 hours' AS ordered_at, (g % 13) * 3.5 + 1 AS total \
           FROM generate_series(1, 500) g; \
         CREATE TABLE customers AS SELECT DISTINCT customer_id AS id FROM shop_orders;",
    )
    .unwrap();
    Spi::run(r#"SELECT count(*) FROM segment_users('shop_orders', 2, 'by_text', user_column => 'customer_id', options => '{"as_of": "2026-06-01"}')"#).unwrap();
    Spi::run(r#"SELECT count(*) FROM segment_users('shop_orders', 2, 'by_uuid', user_column => 'client_id', options => '{"as_of": "2026-06-01"}')"#).unwrap();
    assert_eq!(
        one::<String>("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'segment.by_text_users'::regclass AND attname = 'user_id'").as_deref(),
        Some("text")
    );
    assert_eq!(
        one::<String>("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'segment.by_uuid_users'::regclass AND attname = 'user_id'").as_deref(),
        Some("uuid")
    );
    // joins need no cast
    assert_eq!(one::<i64>("SELECT count(*) FROM customers c JOIN segment.by_text_segments s ON s.user_id = c.id"), Some(50));
    assert!(one::<i32>("SELECT segment_of('cust-3'::text, 'by_text')").is_some());
    assert!(one::<i32>("SELECT segment_of(md5('3')::uuid, 'by_uuid')").is_some());
}

#[pg_test]
fn pg_test_describe_and_evaluate_report_every_segment_and_metric() {
    demo("l2", 400);
    Spi::run(&format!("SELECT count(*) FROM segment_users('l2_orders', 4, 'l2', options => '{{{AS_OF}}}')")).unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM segment_describe('l2')"), Some(4));
    assert_eq!(one::<i64>("SELECT sum(users)::int8 FROM segment_describe('l2')"), Some(400));
    assert_eq!(
        one::<i64>("SELECT count(*) FROM segment_describe('l2') WHERE recency_days IS NULL OR frequency IS NULL OR monetary IS NULL OR jsonb_typeof(profile) <> 'object'"),
        Some(0)
    );
    for metric in ["silhouette", "davies_bouldin", "calinski_harabasz", "inertia", "k", "users", "coverage"] {
        let v: Option<f64> = one(&format!("SELECT value FROM segment_evaluate('l2') WHERE metric = '{metric}'"));
        assert!(v.is_some_and(f64::is_finite), "{metric}: {v:?}");
    }
    assert_eq!(one::<f64>("SELECT value FROM segment_evaluate('l2') WHERE metric = 'k'"), Some(4.0));
    let sil: f64 = one("SELECT value FROM segment_evaluate('l2') WHERE metric = 'silhouette'").unwrap();
    assert!((-1.0..=1.0).contains(&sil));
    // BigQuery-style long centroids: k × dims rows
    let dims: i64 = one("SELECT dims::int8 FROM segment.models WHERE model = 'l2'").unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.centroid_values WHERE model = 'l2'"), Some(4 * dims));
}

#[pg_test]
fn pg_test_lookups_are_declared_stable_not_immutable() {
    for f in ["segment_of", "segment_embedding", "segment_evaluate", "segment_describe"] {
        assert_eq!(
            one::<String>(&format!("SELECT provolatile::text FROM pg_proc WHERE proname = '{f}'")).as_deref(),
            Some("s"),
            "{f}"
        );
    }
    assert_eq!(one::<String>("SELECT provolatile::text FROM pg_proc WHERE proname = 'segment_users'").as_deref(), Some("v"));
}
