// Acting on segments: names people give, lookalikes, recommendations, erasure, privacy.

/// A fitted 4-segment model `p` over `users` demo customers.
fn fitted(p: &str, users: i32) {
    demo(p, users);
    Spi::run(&format!("SELECT count(*) FROM segment_users('{p}_orders', 4, '{p}', options => '{{{AS_OF}}}')")).unwrap();
}

#[pg_test]
fn pg_test_renamed_segments_keep_name_and_description_across_refits() {
    fitted("a1", 400);
    let (id, other): (i32, String) = (
        one("SELECT min(segment_id) FROM segment.centroids WHERE model = 'a1'").unwrap(),
        one("SELECT name FROM segment.centroids WHERE model = 'a1' ORDER BY segment_id DESC LIMIT 1").unwrap(),
    );
    Spi::run(&format!("SELECT segment_rename('a1', {id}, 'VIP', 'our best customers')")).unwrap();
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM segment.a1_segments WHERE segment_id = {id} AND segment <> 'VIP'")), Some(0));
    // a description left NULL stays; '' clears it
    Spi::run(&format!("SELECT segment_rename('a1', {id}, 'VIP')")).unwrap();
    assert_eq!(one::<String>(&format!("SELECT description FROM segment.centroids WHERE model = 'a1' AND segment_id = {id}")).as_deref(), Some("our best customers"));
    // a label-stable re-fit on the same data keeps the ids, so the name and description stay
    Spi::run("SELECT count(*) FROM segment_refresh('a1', refit => true)").unwrap();
    assert_eq!(one::<i32>("SELECT max(version) FROM segment.models WHERE model = 'a1'"), Some(2));
    assert_eq!(
        one::<String>(&format!("SELECT name || ': ' || description FROM segment.centroids WHERE model = 'a1' AND version = 2 AND segment_id = {id}")).as_deref(),
        Some("VIP: our best customers")
    );
    assert_eq!(sqlstate_of(&format!("SELECT segment_rename('a1', {id}, {})", pgrx::spi::quote_literal(&other))).as_deref(), Some("42710"));
    assert_eq!(sqlstate_of("SELECT segment_rename('a1', 999, 'x')").as_deref(), Some("42704"));
    assert_eq!(sqlstate_of(&format!("SELECT segment_rename('a1', {id}, '  ')")).as_deref(), Some("22023"));
    assert_eq!(sqlstate_of("SELECT segment_rename('nope', 1, 'x')").as_deref(), Some("42704"));
}

#[pg_test]
fn pg_test_similar_users_equal_a_brute_force_scan() {
    fitted("a2", 1500);
    for user in [3, 77, 1204] {
        let banded: Option<String> = one(&format!(
            "SELECT string_agg(similar_user || ':' || round(distance::numeric, 5), ',' ORDER BY distance, similar_user::text) \
             FROM segment_similar_users({user}::int8, 15, 'a2')"
        ));
        let brute: Option<String> = one(&format!(
            "SELECT string_agg(user_id || ':' || round(d::numeric, 5), ',' ORDER BY d, user_id::text) FROM ( \
               SELECT u.user_id, sqrt((SELECT sum((a::float8 - b::float8)^2) FROM unnest(u.embedding, me.embedding) x(a, b))) AS d \
               FROM segment.a2_users u, segment.a2_users me \
               WHERE me.user_id = {user} AND u.user_id <> {user} AND u.segment_id IS NOT NULL \
               ORDER BY d, u.user_id::text LIMIT 15) s"
        ));
        assert!(banded.is_some());
        assert_eq!(banded, brute, "user {user}");
    }
    // the key keeps its type; an unknown user has no lookalikes
    assert_eq!(one::<String>("SELECT pg_typeof(similar_user)::text FROM segment_similar_users(3::int8, 1, 'a2')").as_deref(), Some("bigint"));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment_similar_users(987654::int8, 5, 'a2')"), Some(0));
    assert_eq!(sqlstate_of("SELECT * FROM segment_similar_users(3::int8, 0, 'a2')").as_deref(), Some("22023"));
}

#[pg_test]
fn pg_test_recommendations_follow_the_segment_and_skip_what_the_user_buys() {
    fitted("a3", 600);
    // top categories of a segment: lift is its share over the population's
    let seg: i32 = one("SELECT min(segment_id) FROM segment.centroids WHERE model = 'a3'").unwrap();
    assert_eq!(
        one::<i64>(&format!("SELECT count(*) FROM segment_top_categories({seg}, 'a3') WHERE abs(lift - share / population_share) > 1e-9")),
        Some(0)
    );
    assert!(one::<i64>(&format!("SELECT count(*) FROM segment_top_categories({seg}, 'a3', 3)")).unwrap() <= 3);
    // for a user: highest lift first, never a category the user already buys a lot
    let user: i64 = one("SELECT user_id FROM segment.a3_users WHERE segment_id IS NOT NULL ORDER BY user_id LIMIT 1").unwrap();
    let rows: i64 = one(&format!("SELECT count(*) FROM segment_recommend({user}::int8, 20, 'a3')")).unwrap();
    assert!(rows > 0);
    assert_eq!(
        one::<bool>(&format!(
            "SELECT bool_and(s.score <= s.prev) FROM (SELECT score, lag(score, 1, 'Infinity') OVER () AS prev FROM segment_recommend({user}::int8, 20, 'a3')) s"
        )),
        Some(true)
    );
    // the user's own category shares, by feature position in the model's spec
    let own = "SELECT u.user_id, substr(f->>'name', 10) AS category, u.features[n] AS v \
               FROM segment.a3_users u, \
                    jsonb_array_elements((SELECT spec->'features' FROM segment.current_models WHERE model = 'a3')) \
                      WITH ORDINALITY x(f, n) \
               WHERE f->>'name' LIKE 'category:%' AND f->>'name' <> 'category:other'";
    let (heavy_user, heavy_cat): (i64, String) = (
        one(&format!("SELECT user_id FROM ({own}) o WHERE v >= 0.25 ORDER BY user_id, category LIMIT 1")).unwrap(),
        one(&format!("SELECT category FROM ({own}) o WHERE v >= 0.25 ORDER BY user_id, category LIMIT 1")).unwrap(),
    );
    let heavy: i64 = one(&format!(
        "SELECT count(*) FROM segment_recommend({heavy_user}::int8, 20, 'a3') r \
         JOIN ({own}) o USING (category) WHERE o.user_id = {heavy_user} AND o.v >= 0.25"
    ))
    .unwrap();
    assert!(one::<i64>(&format!("SELECT count(*) FROM segment_recommend({heavy_user}::int8, 20, 'a3')")).unwrap() > 0);
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM segment_recommend({heavy_user}::int8, 20, 'a3') WHERE category = '{heavy_cat}'")), Some(0));
    assert_eq!(heavy, 0);
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM segment_recommend({user}::int8, 20, 'a3') WHERE reason NOT LIKE '%as popular in segment%'")), Some(0));
    // a user the model does not know gets the population's favourites
    assert_eq!(
        one::<i64>("SELECT count(*) FROM segment_recommend(424242::int8, 5, 'a3') WHERE reason LIKE 'popular with all customers%'"),
        Some(5)
    );
    // a segment too small to report on is not described to anybody
    Spi::run("SET pg_segment.min_segment_size = 100000").unwrap();
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM segment_top_categories({seg}, 'a3')")), Some(0));
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM segment_recommend({user}::int8, 5, 'a3') WHERE reason LIKE '%segment%'")), Some(0));
    Spi::run("RESET pg_segment.min_segment_size").unwrap();
    assert_eq!(sqlstate_of("SELECT * FROM segment_top_categories(999, 'a3')").as_deref(), Some("42704"));
}

#[pg_test]
fn pg_test_forget_removes_every_trace_of_a_user() {
    fitted("a4", 300);
    Spi::run("SELECT segment_live('a4', 'sync')").unwrap();
    Spi::run("INSERT INTO a4_orders (user_id, created_at, amount, category) VALUES (5, '2026-05-30', 99, 'books')").unwrap();
    assert!(one::<i64>("SELECT count(*) FROM segment.a4_history WHERE user_id = 5").unwrap() >= 1);
    let before: i64 = one("SELECT count(*) FROM segment.a4_users").unwrap();
    let history: i64 = one("SELECT count(*) FROM segment.a4_history WHERE user_id <> 5").unwrap();
    let removed: i64 = one("SELECT segment_forget(5, 'a4')").unwrap();
    assert!(removed >= 2, "the users row and the history rows: {removed}");
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.a4_users WHERE user_id = 5"), Some(0));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.a4_history WHERE user_id = 5"), Some(0));
    assert_eq!(one::<i32>("SELECT segment_of(5, 'a4')"), None);
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.a4_users"), Some(before - 1));
    assert_eq!(one::<i64>("SELECT count(*) FROM segment.a4_history"), Some(history), "nobody else's history is touched");
    // every model at once; forgetting twice removes nothing more
    assert_eq!(one::<i64>("SELECT segment_forget(5)"), Some(0));
    assert_eq!(sqlstate_of("SELECT segment_forget(5, 'nope')").as_deref(), Some("42704"));
}

#[pg_test]
fn pg_test_describe_merges_small_segments_and_adds_noise_on_request() {
    fitted("a5", 500);
    let exact: String = one("SELECT string_agg(segment_id || ':' || users, ',' ORDER BY segment_id) FROM segment_describe('a5')").unwrap();
    // a threshold between the smallest and the largest segment merges the small ones
    let (small, large): (i64, i64) = (
        one("SELECT min(users) FROM segment_describe('a5')").unwrap(),
        one("SELECT max(users) FROM segment_describe('a5')").unwrap(),
    );
    Spi::run(&format!("SET pg_segment.min_segment_size = {}", small + 1)).unwrap();
    let rows: i64 = one("SELECT count(*) FROM segment_describe('a5')").unwrap();
    assert!(rows < 4);
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM segment_describe('a5') WHERE users < {}", small + 1)), Some(0), "no reported group is small");
    Spi::run(&format!("SET pg_segment.min_segment_size = {}", large + 1)).unwrap();
    let merged: Option<i64> = one("SELECT sum(users)::int8 FROM segment_describe('a5') WHERE segment_id IS NULL");
    assert!(merged.is_none() || merged == Some(500));
    Spi::run("RESET pg_segment.min_segment_size").unwrap();
    // a huge epsilon is (almost) no noise; a small one moves the counts
    let loose: String = one("SELECT string_agg(segment_id || ':' || users, ',' ORDER BY segment_id) FROM segment_describe('a5', epsilon => 1e12)").unwrap();
    assert_eq!(loose, exact);
    let noisy: String = one("SELECT string_agg(segment_id || ':' || users, ',' ORDER BY segment_id) FROM segment_describe('a5', epsilon => 0.01)").unwrap();
    assert_ne!(noisy, exact);
    assert_eq!(sqlstate_of("SELECT * FROM segment_describe('a5', epsilon => 0)").as_deref(), Some("22023"));
    assert_eq!(sqlstate_of("SELECT * FROM segment_describe('a5', epsilon => 'NaN')").as_deref(), Some("22023"));
}

#[pg_test]
fn pg_test_plots_are_self_contained_svg_for_every_kind() {
    fitted("a6", 400);
    for kind in ["map", "sizes", "profile"] {
        let svg: String = one(&format!("SELECT segment_plot('a6', '{kind}')")).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{kind}");
        assert!(svg.trim_end().ends_with("</svg>"), "{kind}");
        assert!(!svg.contains("<script") && !svg.contains("href"), "{kind}: nothing external or active");
        // every segment is in the legend
        let names: Vec<String> = Spi::get_one::<Vec<String>>("SELECT array_agg(name) FROM segment.centroids WHERE model = 'a6'").unwrap().unwrap();
        for n in names {
            assert!(svg.contains(&n), "{kind} names segment {n}");
        }
        // it parses as XML (PostgreSQL's own parser)
        assert_eq!(one::<bool>(&format!("SELECT xml_is_well_formed_document(segment_plot('a6', '{kind}'))")), Some(true), "{kind}");
    }
    // the map draws the sampled users plus one marker per centroid
    let circles: i64 = one("SELECT (length(segment_plot('a6', 'map')) - length(replace(segment_plot('a6', 'map'), '<circle', ''))) / 7").unwrap();
    assert_eq!(circles, 400 + 4);
    assert_eq!(sqlstate_of("SELECT segment_plot('a6', 'pie')").as_deref(), Some("22023"));
}
