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
    /// For a category share: the category (None for "other") and its prior share.
    #[serde(skip)]
    pub category: Option<(Option<String>, f64)>,
}

fn def(name: &str, transform: Transform, impute: Impute, sql: impl Into<String>) -> FeatureDef {
    FeatureDef {
        name: name.to_string(),
        transform,
        impute,
        weight: 1.0,
        sql: sql.into(),
        from_events: false,
        category: None,
    }
}

/// An order feature: computed by the `_segment_order_features` aggregate
/// (`core::order_features`), in this position of the catalogue.
fn order(name: &str, transform: Transform, impute: Impute) -> FeatureDef {
    def(name, transform, impute, "")
}

/// The features that are also stored as plainly named columns of the per-user table.
pub const RFM_COLUMNS: &[&str] = &["recency_days", "frequency", "monetary", "avg_order_value", "tenure_days"];

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

/// The name [`quote_ident`] quoted.
pub fn unquote_ident(quoted: &str) -> String {
    let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap_or(quoted);
    inner.replace("\"\"", "\"")
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
    pub aggregate: OrderAggregate,
}

/// The `_segment_order_features` aggregate to call.
#[derive(Debug, Clone)]
pub struct OrderAggregate {
    /// Schema-qualified (the extension's schema).
    pub name: String,
    /// 0.1.0's signature `(t, amount, slot, category_hash, hour, weekend, ...)`, installed until
    /// `ALTER EXTENSION pg_segment UPDATE`: the scan computes hour and weekend and leaves out
    /// non-finite amounts. The current one takes the local time `(t, local, amount, slot,
    /// category_hash, ...)` and checks amounts itself.
    pub legacy: bool,
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
    /// Seconds since the epoch, and the starts of the 30- and 90-day windows (PostgreSQL
    /// computed all three, in the session's time zone). As constants, the whole features
    /// statement is immutable: a distributed planner may ship it to the nodes holding the data.
    At { epoch: f64, cut30: f64, cut90: f64 },
    /// The transaction's time: what live updates use.
    Now,
}

impl AsOf {
    /// A reference time with windows of exactly 30 and 90 x 24 hours (tests).
    pub fn at(epoch: f64) -> AsOf {
        AsOf::At { epoch, cut30: epoch - 30.0 * 86_400.0, cut90: epoch - 90.0 * 86_400.0 }
    }

    fn sql(self) -> String {
        match self {
            AsOf::At { epoch, .. } => format!("to_timestamp({epoch:.6})"),
            AsOf::Now => "now()".to_string(),
        }
    }

    /// The start of the `days`-day window (30 or 90).
    fn window_start(self, days: u32) -> String {
        match self {
            AsOf::At { cut30, .. } if days == 30 => format!("to_timestamp({cut30:.6})"),
            AsOf::At { cut90, .. } if days == 90 => format!("to_timestamp({cut90:.6})"),
            _ => format!("{} - interval '{days} days'", self.sql()),
        }
    }
}

/// The predicate that keeps a usable order row. The same predicate is used by the skip count,
/// so "used + skipped = total" holds by construction.
pub fn usable_order_predicate(o: &OrdersSql, as_of: AsOf) -> String {
    format!("{} AND ({})::float8 NOT IN ('NaN', 'Infinity', '-Infinity')", scanned_order_predicate(o, as_of), o.amount)
}

/// [`usable_order_predicate`] but for the amount's finiteness, which the order features aggregate
/// checks itself (on the `float8` it receives anyway: converting a `numeric` twice per row cost
/// more than the rest of the scan).
fn scanned_order_predicate(o: &OrdersSql, as_of: AsOf) -> String {
    format!(
        "{u} IS NOT NULL AND {t} IS NOT NULL AND {a} IS NOT NULL AND ({t})::timestamptz <= {asof}",
        u = o.user,
        t = o.time,
        a = o.amount,
        asof = as_of.sql()
    )
}

/// One read of the orders for what a fit needs before its features: every skipped row counted
/// by reason (one row with `totals` true) and the most frequent categories among usable rows
/// (each at least 1% of them) with their share of all usable rows and their `rank` (rows with
/// `totals` false, at most `limit`). Without a category column only the totals row.
pub fn source_summary_sql(o: &OrdersSql, as_of: AsOf, limit: usize) -> String {
    format!(
        "WITH g AS ( \
           SELECT {cat} AS category, count(*) AS total, \
             count(*) FILTER (WHERE {u} IS NULL) AS null_user, \
             count(*) FILTER (WHERE {t} IS NULL) AS null_time, \
             count(*) FILTER (WHERE {a} IS NULL) AS null_amount, \
             count(*) FILTER (WHERE ({a})::float8 IN ('NaN', 'Infinity', '-Infinity')) AS non_finite_amount, \
             count(*) FILTER (WHERE ({t})::timestamptz > {asof}) AS after_as_of, \
             count(*) FILTER (WHERE {pred}) AS usable \
           FROM {rel} GROUP BY 1) \
         SELECT true AS totals, NULL::text AS category, NULL::float8 AS share, 0::int8 AS rank, \
                sum(total)::int8, sum(null_user)::int8, sum(null_time)::int8, sum(null_amount)::int8, \
                sum(non_finite_amount)::int8, sum(after_as_of)::int8 \
         FROM g \
         UNION ALL \
         SELECT false, category, share, rank, NULL, NULL, NULL, NULL, NULL, NULL FROM ( \
           SELECT category, usable::float8 / nullif(sum(usable) OVER (), 0) AS share, \
                  row_number() OVER (ORDER BY (category IS NULL), usable DESC, category) AS rank \
           FROM g) s \
         WHERE category IS NOT NULL AND share >= 0.01 AND rank <= {limit}",
        cat = o.category.as_ref().map_or("NULL::text".to_string(), |c| format!("({c})::text")),
        u = o.user,
        t = o.time,
        a = o.amount,
        asof = as_of.sql(),
        pred = usable_order_predicate(o, as_of),
        rel = o.relation
    )
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

/// Priors travel as text with 9 decimals: the same value on every path.
fn rounded(share: f64) -> f64 {
    format!("{share:.9}").parse().unwrap_or(share)
}

/// The feature catalogue for a source shape, in vector order.
pub fn catalogue(categories: &[TopCategory], has_category: bool, events: bool) -> Vec<FeatureDef> {
    use Impute::*;
    use Transform::*;
    // The order features, in the order `core::order_features::compute` returns them.
    let mut f = vec![
        order("recency_days", Log, High),
        order("frequency", Log, Zero),
        order("monetary", Log, Zero),
        order("avg_order_value", Log, Zero),
        order("tenure_days", Log, Median),
        // A single order has no interval yet: the time since it is a lower bound on the next
        // one (a censored interval), which keeps one-order and two-order customers comparable.
        order("interval_mean_days", Log, High),
        order("interval_std_days", Log, Zero),
        order("orders_30d", Log, Zero),
        order("monetary_90d", Log, Zero),
        order("weekend_share", Linear, Median),
        order("hour_sin", Linear, Median),
        order("hour_cos", Linear, Median),
    ];
    for t in f.iter_mut().filter(|f| ["weekend_share", "hour_sin", "hour_cos"].contains(&f.name.as_str())) {
        t.weight = 1.0 / 3f64.sqrt();
    }
    if has_category {
        // Shares smoothed towards the population's mix: (orders in it + 2 x prior) / (orders + 2).
        for c in categories {
            let mut d = order(&format!("category:{}", c.name), Linear, Median);
            d.category = Some((Some(c.name.clone()), rounded(c.share)));
            f.push(d);
        }
        let other = (1.0 - categories.iter().map(|c| c.share).sum::<f64>()).max(0.0);
        let mut d = order("category:other", Linear, Median);
        d.category = Some((None, rounded(other)));
        f.push(d);
        let weight = 1.0 / ((categories.len() + 1) as f64).sqrt();
        for c in f.iter_mut().filter(|f| f.category.is_some()) {
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

/// The category slot (1-based position among the top categories, NULL for any other) and the
/// category hash of an order row, as SQL expressions over the orders' columns.
fn slot_and_hash(o: &OrdersSql, feats: &[FeatureDef]) -> (String, String) {
    let slots: Vec<&(Option<String>, f64)> =
        feats.iter().filter(|f| !f.from_events).filter_map(|f| f.category.as_ref()).collect();
    match &o.category {
        Some(c) if !slots.is_empty() => {
            let cases: Vec<String> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, (name, _))| name.as_ref().map(|n| format!("WHEN {} THEN {}", quote_literal(n), i + 1)))
                .collect();
            let slot = if cases.is_empty() {
                "NULL::int".to_string()
            } else {
                format!("CASE ({c})::text {} END", cases.join(" "))
            };
            (slot, format!("pg_catalog.hashtextextended(({c})::text, 0)"))
        }
        _ => ("NULL::int".to_string(), "NULL::int8".to_string()),
    }
}

/// The category slots of a catalogue in slot order, by name (None is "other"): what a stored
/// live state's rows were encoded against (`live_state::tag`).
pub fn slot_names(feats: &[FeatureDef]) -> Vec<Option<&str>> {
    feats.iter().filter_map(|f| f.category.as_ref()).map(|(name, _)| name.as_deref()).collect()
}

/// Live mode's stored state of the users the rows of `rel` belong to (`rel` is the orders source
/// or a transition table of it): `user_id` and `orders`, the usable orders as the
/// `_segment_order_rows` aggregate (`rows_agg`) collects them. Unlike the features, the state
/// keeps orders dated after now: they count once their time has come. `only_users` as in
/// [`features_select`].
pub fn order_rows_select(
    o: &OrdersSql,
    feats: &[FeatureDef],
    timezone: &str,
    rows_agg: &str,
    rel: &str,
    only_users: Option<&str>,
) -> String {
    let (slot, hash) = slot_and_hash(o, feats);
    format!(
        "SELECT u AS user_id, {rows_agg}(t, lt, a, slot, h) AS orders \
         FROM (SELECT {u} AS u, ({t})::timestamptz AS t, ({t})::timestamptz AT TIME ZONE {tz} AS lt, \
                      ({a})::float8 AS a, {slot} AS slot, {hash} AS h \
               FROM {rel} WHERE {u} IS NOT NULL AND {t} IS NOT NULL AND {a} IS NOT NULL{only}) s \
         GROUP BY u",
        u = o.user,
        t = o.time,
        a = o.amount,
        tz = quote_literal(timezone),
        only = only_users.map(|c| format!(" AND {} {c}", o.user)).unwrap_or_default(),
    )
}

/// The events half of live mode's state: `user_id` and `events`, a tally made by `tally_fn`
/// (`_segment_event_tally`) as of now() of the usable events in `rel` (kinds as the funnel
/// features match them).
pub fn event_tally_select(e: &EventsSql, tally_fn: &str, rel: &str, only_users: Option<&str>) -> String {
    format!(
        "SELECT u AS user_id, {tally_fn}(now(), count(*) FILTER (WHERE t <= now()), \
                  count(*) FILTER (WHERE t <= now() AND k = 1), count(*) FILTER (WHERE t <= now() AND k = 2), \
                  count(*) FILTER (WHERE t <= now() AND k = 3), max(t) FILTER (WHERE t <= now()), \
                  array_agg(t) FILTER (WHERE t > now()), array_agg(k) FILTER (WHERE t > now())) AS events \
         FROM (SELECT {eu} AS u, ({et})::timestamptz AS t, \
                      CASE WHEN lower(({ty})::text) IN ({views}) THEN 1 WHEN lower(({ty})::text) IN ({carts}) THEN 2 \
                           WHEN lower(({ty})::text) IN ({searches}) THEN 3 ELSE 0 END AS k \
               FROM {rel} WHERE {eu} IS NOT NULL AND {et} IS NOT NULL{only}) s \
         GROUP BY u",
        eu = e.user,
        et = e.time,
        ty = e.event_type,
        views = in_list(VIEW_TYPES),
        carts = in_list(CART_TYPES),
        searches = in_list(SEARCH_TYPES),
        only = only_users.map(|c| format!(" AND {} {c}", e.user)).unwrap_or_default(),
    )
}

/// Live mode's whole state of the users `only_users` selects (all users without it), from the
/// sources: `user_id`, `orders` and `events` (NULL without an events source).
#[allow(clippy::too_many_arguments)]
pub fn state_select(
    o: &OrdersSql,
    events: Option<&EventsSql>,
    feats: &[FeatureDef],
    timezone: &str,
    rows_agg: &str,
    tally_fn: &str,
    only_users: Option<&str>,
) -> String {
    let orders = order_rows_select(o, feats, timezone, rows_agg, &o.relation, only_users);
    match events {
        None => format!("SELECT user_id, orders, NULL::bytea AS events FROM ({orders}) o"),
        Some(e) => format!(
            "SELECT coalesce(o.user_id, e.user_id) AS user_id, o.orders, e.events \
             FROM ({orders}) o FULL JOIN ({}) e ON e.user_id = o.user_id",
            event_tally_select(e, tally_fn, &e.relation, only_users)
        ),
    }
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
    let order_feats: Vec<&FeatureDef> = feats.iter().filter(|f| !f.from_events).collect();
    let slots: Vec<&(Option<String>, f64)> = order_feats.iter().filter_map(|f| f.category.as_ref()).collect();
    let (slot, hash) = slot_and_hash(o, feats);
    let priors: Vec<String> = slots.iter().map(|(_, p)| format!("{p:.9}")).collect();
    let cols: Vec<String> = std::iter::once("f[1] AS duplicates".to_string())
        .chain(order_feats.iter().enumerate().map(|(i, f)| format!("f[{}] AS {}", i + 2, quote_ident(&f.name))))
        .collect();
    let orders_cte = format!(
        "g AS (\
           SELECT user_id, {cols} FROM (\
             SELECT u AS user_id, {agg}({args}, {asof}, {cut30}, {cut90}, {priors}, {dedupe}) AS f \
             FROM (SELECT {u} AS u, ({t})::timestamptz AS t, ({a})::float8 AS a, {slot} AS slot, {hash} AS h, \
                          {local} \
                   FROM {rel} WHERE {pred}{only_orders}) s \
             GROUP BY u) x \
           WHERE f IS NOT NULL)",
        agg = o.aggregate.name,
        args = if o.aggregate.legacy { "t, a, slot, h, hr, w" } else { "t, lt, a, slot, h" },
        local = if o.aggregate.legacy {
            format!(
                "extract(hour FROM ({t})::timestamptz AT TIME ZONE {tz})::int AS hr, \
                 extract(isodow FROM ({t})::timestamptz AT TIME ZONE {tz}) >= 6 AS w",
                t = o.time
            )
        } else {
            format!("({})::timestamptz AT TIME ZONE {tz} AS lt", o.time)
        },
        cut30 = as_of.window_start(30),
        cut90 = as_of.window_start(90),
        u = o.user,
        t = o.time,
        a = o.amount,
        rel = o.relation,
        pred = if o.aggregate.legacy { usable_order_predicate(o, as_of) } else { scanned_order_predicate(o, as_of) },
        only_orders = only(&o.user),
        // float8[], not text: an argument with a collation would keep postgres_fdw from shipping the aggregate
        priors = format!("'{{{}}}'::float8[]", priors.join(",")),
        cols = cols.join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        for name in ["user_id", "Customer Id", "a\"b\"\"c"] {
            assert_eq!(unquote_ident(&quote_ident(name)), name);
        }
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn catalogue_shape() {
        let cats =
            vec![TopCategory { name: "books".into(), share: 0.3 }, TopCategory { name: "toys".into(), share: 0.2 }];
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

    fn orders(category: Option<&str>) -> OrdersSql {
        OrdersSql {
            relation: "o".into(),
            user: "u".into(),
            time: "t".into(),
            amount: "a".into(),
            category: category.map(quote_ident),
            aggregate: OrderAggregate { name: "s._segment_order_features".into(), legacy: false },
        }
    }

    #[test]
    fn the_aggregate_gets_dedupe_and_every_category_slot() {
        let o = orders(Some("cat"));
        let cats = vec![TopCategory { name: "a".into(), share: 0.5 }, TopCategory { name: "b".into(), share: 0.25 }];
        let feats = catalogue(&cats, true, false);
        let plain = features_sql("f", &o, None, &feats, AsOf::at(0.0), false, "UTC");
        let dedup = features_sql("f", &o, None, &feats, AsOf::at(0.0), true, "UTC");
        assert!(plain.contains("'{0.500000000,0.250000000,0.250000000}'::float8[], false)"), "{plain}");
        assert!(dedup.contains(", true)"));
        assert!(plain.contains("CASE (\"cat\")::text WHEN 'a' THEN 1 WHEN 'b' THEN 2 END"));
        // one output column per order feature, in catalogue order after the duplicate count
        assert!(plain.contains("f[1] AS duplicates, f[2] AS \"recency_days\""));
        assert!(plain.contains(&format!("f[{}] AS \"category:other\"", feats.len() + 1)));
        // without a category column nothing about categories reaches the aggregate
        let none = features_sql("f", &orders(None), None, &catalogue(&[], false, false), AsOf::at(0.0), false, "UTC");
        assert!(none.contains("NULL::int AS slot, NULL::int8 AS h") && none.contains("'{}'::float8[], false)"));
    }

    #[test]
    fn the_aggregate_of_either_signature_gets_its_arguments() {
        let feats = catalogue(&[], false, false);
        let current = features_sql("f", &orders(None), None, &feats, AsOf::at(0.0), false, "Europe/Paris");
        assert!(current.contains("_segment_order_features(t, lt, a, slot, h, "), "{current}");
        assert!(current.contains("(t)::timestamptz AT TIME ZONE 'Europe/Paris' AS lt"));
        assert!(!current.contains("'NaN'"), "the aggregate leaves out non-finite amounts itself");
        assert!(current.contains("WHERE f IS NOT NULL"), "users without a usable order are not users");
        let mut o = orders(None);
        o.aggregate.legacy = true;
        let legacy = features_sql("f", &o, None, &feats, AsOf::at(0.0), false, "Europe/Paris");
        assert!(legacy.contains("_segment_order_features(t, a, slot, h, hr, w, "), "{legacy}");
        assert!(legacy.contains("extract(isodow FROM (t)::timestamptz AT TIME ZONE 'Europe/Paris') >= 6 AS w"));
        assert!(legacy.contains(&usable_order_predicate(&o, AsOf::at(0.0))));
    }

    #[test]
    fn sql_uses_quoted_names_and_literal_categories() {
        let o = OrdersSql {
            relation: "public.\"Orders\"".into(),
            user: quote_ident("Customer"),
            time: quote_ident("ts"),
            amount: quote_ident("amt"),
            category: Some(quote_ident("cat")),
            aggregate: OrderAggregate { name: "s._segment_order_features".into(), legacy: false },
        };
        let cats = vec![
            TopCategory { name: "it's".into(), share: 0.5 },
            TopCategory { name: "home.garden".into(), share: 0.2 },
        ];
        let feats = catalogue(&cats, true, false);
        let sql = features_sql("pg_temp.f", &o, None, &feats, AsOf::at(0.0), false, "UTC");
        assert!(sql.contains("\"Customer\" AS u"));
        assert!(sql.contains("'it''s'"));
        assert!(sql.contains("AS \"category:it's\""));
        assert!(sql.contains("AS \"category:home.garden\""), "a dotted category is an order feature");
        assert!(!sql.contains("{asof}"));
    }
}
