//! The SQL functions. Each one translates: arguments in, core pipeline or SPI, rows out.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{AnyElement, JsonB};
use serde_json::{json, Map, Value};

use crate::core::error::SegError;
use crate::core::features::{self, quote_ident};
use crate::core::options::Options;
use crate::core::matching::{self, Lineage};
use crate::core::pipeline::{self, FitResult};
use crate::pg::catalog::{self, CentroidRow, ModelRow};
use crate::pg::error::{from_spi, raise, OrRaise};
use crate::pg::live::{self, SegmentRow};
use crate::pg::source::{self, Events, Orders, WORK_TABLE};

fn required<T>(v: Option<T>, what: &str) -> T {
    v.unwrap_or_else(|| raise(SegError::invalid(format!("{what} must not be null"))))
}

/// Distinguishing features of a segment: scaled means at least half an IQR from the
/// population's median, strongest first, at most 8.
fn profile_json(names: &[String], z: &[f64]) -> Value {
    let mut picked: Vec<(&String, f64)> = names.iter().zip(z.iter().copied()).filter(|(_, z)| z.abs() >= 0.5).collect();
    picked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let map: Map<String, Value> =
        picked.into_iter().take(8).map(|(n, z)| (n.clone(), json!((z * 1000.0).round() / 1000.0))).collect();
    Value::Object(map)
}

/// Up to three categories that make up at least 5% of a segment's orders, largest first.
fn top_categories(names: &[String], raw_means: &[f64]) -> Vec<String> {
    let mut cats: Vec<(&str, f64)> = names
        .iter()
        .zip(raw_means)
        .filter_map(|(n, &m)| n.strip_prefix("category:").filter(|c| *c != "other").map(|c| (c, m)))
        .filter(|(_, m)| m.is_finite() && *m >= 0.05)
        .collect();
    cats.sort_by(|a, b| b.1.total_cmp(&a.1));
    cats.into_iter().take(3).map(|(c, _)| c.to_string()).collect()
}

/// Internal entry point of `segment_users` (the SQL wrapper gives it its documented signature).
#[allow(clippy::too_many_arguments)]
#[pg_extern(name = "_segment_users", volatile, parallel_unsafe)]
fn segment_users_impl(
    source: Option<pg_sys::Oid>,
    k: Option<i32>,
    model: Option<String>,
    user_column: Option<String>,
    time_column: Option<String>,
    amount_column: Option<String>,
    category_column: Option<String>,
    options: Option<JsonB>,
) -> TableIterator<'static, (name!(segment_id, i32), name!(name, String), name!(users, i64), name!(share, f64))> {
    let source = required(source, "source");
    let model = required(model, "model");
    let opts = Options::parse(&options.map(|j| j.0).unwrap_or(Value::Null)).or_raise();
    let args = FitArgs { source, k, model, user_column, time_column, amount_column, category_column, opts };
    let rows = fit_model(&args, "fit").or_raise();
    if let Some(mode) = &args.opts.live {
        live::install(&args.model, live::Mode::parse(mode).or_raise()).or_raise();
    }
    TableIterator::new(rows.into_iter().map(|r| (r.0, r.1, r.2, r.3)))
}

/// What a fit needs: `segment_users`' arguments (also stored in the model spec, so that
/// `segment_refresh(refit => true)` can repeat them).
pub struct FitArgs {
    pub source: pg_sys::Oid,
    pub k: Option<i32>,
    pub model: String,
    pub user_column: Option<String>,
    pub time_column: Option<String>,
    pub amount_column: Option<String>,
    pub category_column: Option<String>,
    pub opts: Options,
}

/// Fits and stores a new version of a model. A re-fit keeps the ids and names of segments that
/// are still the same group of users and records every membership change with `reason`.
/// Returns (segment_id, name, users, share, users who moved in).
pub fn fit_model(args: &FitArgs, reason: &str) -> crate::core::error::Result<Vec<SegmentRow>> {
    source::with_bulk_settings(|| fit_model_inner(args, reason))
}

fn fit_model_inner(args: &FitArgs, reason: &str) -> crate::core::error::Result<Vec<SegmentRow>> {
    let (model, opts, k) = (&args.model, &args.opts, args.k);
    crate::pg::gucs::apply_max_threads();
    catalog::check_model_name(model)?;
    pipeline::check_k(k)?;
    let rel = source::relation(args.source)?;
    let orders = Orders::resolve(
        rel,
        args.user_column.as_deref(),
        args.time_column.as_deref(),
        args.amount_column.as_deref(),
        args.category_column.as_deref(),
    )?;
    let events = opts.events.as_ref().map(|e| Events::resolve(e, &orders.user)).transpose()?;
    if let Some(mode) = &opts.live {
        live::Mode::parse(mode)?;
    }
    let as_of = source::as_of(opts)?;
    let osql = orders.sql()?;
    let since = catalog::quiesce(model)?;
    let started = std::time::Instant::now();
    let took = || format!("{:.1} s", started.elapsed().as_secs_f64());

    let (mut skipped, categories) = source::summarize(&osql, as_of)?;
    debug1!("pg_segment: counted unusable rows and top categories ({})", took());
    warn_if_aggregate_spills(skipped.usable(), "fit")?;
    let feats = features::catalogue(&categories, orders.category.is_some(), events.is_some());
    let sql = features::features_sql(WORK_TABLE, &osql, events.as_ref().map(Events::sql).as_ref(), &feats, as_of, opts.dedupe, &opts.timezone);
    let source::Materialized { users, duplicates, counted_rows: counted } = source::materialize_features(&sql)?;
    notice!("pg_segment: features for {users} users from {} order rows ({} into the call)", skipped.total, took());
    skipped.duplicates = duplicates;
    skipped.duplicates_removed = opts.dedupe;
    let rows_used = counted + if opts.dedupe { duplicates } else { 0 };
    let rows_skipped = skipped.total - rows_used;
    if rows_skipped > 0 {
        notice!(
            "pg_segment: skipped {rows_skipped} of {} rows (null user {}, null time {}, null amount {}, non-finite amount {}, after as_of {})",
            skipped.total, skipped.null_user, skipped.null_time, skipped.null_amount, skipped.non_finite_amount, skipped.after_as_of
        );
    }
    if duplicates > 0 {
        notice!(
            "pg_segment: {duplicates} exact duplicate rows (same user, time, amount and category) {}",
            if opts.dedupe { "were counted once" } else { "were kept; pass options => '{\"dedupe\": true}' to count them once" }
        );
    }

    let feature_names: Vec<String> = feats.iter().map(|f| f.name.clone()).collect();
    // Train on a sample read into memory, then place every user batch by batch: the backend
    // holds the sample's features and a few numbers per user, never every user's features.
    pipeline::validate_k(k, users, opts)?;
    let sample = pipeline::training_sample(users, opts);
    let training = source::read_features_of(&feats, &sample)?;
    let progress = &mut |s: &str| notice!("pg_segment: {s}");
    let trained = pipeline::train(feats, &training, users, k, opts, progress)?;
    drop(training);
    let mut fit = source::place_all(&trained.model, users)?.finish(trained, opts.seed, progress);

    catalog::lock_model(model)?;
    let version = catalog::next_version(model)?;
    let previous = catalog::ensure_users_table(model, &orders.user.type_name)?;
    let (lineage, descriptions) =
        if previous { relabel(model, &mut fit)? } else { (None, vec![None; fit.segments.len()]) };
    let touched = if previous { catalog::touched_since(model, since)? } else { Vec::new() };
    let spec = json!({
        "columns": {
            "user": orders.user.name, "time": orders.time.name, "amount": orders.amount.name,
            "category": orders.category.as_ref().map(|c| &c.name),
        },
        "arguments": {
            "k": k, "user_column": args.user_column, "time_column": args.time_column,
            "amount_column": args.amount_column, "category_column": args.category_column,
        },
        "events": events.as_ref().map(|e| json!({
            "table": e.rel.name, "user": e.user.name, "time": e.time.name, "type": e.event_type.name,
        })),
        "as_of": match as_of { features::AsOf::At { epoch, .. } => json!(epoch), features::AsOf::Now => json!("now") },
        "categories": categories.iter().map(|c| json!({"name": c.name, "share": c.share})).collect::<Vec<_>>(),
        "features": fit.model.features,
        "options": opts,
    });
    let stored = Stored { model, version, spec: &spec, fit: &fit, lineage: lineage.as_ref(), descriptions: &descriptions };
    let rows = store(&stored, &feature_names, &orders, events.as_ref(), users, rows_used, rows_skipped, &skipped, reason)?;
    catalog::analyze_users_table(model)?;
    // live writers that committed after the fit's snapshot: apply them under the new version
    live::apply(model, &touched, "order")?;
    if !previous {
        live::reinstall(model)?;
    }
    notice!("pg_segment: model \"{model}\" version {version} stored: {} segments ({} into the call)", fit.segments.len(), took());
    Ok(rows)
}

/// Up front, against the fit's `work_mem` (raised to `maintenance_work_mem` by
/// `source::with_bulk_settings`): if the order features aggregate cannot keep every customer's
/// orders in memory, say so. PostgreSQL then spills groups to disk (slower, never out of
/// memory); the rest of the fit streams users in batches whatever their number.
pub fn warn_if_aggregate_spills(rows: i64, call: &str) -> crate::core::error::Result<()> {
    let need = crate::core::order_features::state_bytes(rows.max(0) as u64, 0);
    let budget: Option<f64> = Spi::get_one(
        "SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem')) \
                * pg_catalog.current_setting('hash_mem_multiplier')::float8",
    )
    .map_err(crate::pg::error::from_spi)?;
    let budget = budget.unwrap_or(f64::INFINITY);
    if need as f64 > budget {
        let mb = |b: f64| (b / (1024.0 * 1024.0)).ceil();
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "pg_segment: the order features of {rows} rows need at least {} MB, more than the {} MB maintenance_work_mem allows: parts will be aggregated on disk",
                mb(need as f64),
                mb(budget)
            ),
            "pg_segment",
        )
        .set_detail(format!("the rest of the {call} reads customers in batches and needs little memory"))
        .set_hint(format!("SET maintenance_work_mem = '{}MB' makes this {call} faster", mb(need as f64 * 1.5) as u64))
        .report(PgLogLevel::NOTICE);
    }
    Ok(())
}

/// Matches the new clusters to the current version's segments by shared users (Hungarian
/// algorithm): continued segments keep their id, name and description (including names people
/// gave them with `segment_rename`), the others get new ids; names stay unique. Returns the
/// lineage (splits, merges, retired ids) for the model record and the kept descriptions.
fn relabel(model: &str, fit: &mut FitResult) -> crate::core::error::Result<(Option<Lineage>, Vec<Option<String>>)> {
    let known = catalog::current_segments(model)?;
    let mut descriptions = vec![None; fit.segments.len()];
    if known.is_empty() {
        return Ok((None, descriptions));
    }
    let old_ids: Vec<i32> = known.iter().map(|s| s.id).collect();
    let labels: Vec<Option<i32>> = fit.assignments.iter().map(|a| a.map(|(c, _)| c as i32)).collect();
    let pairs = catalog::overlap(model, labels)?;
    let k = fit.segments.len();
    let mut overlap = vec![vec![0u64; old_ids.len()]; k];
    for (new, old_id, n) in pairs {
        if let (Some(row), Some(j)) = (overlap.get_mut(new as usize), old_ids.iter().position(|&o| o == old_id)) {
            row[j] = n as u64;
        }
    }
    let lineage = matching::match_segments(&overlap, &old_ids);
    let ids = matching::assign_ids(&lineage, &old_ids);
    let previous = |id: i32| known.iter().find(|s| s.id == id).expect("matched id exists");
    let kept: Vec<String> = lineage.continues.iter().flatten().map(|&id| previous(id).name.clone()).collect();
    for (i, seg) in fit.segments.iter_mut().enumerate() {
        match lineage.continues[i] {
            Some(id) => {
                seg.name = previous(id).name.clone();
                descriptions[i] = previous(id).description.clone();
            }
            None => {
                let base = seg.name.clone();
                let mut n = 2;
                while kept.contains(&seg.name) {
                    seg.name = format!("{base} {n}");
                    n += 1;
                }
            }
        }
    }
    fit.model.segment_ids = ids;
    Ok((Some(lineage), descriptions))
}

/// A segment's mean share of each category (the smoothed per-user shares), for recommendations.
fn category_mix(names: &[String], raw_means: &[f64]) -> Value {
    let map: Map<String, Value> = names
        .iter()
        .zip(raw_means)
        .filter_map(|(n, &m)| n.strip_prefix("category:").filter(|_| m.is_finite()).map(|c| (c.to_string(), json!(m))))
        .collect();
    Value::Object(map)
}

struct Stored<'a> {
    model: &'a str,
    version: i32,
    spec: &'a Value,
    fit: &'a FitResult,
    lineage: Option<&'a Lineage>,
    descriptions: &'a [Option<String>],
}

#[allow(clippy::too_many_arguments)]
fn store(
    st: &Stored,
    feature_names: &[String],
    orders: &Orders,
    events: Option<&Events>,
    users: usize,
    rows_used: i64,
    rows_skipped: i64,
    skipped: &source::Skipped,
    reason: &str,
) -> crate::core::error::Result<Vec<SegmentRow>> {
    let (model, version, fit) = (st.model, st.version, st.fit);
    let mut metrics = serde_json::to_value(&fit.report.metrics).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut metrics {
        m.insert("k_scores".into(), json!(fit.report.k_scores));
        m.insert("embedding".into(), json!(fit.report.embedding));
        m.insert("eps".into(), json!(fit.report.eps));
        m.insert("min_points".into(), json!(fit.report.min_points));
        m.insert("training_rows".into(), json!(fit.report.training_rows));
        m.insert("k_requested".into(), json!(fit.report.k_requested));
        m.insert("lineage".into(), json!(st.lineage.map(|l| json!({
            "continues": l.continues.iter().enumerate().map(|(i, c)| json!({"segment_id": fit.model.segment_id(i), "previous": c})).collect::<Vec<_>>(),
            "splits": l.splits.iter().map(|(i, from)| json!({"segment_id": fit.model.segment_id(*i), "split_from": from})).collect::<Vec<_>>(),
            "merged": l.merged.iter().map(|(old, i)| json!({"retired": old, "merged_into": fit.model.segment_id(*i)})).collect::<Vec<_>>(),
            "retired": l.retired,
        }))));
    }
    catalog::insert_model(ModelRow {
        model: model.to_string(),
        version,
        source: orders.rel.oid,
        events: events.map(|e| e.rel.oid),
        key_type: orders.user.type_name.clone(),
        k: fit.segments.len() as i32,
        dims: fit.model.encoder.dims() as i32,
        users: users as i64,
        rows_used,
        rows_skipped,
        spec: st.spec.clone(),
        params: serde_json::to_value(&fit.model).unwrap_or(Value::Null),
        metrics,
        skipped: serde_json::to_value(skipped).unwrap_or(Value::Null),
    })?;

    let total = users.max(1) as f64;
    let centroids: Vec<CentroidRow> = fit
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| CentroidRow {
            segment_id: fit.model.segment_id(i),
            name: s.name.clone(),
            description: st.descriptions.get(i).cloned().flatten(),
            users: s.users as i64,
            share: s.users as f64 / total,
            centroid: fit.model.clustering.centroids.row(i).iter().map(|&v| v as f32).collect(),
            top_categories: top_categories(feature_names, &s.raw_means),
            profile: profile_json(feature_names, &s.profile),
            category_mix: category_mix(feature_names, &s.raw_means),
        })
        .collect();
    catalog::insert_centroids(model, version, centroids)?;

    let segment: Vec<Option<i32>> = fit.assignments.iter().map(|a| a.map(|(c, _)| fit.model.segment_id(c))).collect();
    let distance: Vec<Option<f64>> = fit.assignments.iter().map(|a| a.map(|(_, d)| d)).collect();
    let embedding: Vec<f32> = fit.embeddings.iter().map(|&v| v as f32).collect();
    let moved_in = catalog::write_users(
        model,
        version,
        feature_names,
        segment,
        distance,
        fit.cells.clone(),
        embedding,
        fit.embeddings.ncols(),
        reason,
    )?;

    let mut rows: Vec<SegmentRow> = fit
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = fit.model.segment_id(i);
            let moved = moved_in.iter().find(|(s, _)| *s == id).map_or(0, |(_, n)| *n);
            (id, s.name.clone(), s.users as i64, s.users as f64 / total, moved)
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    Ok(rows)
}

/// Runs `SELECT <column> FROM segment.<model>_users WHERE user_id = $1::<key type>`.
fn lookup<T: FromDatum + IntoDatum>(user_key: AnyElement, model: &str, column: &str) -> Option<T> {
    catalog::check_model_name(model).or_raise();
    let cur = catalog::current(model).or_raise();
    let sql = format!(
        "SELECT (SELECT {column} FROM segment.{} WHERE user_id = $1::{})",
        quote_ident(&cur.users_table),
        cur.key_type
    );
    // SAFETY: the datum and its type oid come together from the caller's argument.
    let arg = unsafe { DatumWithOid::new(user_key, user_key.oid()) };
    Spi::get_one_with_args::<T>(&sql, &[arg]).map_err(from_spi).or_raise()
}

/// The user's segment in the model's current version; NULL for an unknown user (or noise).
#[pg_extern(stable, parallel_safe)]
fn segment_of(user_key: AnyElement, model: default!(&str, "'default'")) -> Option<i32> {
    lookup(user_key, model, "segment_id")
}

/// The user's embedding (the encoder's output) in the model's current version.
#[pg_extern(stable, parallel_safe)]
fn segment_embedding(user_key: AnyElement, model: default!(&str, "'default'")) -> Option<Vec<f32>> {
    lookup(user_key, model, "embedding")
}

/// Quality metrics of the model's current version, one row per metric.
#[pg_extern(stable, parallel_safe)]
fn segment_evaluate(
    model: default!(&str, "'default'"),
) -> TableIterator<'static, (name!(metric, String), name!(value, Option<f64>))> {
    catalog::check_model_name(model).or_raise();
    let cur = catalog::current(model).or_raise();
    let metrics: Option<JsonB> = Spi::get_one_with_args(
        "SELECT metrics FROM segment.models WHERE model = $1 AND version = $2",
        &[model.into(), cur.version.into()],
    )
    .or_raise();
    let m = metrics.map(|j| j.0).unwrap_or(Value::Null);
    let num = |v: &Value| v.as_f64().or_else(|| v.as_bool().map(|b| b as i64 as f64));
    let mut rows: Vec<(String, Option<f64>)> = [
        "silhouette", "davies_bouldin", "calinski_harabasz", "inertia", "mean_distance", "k", "users",
        "assigned", "coverage", "silhouette_sampled", "training_rows",
    ]
    .iter()
    .map(|k| (k.to_string(), num(&m[*k])))
    .collect();
    rows.push(("autoencoder_holdout_mse".into(), num(&m["embedding"]["autoencoder_holdout_mse"])));
    rows.push(("pca_holdout_mse".into(), num(&m["embedding"]["pca_holdout_mse"])));
    rows.push(("version".into(), Some(cur.version as f64)));
    TableIterator::new(rows)
}

/// One row per segment of the current version: size now, RFM means, top categories and the
/// distinguishing features. Segments smaller than `pg_segment.min_segment_size` are merged into
/// one row (segment_id NULL), left out if still too small; with `epsilon`, counts and means get
/// Laplace noise for epsilon-differential privacy (see `core::privacy`).
#[pg_extern(stable, parallel_safe)]
fn segment_describe(
    model: default!(&str, "'default'"),
    epsilon: default!(Option<f64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(segment_id, Option<i32>),
        name!(name, String),
        name!(users, i64),
        name!(share, f64),
        name!(recency_days, Option<f64>),
        name!(frequency, Option<f64>),
        name!(monetary, Option<f64>),
        name!(top_categories, Vec<String>),
        name!(profile, JsonB),
    ),
> {
    TableIterator::new(describe(model, epsilon).or_raise())
}

type DescribeRow = (Option<i32>, String, i64, f64, Option<f64>, Option<f64>, Option<f64>, Vec<String>, JsonB);

fn describe(model: &str, epsilon: Option<f64>) -> crate::core::error::Result<Vec<DescribeRow>> {
    use crate::core::privacy::{self, SegmentAggregate};
    catalog::check_model_name(model)?;
    let cur = catalog::current(model)?;
    if let Some(e) = epsilon {
        if !(e.is_finite() && e > 0.0) {
            return Err(SegError::invalid(format!("epsilon must be a positive number, not {e}"))
                .hint("smaller epsilon means more noise and more privacy; 1 is a common choice"));
        }
    }
    // With differential privacy every published sum is of values clipped to [0, bound], the
    // bound being the model's 99th percentile of the feature (published with the model).
    let bounds: Vec<f64> = match epsilon {
        None => vec![f64::INFINITY; 3],
        Some(_) => {
            let live = live::load(model)?;
            ["recency_days", "frequency", "monetary"]
                .iter()
                .map(|n| {
                    live.fitted.scaler.features.iter().find(|f| f.name == *n).map_or(f64::INFINITY, |f| {
                        crate::core::scaling::inverse_transform(f.transform, f.hi).max(0.0)
                    })
                })
                .collect()
        }
    };
    let lower = if epsilon.is_some() { 0.0 } else { f64::NEG_INFINITY };
    let t = quote_ident(&cur.users_table);
    let clip = |c: &str, j: usize| format!("sum(least(greatest(u.{c}, $3), $4[{j}])), count(u.{c})");
    let sql = format!(
        "SELECT c.segment_id, c.name, count(u.user_id)::float8, {r}, {f}, {m}, c.top_categories, c.profile \
         FROM segment.centroids c \
         LEFT JOIN segment.{t} u ON u.segment_id = c.segment_id AND u.model_version = c.version \
         WHERE c.model = $1 AND c.version = $2 \
         GROUP BY c.segment_id, c.name, c.top_categories, c.profile \
         ORDER BY c.segment_id",
        r = clip("recency_days", 1),
        f = clip("frequency", 2),
        m = clip("monetary", 3),
    );
    let mut extra: Vec<(i32, Vec<String>, JsonB)> = Vec::new();
    let rows = Spi::connect(|c| {
        let args: [DatumWithOid; 4] = [model.into(), cur.version.into(), lower.into(), bounds.clone().into()];
        let mut out = Vec::new();
        for r in c.select(&sql, None, &args)? {
            let id = r.get::<i32>(1)?.unwrap_or(0);
            let pair = |j: usize| -> Result<(f64, f64), pgrx::spi::Error> {
                Ok((r.get::<f64>(j)?.unwrap_or(0.0), r.get::<i64>(j + 1)?.unwrap_or(0) as f64))
            };
            out.push(SegmentAggregate {
                segment_id: Some(id),
                name: r.get::<String>(2)?.unwrap_or_default(),
                users: r.get::<f64>(3)?.unwrap_or(0.0),
                sums: vec![pair(4)?, pair(6)?, pair(8)?],
            });
            extra.push((id, r.get::<Vec<String>>(10)?.unwrap_or_default(), r.get::<JsonB>(11)?.unwrap_or(JsonB(json!({})))));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(from_spi)?;
    let mut rows = privacy::merge_small(rows, crate::pg::gucs::MIN_SEGMENT_SIZE.get() as f64);
    if let Some(e) = epsilon {
        privacy::add_noise(&mut rows, e, &bounds, &mut rand::thread_rng());
    }
    let total: f64 = rows.iter().map(|r| r.users.round()).sum();
    Ok(rows
        .iter()
        .map(|r| {
            let (cats, profile) = extra
                .iter()
                .find(|x| Some(x.0) == r.segment_id)
                .map_or((Vec::new(), JsonB(json!({}))), |x| (x.1.clone(), JsonB(x.2 .0.clone())));
            let users = r.users.round();
            (r.segment_id, r.name.clone(), users as i64, if total > 0.0 { users / total } else { 0.0 },
             r.mean(0), r.mean(1), r.mean(2), cats, profile)
        })
        .collect())
}

/// Times pg_segment's k-means alone on a model's stored embeddings (one k-means++ start from
/// `seed`, at most `max_iter` iterations): the P2 comparison of `make bench` with scikit-learn on
/// the same matrix.
#[pg_extern(name = "_segment_kmeans_benchmark", volatile, parallel_unsafe)]
fn kmeans_benchmark(
    model: &str,
    k: i32,
    max_iter: default!(i32, 300),
    seed: default!(i32, 42),
) -> TableIterator<'static, (name!(seconds, f64), name!(inertia, f64), name!(users, i64), name!(dims, i32))> {
    catalog::check_model_name(model).or_raise();
    let cur = catalog::current(model).or_raise();
    if !(2..=256).contains(&k) || max_iter < 1 {
        raise(SegError::invalid("k must be between 2 and 256 and max_iter at least 1"));
    }
    let rows: Vec<Vec<f32>> = Spi::connect(|c| {
        let t = c.select(&format!("SELECT embedding FROM segment.{} ORDER BY user_id", quote_ident(&cur.users_table)), None, &[])?;
        let mut out = Vec::new();
        for r in t {
            out.push(r.get::<Vec<f32>>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise();
    let dims = rows.first().map_or(0, Vec::len);
    crate::pg::gucs::apply_max_threads();
    let x = ndarray::Array2::from_shape_fn((rows.len(), dims), |(i, j)| rows[i][j] as f64);
    let started = std::time::Instant::now();
    let (_, inertia) = crate::core::clustering::kmeans_single(x.view(), k as usize, max_iter as usize, seed as u64).or_raise();
    TableIterator::once((started.elapsed().as_secs_f64(), inertia, rows.len() as i64, dims as i32))
}

extension_sql!(
    r#"
CREATE FUNCTION segment_users(
    source regclass,
    k int DEFAULT NULL,
    model text DEFAULT 'default',
    user_column name DEFAULT NULL,
    time_column name DEFAULT NULL,
    amount_column name DEFAULT NULL,
    category_column name DEFAULT NULL,
    options jsonb DEFAULT '{}'
) RETURNS TABLE (segment_id int, name text, users bigint, share float8)
LANGUAGE sql VOLATILE
AS $$
    SELECT * FROM @extschema@._segment_users(source::oid, k, model, user_column::text, time_column::text,
                                              amount_column::text, category_column::text, options)
$$;
COMMENT ON FUNCTION segment_users(regclass, int, text, name, name, name, name, jsonb) IS
    'fit (or re-fit) a segmentation model on a behaviour table and return its segments';
"#,
    name = "segment_users_wrapper",
    requires = [segment_users_impl]
);
