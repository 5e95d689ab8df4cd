//! The behaviour features and the one set-based SQL statement that computes them.
//!
//! Everything here is text generation and bookkeeping; the aggregation itself runs inside
//! PostgreSQL (one windowed aggregate pass per source, so parallel workers can scan it).

/// How a raw feature value is transformed before scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    Linear,
    /// `sign(x)·ln(1+|x|)`: for heavy-tailed counts and money.
    Log,
}

/// What a missing value (a user with no rows of that kind) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impute {
    Zero,
    Median,
    /// The upper clip value: "as long ago as anybody" for recency-like features.
    High,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureDef {
    pub name: String,
    pub transform: Transform,
    pub impute: Impute,
    /// Multiplies the scaled value. Features that describe one thing together (the category
    /// mix, the time-of-week pattern) share a weight of 1/sqrt(group size), so a group counts
    /// like one feature in distances however many columns it has.
    pub weight: f64,
    /// The aggregate expression (over the cleaned rows `o`), or over events `e`.
    #[serde(skip)]
    pub sql: String,
    /// Computed from the events source (`e`) rather than the orders.
    #[serde(skip)]
    pub from_events: bool,
}

fn def(name: &str, transform: Transform, impute: Impute, sql: impl Into<String>) -> FeatureDef {
    FeatureDef { name: name.to_string(), transform, impute, weight: 1.0, sql: sql.into(), from_events: false }
}

/// The features that are also stored as plainly named columns of the per-user table.
pub const RFM_COLUMNS: &[&str] =
    &["recency_days", "frequency", "monetary", "avg_order_value", "tenure_days"];

/// Order features whose value for a user with no orders is 0 (the others stay NULL).
pub const ZERO_WITHOUT_ORDERS: &[&str] = &["frequency", "monetary", "orders_30d", "monetary_90d"];

/// Event types counted by the funnel features (matched case-insensitively).
pub const VIEW_TYPES: &[&str] = &["view", "page_view", "pageview", "product_view", "visit"];
pub const CART_TYPES: &[&str] = &["cart", "add_to_cart", "addtocart", "cart_add"];
pub const PURCHASE_TYPES: &[&str] = &["purchase", "order", "checkout", "buy", "transaction"];
pub const SEARCH_TYPES: &[&str] = &["search"];

/// Double-quotes an identifier the way PostgreSQL's `quote_ident` would, always quoting.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal that is safe whatever `standard_conforming_strings` says.
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn in_list(values: &[&str]) -> String {
    values.iter().map(|v| quote_literal(v)).collect::<Vec<_>>().join(", ")
}

/// The resolved columns of the orders source, as already-quoted SQL identifiers.
#[derive(Debug, Clone)]
pub struct OrdersSql {
    /// The relation, as `regclass::text` prints it (quoted where needed).
    pub relation: String,
    pub user: String,
    pub time: String,
    pub amount: String,
    pub category: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EventsSql {
    pub relation: String,
    pub user: String,
    pub time: String,
    pub event_type: String,
}

/// Reference time for recency and the recent-activity windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsOf {
    /// Seconds since the epoch (PostgreSQL computed it, so it is exact).
    At(f64),
    /// The transaction's time: what live updates use.
    Now,
}

impl AsOf {
    fn sql(self) -> String {
        match self {
            AsOf::At(epoch) => format!("to_timestamp({epoch:.6})"),
            AsOf::Now => "now()".to_string(),
        }
    }
}

/// The predicate that keeps a usable order row. The same predicate is used by the skip count,
/// so "used + skipped = total" holds by construction.
pub fn usable_order_predicate(o: &OrdersSql, as_of: AsOf) -> String {
    format!(
        "{u} IS NOT NULL AND {t} IS NOT NULL AND {a} IS NOT NULL \
         AND ({a})::float8 NOT IN ('NaN', 'Infinity', '-Infinity') \
         AND ({t})::timestamptz <= {asof}",
        u = o.user,
        t = o.time,
        a = o.amount,
        asof = as_of.sql()
    )
}

/// One pass that counts every skipped row by reason, plus exact duplicates.
pub fn skipped_rows_sql(o: &OrdersSql, as_of: AsOf) -> String {
    format!(
        "SELECT count(*) AS total, \
           count(*) FILTER (WHERE {u} IS NULL) AS null_user, \
           count(*) FILTER (WHERE {t} IS NULL) AS null_time, \
           count(*) FILTER (WHERE {a} IS NULL) AS null_amount, \
           count(*) FILTER (WHERE ({a})::float8 IN ('NaN', 'Infinity', '-Infinity')) AS non_finite_amount, \
           count(*) FILTER (WHERE ({t})::timestamptz > {asof}) AS after_as_of \
         FROM {rel}",
        u = o.user,
        t = o.time,
        a = o.amount,
        asof = as_of.sql(),
        rel = o.relation
    )
}

/// The most frequent categories among usable rows (each at least 1% of them) with their share
/// of all usable rows, for the category-mix features.
pub fn top_categories_sql(o: &OrdersSql, as_of: AsOf, limit: usize) -> Option<String> {
    let c = o.category.as_ref()?;
    Some(format!(
        "SELECT category, share FROM (\
           SELECT ({c})::text AS category, count(*) AS n, \
                  count(*)::float8 / sum(count(*)) OVER () AS share \
           FROM {rel} WHERE {pred} GROUP BY 1) s \
         WHERE category IS NOT NULL AND share >= 0.01 \
         ORDER BY n DESC, category LIMIT {limit}",
        rel = o.relation,
        pred = usable_order_predicate(o, as_of)
    ))
}

/// Pseudo-orders of the population's mix added to every user's category counts (additive
/// smoothing): a user with one order is not "100% books", and two users with one order each
/// do not form clusters of their own by category alone.
pub const CATEGORY_PRIOR_ORDERS: f64 = 2.0;

/// A category that gets its own share feature, with its share of all usable rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TopCategory {
    pub name: String,
    pub share: f64,
}

/// The feature catalogue for a source shape, in vector order.
pub fn catalogue(categories: &[TopCategory], has_category: bool, events: bool) -> Vec<FeatureDef> {
    use Impute::*;
    use Transform::*;
    // Every aggregate reads the cleaned, windowed rows `o`; `{f}` and `{k}` mark where the
    // dedupe filter goes, `{asof}` and `{tz}` the reference time and the time zone.
    let mut f = vec![
        def("recency_days", Log, High, "greatest(0, extract(epoch FROM {asof} - max(t){f}) / 86400)"),
        def("frequency", Log, Zero, "count(*){f}"),
        def("monetary", Log, Zero, "sum(a){f}"),
        def("avg_order_value", Log, Zero, "avg(a){f}"),
        def("tenure_days", Log, Median, "greatest(0, extract(epoch FROM {asof} - min(t){f}) / 86400)"),
        // A single order has no interval yet: the time since it is a lower bound on the next
        // one (a censored interval), which keeps one-order and two-order customers comparable.
        def(
            "interval_mean_days",
            Log,
            High,
            "coalesce(avg(gap){f}, greatest(0, extract(epoch FROM {asof} - min(t){f}) / 86400))",
        ),
        def("interval_std_days", Log, Zero, "coalesce(stddev_pop(gap){f}, 0)"),
        def("orders_30d", Log, Zero, "count(*) FILTER (WHERE {k}t > {asof} - interval '30 days')"),
        def("monetary_90d", Log, Zero, "coalesce(sum(a) FILTER (WHERE {k}t > {asof} - interval '90 days'), 0)"),
        def("weekend_share", Linear, Median, "avg((extract(isodow FROM t AT TIME ZONE {tz}) >= 6)::int){f}"),
        def("hour_sin", Linear, Median, "avg(sin(2 * pi() * extract(hour FROM t AT TIME ZONE {tz}) / 24)){f}"),
        def("hour_cos", Linear, Median, "avg(cos(2 * pi() * extract(hour FROM t AT TIME ZONE {tz}) / 24)){f}"),
    ];
    for t in f.iter_mut().filter(|f| ["weekend_share", "hour_sin", "hour_cos"].contains(&f.name.as_str())) {
        t.weight = 1.0 / 3f64.sqrt();
    }
    if has_category {
        let smoothed = |matches: &str, prior: f64| {
            format!(
                "(count(*) FILTER (WHERE {{k}}{matches}) + {a} * {prior:.9}) / (count(*){{f}} + {a})",
                a = CATEGORY_PRIOR_ORDERS
            )
        };
        for c in categories {
            let matches = format!("c = {}", quote_literal(&c.name));
            f.push(def(&format!("category:{}", c.name), Linear, Median, smoothed(&matches, c.share)));
        }
        let listed = if categories.is_empty() {
            "true".to_string()
        } else {
            format!(
                "(c IS NULL OR c NOT IN ({}))",
                categories.iter().map(|c| quote_literal(&c.name)).collect::<Vec<_>>().join(", ")
            )
        };
        let other = (1.0 - categories.iter().map(|c| c.share).sum::<f64>()).max(0.0);
        f.push(def("category:other", Linear, Median, smoothed(&listed, other)));
        let weight = 1.0 / ((categories.len() + 1) as f64).sqrt();
        for c in f.iter_mut().filter(|f| f.name.starts_with("category:")) {
            c.weight = weight;
        }
    }
    if events {
        let event_features = [
            def("events", Log, Zero, "e.events"),
            def("views", Log, Zero, "e.views"),
            def("carts", Log, Zero, "e.carts"),
            def("searches", Log, Zero, "e.searches"),
            def("cart_rate", Linear, Zero, "e.carts / nullif(e.views, 0)"),
            def(
                "purchase_rate",
                Linear,
                Zero,
                "least(1, coalesce(g.frequency, 0) / nullif(greatest(e.views, e.carts), 0))",
            ),
            def("event_recency_days", Log, High, "e.event_recency_days"),
        ];
        f.extend(event_features.into_iter().map(|d| FeatureDef { from_events: true, ..d }));
    }
    f
}

/// The statement that materialises one row per user (`rn`, `user_id`, the per-user duplicate
/// count `duplicates`, then one float8 column per feature) into the temp table `table`.
pub fn features_sql(
    table: &str,
    o: &OrdersSql,
    events: Option<&EventsSql>,
    feats: &[FeatureDef],
    as_of: AsOf,
    dedupe: bool,
    timezone: &str,
) -> String {
    format!(
        "CREATE TEMP TABLE {table} ON COMMIT DROP AS {}",
        features_select(o, events, feats, as_of, dedupe, timezone, None)
    )
}

/// The query behind [`features_sql`]. `only_users`, when given, is a condition on the user
/// column (such as `= ANY($1)`) applied to every source, so a live update aggregates exactly
/// what the batch statement would for those users and nothing else.
pub fn features_select(
    o: &OrdersSql,
    events: Option<&EventsSql>,
    feats: &[FeatureDef],
    as_of: AsOf,
    dedupe: bool,
    timezone: &str,
    only_users: Option<&str>,
) -> String {
    let only = |col: &str| only_users.map(|c| format!(" AND {col} {c}")).unwrap_or_default();
    let asof = as_of.sql();
    let tz = quote_literal(timezone);
    let (filter, keep) = if dedupe { (" FILTER (WHERE NOT dup)", "NOT dup AND ") } else { ("", "") };
    let category = o.category.as_deref().map(|c| format!("({c})::text")).unwrap_or("NULL::text".into());
    let order_feats: Vec<&FeatureDef> = feats.iter().filter(|f| !f.from_events).collect();
    let mut agg_cols = vec![
        "user_id".to_string(),
        "count(*) FILTER (WHERE dup) AS duplicates".to_string(),
    ];
    for f in &order_feats {
        let expr = fill(&f.sql, &[("{asof}", &asof), ("{tz}", &tz), ("{k}", keep), ("{f}", filter)]);
        agg_cols.push(format!("({expr})::float8 AS {}", quote_ident(&f.name)));
    }
    let orders_cte = format!(
        "o AS (\
           SELECT u AS user_id, t, a, c, \
             extract(epoch FROM t - lag(t) OVER w) / 86400 AS gap, \
             coalesce(lag(t) OVER w = t AND lag(a) OVER w = a \
                      AND lag(c) OVER w IS NOT DISTINCT FROM c, false) AS dup \
           FROM (SELECT {u} AS u, ({t})::timestamptz AS t, ({a})::float8 AS a, {category} AS c \
                 FROM {rel} WHERE {pred}{only_orders}) s \
           WINDOW w AS (PARTITION BY u ORDER BY t, a, c)), \
         g AS (SELECT {cols} FROM o GROUP BY user_id)",
        u = o.user,
        t = o.time,
        a = o.amount,
        rel = o.relation,
        pred = usable_order_predicate(o, as_of),
        only_orders = only(&o.user),
        cols = agg_cols.join(", ")
    );
    let order_names = order_feats.iter().map(|f| format!("g.{}", quote_ident(&f.name)));
    match events {
        None => format!(
            "WITH {orders_cte} \
             SELECT row_number() OVER (ORDER BY g.user_id) AS rn, g.user_id, g.duplicates, {cols} \
             FROM g",
            cols = order_names.collect::<Vec<_>>().join(", ")
        ),
        Some(e) => {
            let event_feats = feats.iter().filter(|f| f.from_events);
            // A user known only from events has bought nothing: zero, not unknown.
            let order_names = order_feats.iter().map(|f| {
                let c = format!("g.{}", quote_ident(&f.name));
                if ZERO_WITHOUT_ORDERS.contains(&f.name.as_str()) {
                    format!("coalesce({c}, 0) AS {}", quote_ident(&f.name))
                } else {
                    c
                }
            });
            let cols: Vec<String> = order_names
                .chain(event_feats.map(|f| format!("({})::float8 AS {}", f.sql, quote_ident(&f.name))))
                .collect();
            format!(
                "WITH {orders_cte}, \
                 e AS (SELECT {eu} AS user_id, count(*)::float8 AS events, \
                         count(*) FILTER (WHERE lower(({et})::text) IN ({views}))::float8 AS views, \
                         count(*) FILTER (WHERE lower(({et})::text) IN ({carts}))::float8 AS carts, \
                         count(*) FILTER (WHERE lower(({et})::text) IN ({searches}))::float8 AS searches, \
                         greatest(0, extract(epoch FROM {asof} - max(({etime})::timestamptz)) / 86400) AS event_recency_days \
                       FROM {erel} \
                       WHERE {eu} IS NOT NULL AND {etime} IS NOT NULL AND ({etime})::timestamptz <= {asof}{only_events} \
                       GROUP BY 1) \
                 SELECT row_number() OVER (ORDER BY coalesce(g.user_id, e.user_id)) AS rn, \
                        coalesce(g.user_id, e.user_id) AS user_id, coalesce(g.duplicates, 0) AS duplicates, \
                        {cols} \
                 FROM g FULL JOIN e ON e.user_id = g.user_id",
                eu = e.user,
                et = e.event_type,
                etime = e.time,
                erel = e.relation,
                only_events = only(&e.user),
                views = in_list(VIEW_TYPES),
                carts = in_list(CART_TYPES),
                searches = in_list(SEARCH_TYPES),
                cols = cols.join(", ")
            )
        }
    }
}

/// Replaces placeholders outside single-quoted literals, so a category named `{f}` stays
/// a category name.
fn fill(template: &str, subs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut in_literal = false;
    let mut rest = template;
    while let Some(ch) = rest.chars().next() {
        if ch == '\'' {
            in_literal = !in_literal; // a doubled quote toggles twice: still right
        } else if !in_literal {
            if let Some((from, to)) = subs.iter().find(|(from, _)| rest.starts_with(from)) {
                out.push_str(to);
                rest = &rest[from.len()..];
                continue;
            }
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn catalogue_shape() {
        let cats = vec![
            TopCategory { name: "books".into(), share: 0.3 },
            TopCategory { name: "toys".into(), share: 0.2 },
        ];
        let f = catalogue(&cats, true, true);
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(&names[..5], RFM_COLUMNS);
        assert!(names.contains(&"category:books") && names.contains(&"category:other"));
        assert!(names.contains(&"purchase_rate"));
        let cat_weight: f64 = f.iter().filter(|f| f.name.starts_with("category:")).map(|f| f.weight.powi(2)).sum();
        assert!((cat_weight - 1.0).abs() < 1e-12, "the category group weighs like one feature");
        let no_cat = catalogue(&[], false, false);
        assert!(no_cat.iter().all(|f| !f.name.starts_with("category:")));
    }

    #[test]
    fn placeholders_are_not_replaced_inside_literals() {
        assert_eq!(fill("avg((c = '{f}')::int){f}", &[("{f}", " F")]), "avg((c = '{f}')::int) F");
        assert_eq!(fill("'it''s {k}' {k}", &[("{k}", "K")]), "'it''s {k}' K");
    }

    #[test]
    fn dedupe_filters_every_aggregate() {
        let o = OrdersSql {
            relation: "o".into(),
            user: "u".into(),
            time: "t".into(),
            amount: "a".into(),
            category: None,
        };
        let feats = catalogue(&[], false, false);
        let plain = features_sql("f", &o, None, &feats, AsOf::At(0.0), false, "UTC");
        let dedup = features_sql("f", &o, None, &feats, AsOf::At(0.0), true, "UTC");
        assert!(!plain.contains("NOT dup"));
        // every aggregate call of every feature is filtered
        let placeholders = |f: &[FeatureDef]| -> usize {
            f.iter().map(|f| f.sql.matches("{f}").count() + f.sql.matches("{k}").count()).sum()
        };
        assert!(placeholders(&feats) >= feats.len());
        assert_eq!(dedup.matches("NOT dup").count(), placeholders(&feats));
        let with_cats = catalogue(&[TopCategory { name: "a".into(), share: 0.5 }], true, false);
        let dedup = features_sql("f", &o, None, &with_cats, AsOf::At(0.0), true, "UTC");
        // category shares filter both their numerator and their denominator
        assert_eq!(dedup.matches("NOT dup").count(), placeholders(&feats) + 4);
        assert!(!dedup.contains("{f}") && !dedup.contains("{k}"));
    }

    #[test]
    fn sql_uses_quoted_names_and_literal_categories() {
        let o = OrdersSql {
            relation: "public.\"Orders\"".into(),
            user: quote_ident("Customer"),
            time: quote_ident("ts"),
            amount: quote_ident("amt"),
            category: Some(quote_ident("cat")),
        };
        let cats = vec![TopCategory { name: "it's".into(), share: 0.5 }, TopCategory { name: "home.garden".into(), share: 0.2 }];
        let feats = catalogue(&cats, true, false);
        let sql = features_sql("pg_temp.f", &o, None, &feats, AsOf::At(0.0), false, "UTC");
        assert!(sql.contains("\"Customer\" AS u"));
        assert!(sql.contains("'it''s'"));
        assert!(sql.contains("AS \"category:it's\""));
        assert!(sql.contains("AS \"category:home.garden\""), "a dotted category is an order feature");
        assert!(!sql.contains("{asof}"));
    }
}
