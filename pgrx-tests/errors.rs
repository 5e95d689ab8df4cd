// Every user-facing error: its SQLSTATE, and that a failed call leaves nothing behind.

#[pg_test]
fn pg_test_errors_carry_their_sqlstate() {
    demo("e1", 100);
    Spi::run(
        "CREATE TABLE e_ambiguous (user_id int, customer_id int, created_at timestamptz, amount numeric); \
         INSERT INTO e_ambiguous VALUES (1, 1, now(), 1); \
         CREATE TABLE e_empty (user_id int, created_at timestamptz, amount numeric); \
         CREATE TABLE e_nulls (user_id int, created_at timestamptz, amount numeric); \
         INSERT INTO e_nulls VALUES (NULL, now(), 1), (1, NULL, 1); \
         CREATE TABLE e_noamount (user_id int, created_at timestamptz, note text); \
         CREATE SEQUENCE e_seq;",
    )
    .unwrap();
    let cases = [
        ("SELECT * FROM segment_users('e1_orders', user_column => 'nope')", "42703"),
        ("SELECT * FROM segment_users('e_noamount')", "42703"),
        ("SELECT * FROM segment_users('e_ambiguous')", "42702"),
        ("SELECT * FROM segment_users('e1_orders', time_column => 'amount')", "42804"),
        ("SELECT * FROM segment_users('e1_orders', amount_column => 'category')", "42804"),
        ("SELECT * FROM segment_users('e_seq')", "42809"),
        ("SELECT * FROM segment_users('e_empty')", "P0002"),
        ("SELECT * FROM segment_users('e_nulls')", "P0002"),
        ("SELECT * FROM segment_users('e1_orders', k => 1)", "22023"),
        ("SELECT * FROM segment_users('e1_orders', k => 0)", "22023"),
        ("SELECT * FROM segment_users('e1_orders', k => 100000)", "54000"),
        ("SELECT * FROM segment_users('e1_orders', k => 200)", "22023"),
        ("SELECT * FROM segment_users('e1_orders', model => 'Bad Name')", "42602"),
        ("SELECT * FROM segment_users('e1_orders', model => '')", "42602"),
        ("SELECT * FROM segment_users('e1_orders', model => repeat('m', 49))", "42602"),
        ("SELECT * FROM segment_users('e1_orders', model => NULL)", "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"colour": 1}')"#, "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"algorithm": "hdbscan"}')"#, "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"k_range": [9, 3]}')"#, "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"dims": 500}')"#, "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '[1]')"#, "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"as_of": "yesterday-ish"}')"#, "22007"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"timezone": "Mars/Olympus"}')"#, "22023"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"events": "no_such_table"}')"#, "42P01"),
        (r#"SELECT * FROM segment_users('e1_orders', options => '{"events": {"table": "e1_events", "type_column": "nope"}}')"#, "42703"),
        ("SELECT * FROM segment_users('no_such_table')", "42P01"),
        ("SELECT segment_of(1, 'no_such_model')", "42704"),
        ("SELECT segment_embedding(1, 'no_such_model')", "42704"),
        ("SELECT * FROM segment_evaluate('no_such_model')", "42704"),
        ("SELECT * FROM segment_describe('no_such_model')", "42704"),
        ("SELECT * FROM segment_demo(0)", "22023"),
    ];
    for (sql, expected) in cases {
        assert_eq!(sqlstate_of(sql).as_deref(), Some(expected), "{sql}");
    }
}

#[pg_test]
fn pg_test_a_failed_call_changes_nothing() {
    demo("e2", 200);
    Spi::run(&format!("SELECT count(*) FROM segment_users('e2_orders', 3, 'e2', options => '{{{AS_OF}}}')")).unwrap();
    let before: String = one("SELECT (SELECT json_agg(m ORDER BY version)::text FROM segment.models m) || (SELECT json_agg(u ORDER BY user_id)::text FROM segment.e2_users u)").unwrap();
    // fails after the features are computed: k is larger than the number of users
    assert_eq!(sqlstate_of("SELECT * FROM segment_users('e2_orders', 250, 'e2')").as_deref(), Some("22023"));
    // fails on a brand-new model: its table must not appear either
    assert_eq!(sqlstate_of("SELECT * FROM segment_users('e2_orders', 250, 'e2_new')").as_deref(), Some("22023"));
    let after: String = one("SELECT (SELECT json_agg(m ORDER BY version)::text FROM segment.models m) || (SELECT json_agg(u ORDER BY user_id)::text FROM segment.e2_users u)").unwrap();
    assert_eq!(before, after);
    assert_eq!(one::<bool>("SELECT to_regclass('segment.e2_new_users') IS NULL"), Some(true));
}

#[pg_test]
fn pg_test_error_messages_name_the_fix() {
    Spi::run("CREATE TABLE amb (user_id int, customer_id int, created_at timestamptz, amount numeric)").unwrap();
    let hint: String = one(
        "CREATE OR REPLACE FUNCTION pg_temp.hint_of(q text) RETURNS text LANGUAGE plpgsql AS $$ \
         DECLARE m text; d text; h text; \
         BEGIN EXECUTE q; RETURN NULL; \
         EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT; \
           RETURN m || ' | ' || d || ' | ' || h; END $$; \
         SELECT pg_temp.hint_of('SELECT * FROM segment_users(''amb'')')",
    )
    .unwrap();
    assert!(hint.contains("customer_id") && hint.contains("user_id") && hint.contains("user_column"), "{hint}");
    assert_eq!(hint.split(" | ").next().unwrap(), hint.split(" | ").next().unwrap().to_lowercase(), "lowercase message");
}

/// Runs `q` as `role` and returns the SQLSTATE it failed with (None on success); the role
/// and whatever `q` wrote are rolled back on failure, the role is reset on success.
fn sqlstate_as(role: &str, q: &str) -> Option<String> {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.sqlstate_as(r text, q text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN EXECUTE format('SET LOCAL ROLE %I', r); EXECUTE q; RESET ROLE; RETURN NULL;
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
    )
    .unwrap();
    Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_as($1, $2)", &[role.into(), q.into()]).unwrap()
}

/// An analyst segments only what they may read: no SELECT on the source is 42501, and row-level
/// security on the source limits the fit to the rows the analyst sees.
#[pg_test]
fn pg_test_analysts_segment_only_what_they_may_read() {
    demo("r1", 300);
    Spi::run(
        "CREATE ROLE seg_analyst; \
         GRANT USAGE, CREATE ON SCHEMA segment TO seg_analyst; \
         GRANT SELECT ON ALL TABLES IN SCHEMA segment TO seg_analyst; \
         GRANT INSERT ON segment.models, segment.centroids TO seg_analyst; \
         GRANT INSERT, DELETE ON segment.live TO seg_analyst; \
         GRANT USAGE ON SCHEMA public TO seg_analyst",
    )
    .unwrap();
    let fit = |model: &str| format!("SELECT count(*) FROM segment_users('r1_orders', 2, '{model}', options => '{{{AS_OF}}}')");
    assert_eq!(sqlstate_as("seg_analyst", &fit("r1_denied")).as_deref(), Some("42501"));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.models WHERE model = 'r1_denied'"), Some(0));
    Spi::run(
        "GRANT SELECT ON r1_orders TO seg_analyst; \
         ALTER TABLE r1_orders ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY even_customers ON r1_orders FOR SELECT TO seg_analyst USING (user_id % 2 = 0)",
    )
    .unwrap();
    assert_eq!(sqlstate_as("seg_analyst", &fit("r1")), None);
    assert_eq!(one::<i64>("SELECT users FROM segment.models WHERE model = 'r1'"), Some(150));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.r1_users WHERE user_id % 2 = 1"), Some(0));
    // the table owner (not subject to the policy) sees everybody
    Spi::run(&fit("r1_all")).unwrap();
    assert_eq!(one::<i64>("SELECT users FROM segment.models WHERE model = 'r1_all'"), Some(300));
}

/// The battery continued: the applications, live-mode and housekeeping functions.
#[pg_test]
fn pg_test_every_function_rejects_bad_input_with_its_sqlstate() {
    demo("e3", 120);
    Spi::run(&format!("SELECT count(*) FROM segment_users('e3_orders', 3, 'e3', options => '{{{AS_OF}}}')")).unwrap();
    let cases = [
        ("SELECT * FROM segment_recommend(1::int8, 0, 'e3')", "22023"),
        ("SELECT * FROM segment_recommend(1::int8, 10, 'nope')", "42704"),
        ("SELECT * FROM segment_recommend(1::int8, 10, 'Bad Name')", "42602"),
        ("SELECT * FROM segment_top_categories(1, 'e3', 0)", "22023"),
        ("SELECT * FROM segment_top_categories(999, 'e3')", "42704"),
        ("SELECT * FROM segment_top_categories(1, 'nope')", "42704"),
        ("SELECT * FROM segment_similar_users(1::int8, 0, 'e3')", "22023"),
        ("SELECT * FROM segment_similar_users(1::int8, 20000, 'e3')", "22023"),
        ("SELECT * FROM segment_similar_users(1::int8, 5, 'nope')", "42704"),
        ("SELECT segment_rename('e3', 1, '')", "22023"),
        ("SELECT segment_rename('e3', 1, repeat('x', 101))", "22023"),
        ("SELECT segment_rename('e3', 999, 'x')", "42704"),
        ("SELECT segment_forget(1, 'nope')", "42704"),
        ("SELECT segment_forget(1, 'Bad Name')", "42602"),
        ("SELECT segment_plot('e3', 'pie')", "22023"),
        ("SELECT segment_plot('nope')", "42704"),
        ("SELECT * FROM segment_describe('e3', epsilon => 0)", "22023"),
        ("SELECT * FROM segment_describe('e3', epsilon => 'Infinity')", "22023"),
        ("SELECT * FROM segment_describe('e3', epsilon => -1)", "22023"),
        ("SELECT segment_live('e3', 'sometimes')", "22023"),
        ("SELECT segment_live('nope')", "42704"),
        ("SELECT segment_process('e3', 0)", "22023"),
        ("SELECT segment_process('nope')", "42704"),
        ("SELECT * FROM segment_refresh('nope')", "42704"),
        ("SELECT * FROM segment_refresh('Bad Name')", "42602"),
        ("SELECT * FROM segment_drift('nope')", "42704"),
        ("SELECT * FROM segment_users(NULL)", "22023"),
        (r#"SELECT * FROM segment_users('e3_orders', options => '{"live": "sometimes"}')"#, "22023"),
        ("SELECT * FROM _segment_kmeans_benchmark('e3', 1)", "22023"),
        ("SELECT * FROM segment_demo(10, 1, now(), 'Bad-Prefix')", "42602"),
    ];
    for (sql, expected) in cases {
        assert_eq!(sqlstate_of(sql).as_deref(), Some(expected), "{sql}");
    }
    // none of them changed the model
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.models WHERE model = 'e3'"), Some(1));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.e3_users"), Some(120));
}

/// Unusual but legal sources and data: a view, a temp table, a date-typed time column, huge and
/// negative amounts, very old and future rows, a category with thousands of distinct values,
/// customers who all look alike; and schema changes under live mode never fail a writer.
#[pg_test]
fn pg_test_unusual_sources_and_data_are_handled() {
    demo("u1", 200);
    let fit = |src: &str, model: &str, extra: &str| {
        sqlstate_of(&format!(
            "SELECT * FROM segment_users('{src}', 2, '{model}'{extra}, options => '{{{AS_OF}}}')"
        ))
    };
    Spi::run("CREATE VIEW u1_view AS SELECT * FROM u1_orders WHERE amount > 0").unwrap();
    assert_eq!(fit("u1_view", "u_view", ""), None, "a view");
    Spi::run("CREATE TEMP TABLE u1_temp AS SELECT * FROM u1_orders").unwrap();
    assert_eq!(fit("u1_temp", "u_temp", ""), None, "a temp table");
    Spi::run(
        "CREATE TABLE u1_dates AS SELECT user_id, created_at::date AS order_date, amount * 1e9 AS total, \
                (order_id % 5000)::text AS category FROM u1_orders; \
         INSERT INTO u1_dates VALUES (1, '1901-01-01', -50, 'refund'), (2, '2999-01-01', 10, 'x')",
    )
    .unwrap();
    assert_eq!(fit("u1_dates", "u_dates", ""), None, "date column, huge/negative amounts, 5000 categories, old/future rows");
    assert_eq!(one::<i64>("SELECT (skipped->>'after_as_of')::int8 FROM segment.current_models WHERE model = 'u_dates'"), Some(1));
    assert_eq!(
        one::<i64>("SELECT count(*) FROM segment.u_dates_users WHERE NOT (features <> '{}' AND array_position(features, 'NaN') IS NULL)"),
        Some(0),
        "no NaN features"
    );
    // customers who all look alike: a clear answer, not a crash
    Spi::run(
        "CREATE TABLE u1_same AS SELECT g AS user_id, '2026-05-01'::timestamptz AS created_at, 10 AS amount \
         FROM generate_series(1, 50) g",
    )
    .unwrap();
    let same = fit("u1_same", "u_same", "");
    assert!(same.is_none() || same.as_deref() == Some("55000"), "{same:?}");
    // live mode, then the source's category column is renamed: the writer's insert still commits
    Spi::run(&format!("SELECT count(*) FROM segment_users('u1_orders', 2, 'u_live', options => '{{{AS_OF}, \"live\": \"sync\"}}')")).unwrap();
    Spi::run("ALTER TABLE u1_orders RENAME COLUMN category TO kind").unwrap();
    assert_eq!(
        sqlstate_of("INSERT INTO u1_orders (user_id, created_at, amount, kind) VALUES (3, '2026-05-30', 12, 'books')"),
        None,
        "a schema change never makes a writer fail"
    );
    assert_eq!(one::<i64>("SELECT count(*) FROM u1_orders WHERE kind = 'books' AND amount = 12 AND user_id = 3 AND created_at = '2026-05-30'"), Some(1));
}
