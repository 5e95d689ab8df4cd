//! Acting on segments: recommendations, lookalikes, names people give segments, and erasing a
//! user. The logic is in `core::{recommend, neighbors}`; this layer reads the model tables.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{AnyElement, JsonB};
use serde_json::Value;

use crate::core::error::{ErrorKind, Result, SegError};
use crate::core::features::quote_ident;
use crate::core::neighbors::{self, Nearest};
use crate::core::recommend::{self, Recommendation};
use crate::pg::catalog::{self, history_table, queue_table, Current};
use crate::pg::error::{from_spi, OrRaise};
use crate::pg::{gucs, live};

/// The caller's key as an SPI argument (it is cast to the model's key type in SQL).
fn key_arg(user_key: AnyElement) -> DatumWithOid<'static> {
    // SAFETY: the datum and its type oid come together from the caller's argument.
    unsafe { DatumWithOid::new(user_key, user_key.oid()) }
}

fn current_model(model: &str) -> Result<Current> {
    catalog::check_model_name(model)?;
    catalog::current(model)
}

/// The current version as the live path caches it (one version check instead of a catalog
/// read plus the cache's own version check), with what the lookups need.
fn current_live(model: &str) -> Result<(Current, std::rc::Rc<live::LiveModel>)> {
    catalog::check_model_name(model)?;
    let live = live::load(model)?;
    let cur = Current { version: live.version, users_table: catalog::users_table(model), key_type: live.key_type.clone() };
    Ok((cur, live))
}

fn check_n(n: i32) -> Result<usize> {
    if !(1..=10_000).contains(&n) {
        return Err(SegError::invalid(format!("n must be between 1 and 10000, not {n}")));
    }
    Ok(n as usize)
}

/// Current number of users of a segment (the (segment_id, distance) index answers it).
fn segment_size(cur: &Current, segment_id: i32) -> Result<i64> {
    Spi::get_one_with_args::<i64>(
        &format!("SELECT count(*) FROM segment.{} WHERE segment_id = $1", quote_ident(&cur.users_table)),
        &[segment_id.into()],
    )
    .map_err(from_spi)
    .map(|n| n.unwrap_or(0))
}

fn reportable(cur: &Current, segment_id: i32) -> Result<bool> {
    Ok(segment_size(cur, segment_id)? >= gucs::MIN_SEGMENT_SIZE.get() as i64)
}

/// Each segment of the version: (id, name, users at fit, category mix).
type SegmentMix = (i32, String, f64, Vec<(String, f64)>);

fn segment_mixes(model: &str, version: i32) -> Result<Vec<SegmentMix>> {
    Spi::connect(|c| {
        let args: [DatumWithOid; 2] = [model.into(), version.into()];
        let t = c
            .select(
                "SELECT segment_id, name, users::float8, category_mix FROM segment.centroids \
                 WHERE model = $1 AND version = $2 ORDER BY segment_id",
                None,
                &args,
            )
            .map_err(from_spi)?;
        let mut out = Vec::new();
        for r in t {
            let mix = r.get::<JsonB>(4).map_err(from_spi)?.map(|j| j.0).unwrap_or(Value::Null);
            let mix = mix
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
                .unwrap_or_default();
            out.push((
                r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0),
                r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
                r.get::<f64>(3).map_err(from_spi)?.unwrap_or(0.0),
                mix,
            ));
        }
        Ok(out)
    })
}

fn population(mixes: &[SegmentMix]) -> Vec<(String, f64)> {
    recommend::population_mix(&mixes.iter().map(|(_, _, n, m)| (*n, m.clone())).collect::<Vec<_>>())
}

/// What a segment buys, relative to the population (lift), most distinctive first.
pub fn top_categories(model: &str, segment_id: i32, n: i32) -> Result<Vec<(String, f64, f64, f64)>> {
    let cur = current_model(model)?;
    let n = check_n(n)?;
    let mixes = segment_mixes(model, cur.version)?;
    let Some((_, _, _, mix)) = mixes.iter().find(|s| s.0 == segment_id) else {
        let ids: Vec<String> = mixes.iter().map(|s| s.0.to_string()).collect();
        return Err(SegError::new(ErrorKind::UndefinedObject, format!("model \"{model}\" has no segment {segment_id}"))
            .detail(format!("its segments are {}", ids.join(", "))));
    };
    if !reportable(&cur, segment_id)? {
        notice!("pg_segment: segment {segment_id} has fewer than pg_segment.min_segment_size users: not reported");
        return Ok(Vec::new());
    }
    let pop = population(&mixes);
    let mut rows: Vec<(String, f64, f64, f64)> = pop
        .iter()
        .filter(|(c, p)| c != "other" && *p > 0.0)
        .map(|(c, p)| {
            let s = mix.iter().find(|(m, _)| m == c).map_or(0.0, |(_, s)| *s);
            (c.clone(), s, *p, s / p)
        })
        .collect();
    rows.sort_by(|a, b| b.3.total_cmp(&a.3).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(n);
    Ok(rows)
}

/// Categories to suggest to a user: popular in their segment relative to everyone, minus what
/// they already buy a lot; a user the model does not know (yet) gets the population favourites.
pub fn recommend_for(user_key: AnyElement, n: i32, model: &str) -> Result<Vec<Recommendation>> {
    let (cur, live) = current_live(model)?;
    let n = check_n(n)?;
    let row: Option<(Option<i32>, Vec<Option<f64>>)> = Spi::connect(|c| {
        let t = c
            .select(
                &format!(
                    "SELECT segment_id, features FROM segment.{} WHERE user_id = $1::{}",
                    quote_ident(&cur.users_table),
                    cur.key_type
                ),
                Some(1),
                &[key_arg(user_key)],
            )
            .map_err(from_spi)?;
        match t.into_iter().next() {
            Some(r) => Ok::<_, SegError>(Some((
                r.get::<i32>(1).map_err(from_spi)?,
                r.get::<Vec<Option<f64>>>(2).map_err(from_spi)?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    })?;
    let mixes = segment_mixes(model, cur.version)?;
    let pop = population(&mixes);
    let (segment, features) = row.unwrap_or((None, Vec::new()));
    let own: Vec<(String, f64)> = live
        .fitted
        .features
        .iter()
        .zip(&features)
        .filter_map(|(f, v)| Some((f.name.strip_prefix("category:")?.to_string(), (*v)?)))
        .collect();
    let segment = match segment {
        Some(id) if reportable(&cur, id)? => mixes.iter().find(|s| s.0 == id),
        _ => None,
    };
    Ok(recommend::recommend(segment.map(|(_, name, _, mix)| (name.as_str(), mix.as_slice())), &pop, &own, n))
}

/// The `n` users nearest to `user_key` in embedding space (see `core::neighbors`), as text keys.
pub fn similar_users(user_key: AnyElement, n: i32, model: &str) -> Result<(Vec<(String, f64)>, usize)> {
    let (cur, live) = current_live(model)?;
    let n = check_n(n)?;
    let t = quote_ident(&cur.users_table);
    let me: Option<(String, Vec<f32>)> = Spi::connect(|c| {
        let r = c
            .select(
                &format!("SELECT user_id::text, embedding FROM segment.{t} WHERE user_id = $1::{}", cur.key_type),
                Some(1),
                &[key_arg(user_key)],
            )
            .map_err(from_spi)?;
        match r.into_iter().next() {
            Some(r) => Ok::<_, SegError>(Some((
                r.get::<String>(1).map_err(from_spi)?.unwrap_or_default(),
                r.get::<Vec<f32>>(2).map_err(from_spi)?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    })?;
    let Some((my_key, query)) = me else { return Ok((Vec::new(), 0)) };

    let fitted = &live.fitted;
    let centroids: Vec<(i32, Vec<f64>)> = (0..fitted.clustering.k())
        .map(|i| (fitted.segment_id(i), fitted.clustering.centroids.row(i).to_vec()))
        .collect();
    let cells: Vec<Vec<Vec<f64>>> =
        fitted.cells.iter().map(|c| c.rows().into_iter().map(|r| r.to_vec()).collect()).collect();
    let q: Vec<f64> = query.iter().map(|&v| v as f64).collect();
    let regions = neighbors::plan(&q, &centroids, &cells);

    let mut best = Nearest::new(n);
    let in_cell = format!("SELECT user_id::text, embedding FROM segment.{t} WHERE segment_id = $1 AND cell = $2");
    let in_segment = format!("SELECT user_id::text, embedding FROM segment.{t} WHERE segment_id = $1");
    Spi::connect(|c| {
        for r in regions {
            if r.bound > best.bound() {
                break; // regions come nearest-bound first: none of the rest can hold a closer user
            }
            let rows = match r.cell {
                Some(cell) => c.select(&in_cell, None, &[r.segment_id.into(), cell.into()]),
                None => c.select(&in_segment, None, &[r.segment_id.into()]),
            }
            .map_err(from_spi)?;
            for row in rows {
                let key = row.get::<String>(1).map_err(from_spi)?.unwrap_or_default();
                if key == my_key {
                    continue;
                }
                if let Some(e) = row.get::<Vec<f32>>(2).map_err(from_spi)? {
                    best.offer(key, neighbors::distance(&query, &e));
                }
            }
        }
        Ok::<_, SegError>(())
    })?;
    let examined = best.examined;
    Ok((best.into_sorted(), examined))
}

/// Gives a segment of the current version a name (and a description) chosen by people; a
/// label-stable re-fit keeps both for as long as the segment continues.
pub fn rename(model: &str, segment_id: i32, name: &str, description: Option<&str>) -> Result<()> {
    let cur = current_model(model)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(SegError::invalid("a segment name must be 1 to 100 characters")
            .hint("for example segment_rename('default', 3, 'VIP', 'top 5% by spend')"));
    }
    catalog::lock_model(model)?;
    let known = catalog::current_segments(model)?;
    if !known.iter().any(|s| s.id == segment_id) {
        let ids: Vec<String> = known.iter().map(|s| s.id.to_string()).collect();
        return Err(SegError::new(ErrorKind::UndefinedObject, format!("model \"{model}\" has no segment {segment_id}"))
            .detail(format!("its segments are {}", ids.join(", "))));
    }
    if let Some(other) = known.iter().find(|s| s.name == name && s.id != segment_id) {
        return Err(SegError::new(ErrorKind::DuplicateObject, format!("segment {} of model \"{model}\" is already named \"{name}\"", other.id))
            .hint("segment names are unique within a model; rename that one first or pick another name"));
    }
    Spi::run_with_args(
        "UPDATE segment.centroids SET name = $4, description = CASE WHEN $5 IS NULL THEN description ELSE nullif($5, '') END \
         WHERE model = $1 AND version = $2 AND segment_id = $3",
        &[model.into(), cur.version.into(), segment_id.into(), name.into(), description.into()],
    )
    .map_err(from_spi)
}

/// Erases every trace of a user that pg_segment keeps (features, embedding, segment, history,
/// queue entry) from one model or from all of them. Returns the rows removed.
pub fn forget(user_key: AnyElement, model: Option<&str>) -> Result<i64> {
    let models: Vec<String> = match model {
        Some(m) => {
            current_model(m)?;
            vec![m.to_string()]
        }
        None => Spi::get_one::<Vec<String>>("SELECT coalesce(array_agg(model ORDER BY model), '{}') FROM segment.current_models")
            .map_err(from_spi)?
            .unwrap_or_default(),
    };
    let mut removed = 0;
    for m in models {
        let cur = catalog::current(&m)?;
        let tables = [cur.users_table.clone(), history_table(&m), queue_table(&m)];
        let deletes: Vec<String> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| format!("d{i} AS (DELETE FROM segment.{} WHERE user_id = $1::{} RETURNING 1)", quote_ident(t), cur.key_type))
            .collect();
        let counts: Vec<String> = (0..tables.len()).map(|i| format!("(SELECT count(*) FROM d{i})")).collect();
        let n: Option<i64> = Spi::get_one_with_args(
            &format!("WITH {} SELECT {}", deletes.join(", "), counts.join(" + ")),
            &[key_arg(user_key)],
        )
        .map_err(from_spi)?;
        removed += n.unwrap_or(0);
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// SQL functions

/// Categories to suggest to a user, with a score (lift, or popularity for unknown users) and why.
#[pg_extern(stable, parallel_safe)]
fn segment_recommend(
    user_key: AnyElement,
    n: default!(i32, 10),
    model: default!(&str, "'default'"),
) -> TableIterator<'static, (name!(category, String), name!(score, f64), name!(reason, String))> {
    let rows = recommend_for(user_key, n, model).or_raise();
    TableIterator::new(rows.into_iter().map(|r| (r.category, r.score, r.reason)))
}

/// The categories a segment buys distinctly more than everybody, for marketing.
#[pg_extern(stable, parallel_safe)]
fn segment_top_categories(
    segment_id: i32,
    model: default!(&str, "'default'"),
    n: default!(i32, 5),
) -> TableIterator<
    'static,
    (name!(category, String), name!(share, f64), name!(population_share, f64), name!(lift, f64)),
> {
    TableIterator::new(top_categories(model, segment_id, n).or_raise())
}

/// Lookalikes as text keys; `segment_similar_users` casts them back to the caller's key type.
#[pg_extern(name = "_segment_similar_users", stable, parallel_safe)]
fn similar_users_text(
    user_key: AnyElement,
    n: i32,
    model: &str,
) -> TableIterator<'static, (name!(user_key, String), name!(distance, f64))> {
    let (rows, examined) = similar_users(user_key, n, model).or_raise();
    debug1!("pg_segment: lookalike search examined {examined} users");
    TableIterator::new(rows)
}

/// Renames a segment of a model's current version (and sets its description unless NULL).
#[pg_extern(volatile, parallel_unsafe)]
fn segment_rename(model: &str, segment_id: i32, name: &str, description: default!(Option<&str>, "NULL")) {
    rename(model, segment_id, name, description).or_raise()
}

/// Removes a user from one model (or every model): features, embedding, segment, history.
#[pg_extern(volatile, parallel_unsafe)]
fn segment_forget(user_key: AnyElement, model: default!(Option<&str>, "NULL")) -> i64 {
    forget(user_key, model).or_raise()
}

extension_sql!(
    r#"
CREATE FUNCTION segment_similar_users(user_key anyelement, n int DEFAULT 10, model text DEFAULT 'default')
RETURNS TABLE (similar_user anyelement, distance float8)
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    RETURN QUERY EXECUTE format('SELECT s.user_key::%s, s.distance FROM @extschema@._segment_similar_users($1, $2, $3) s',
                                pg_catalog.pg_typeof(segment_similar_users.user_key))
        USING segment_similar_users.user_key, n, model;
END
$fn$;
COMMENT ON FUNCTION segment_similar_users(anyelement, int, text) IS
    'the n users nearest to a user in embedding space (lookalikes), nearest first';
"#,
    name = "similar_users_wrapper",
    requires = [similar_users_text]
);
