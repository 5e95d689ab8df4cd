//! The model tables over SPI: `segment.models`, `segment.centroids`, and each model's
//! `segment.<model>_users` table and `segment.<model>_segments` view.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::core::error::{ErrorKind, Result, SegError};
use crate::core::features::{quote_ident, quote_literal, RFM_COLUMNS};
use crate::pg::error::from_spi;

/// Longest model name: leaves room for the `_segments` suffix in a 63-byte identifier.
pub const MAX_MODEL_NAME: usize = 48;

/// Model names become parts of table names, so they are plain lowercase identifiers.
pub fn check_model_name(model: &str) -> Result<()> {
    let ok_chars = model.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let ok_start = model.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if model.is_empty() || !ok_chars || !ok_start || model.len() > MAX_MODEL_NAME {
        return Err(SegError::new(ErrorKind::InvalidName, format!("invalid model name \"{model}\""))
            .detail(format!(
                "a model name is 1 to {MAX_MODEL_NAME} lowercase letters, digits and underscores, starting with a letter or underscore"
            ))
            .hint("for example model => 'default' or model => 'q4_customers'"));
    }
    Ok(())
}

pub fn users_table(model: &str) -> String {
    format!("{model}_users")
}

pub fn segments_view(model: &str) -> String {
    format!("{model}_segments")
}

pub fn history_table(model: &str) -> String {
    format!("{model}_history")
}

pub fn queue_table(model: &str) -> String {
    format!("{model}_queue")
}

/// What the lookup functions need to know about a model's current version.
pub struct Current {
    pub version: i32,
    pub users_table: String,
    pub key_type: String,
}

fn unknown_model(model: &str) -> SegError {
    let known: Vec<String> = Spi::connect(|c| {
        c.select("SELECT model FROM segment.current_models ORDER BY model LIMIT 20", None, &[])
            .map(|t| t.into_iter().filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            .unwrap_or_default()
    });
    let detail = if known.is_empty() {
        "there are no models yet".to_string()
    } else {
        format!("existing models: {}", known.join(", "))
    };
    SegError::new(ErrorKind::UndefinedObject, format!("model \"{model}\" does not exist"))
        .detail(detail)
        .hint("create it with SELECT * FROM segment_users('orders', model => '...')")
}

pub fn current(model: &str) -> Result<Current> {
    Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [model.into()];
        let t = c
            .select(
                "SELECT version, users_table::text, key_type FROM segment.current_models WHERE model = $1",
                Some(1),
                &args,
            )
            .map_err(from_spi)?;
        let Some(r) = t.into_iter().next() else {
            return Err(unknown_model(model));
        };
        Ok(Current {
            version: r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0),
            users_table: r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
            key_type: r.get::<String>(3).map_err(from_spi)?.unwrap_or_default(),
        })
    })
}

/// Serialises fits of the same model (two concurrent `segment_users` calls for one model would
/// otherwise race for the next version number).
pub fn lock_model(model: &str) -> Result<()> {
    Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_segment.model:' || $1))",
        &[model.into()],
    )
    .map_err(from_spi)
}

/// Fill factor of a users table: live updates rewrite a user's row (features, embedding,
/// distance, time) without touching its indexed columns unless the segment changes, so room left
/// on each page lets them be HOT updates (no index insertions, no index bloat from repeated
/// updates).
pub const USERS_FILLFACTOR: u32 = 90;

/// A users row stays uncompressed in its page up to this size (the default, about 2 kB, would
/// have every live write of a customer with some sixty orders compress their stored state).
pub const USERS_TOAST_TARGET: u32 = 8160;


/// Waits for the live writers in flight to commit (an exclusive lock taken and released in one
/// statement, so nothing is held while the fit runs) and returns the time after which any live
/// update may be missing from the fit's snapshot.
pub fn quiesce(model: &str) -> Result<f64> {
    Spi::get_one_with_args::<f64>(
        "SELECT extract(epoch FROM t)::float8 FROM (\
           SELECT pg_catalog.pg_advisory_lock(k) AS l, pg_catalog.clock_timestamp() AS t, \
                  pg_catalog.pg_advisory_unlock(k) AS u \
           FROM (SELECT pg_catalog.hashtext('pg_segment.model:' || $1) AS k) s) x",
        &[model.into()],
    )
    .map_err(from_spi)
    .map(|t| t.unwrap_or(0.0))
}

/// Users a live writer updated since `since` (epoch seconds): the fit's snapshot may predate
/// their latest rows, so they are applied again under the new version.
pub fn touched_since(model: &str, since: f64) -> Result<Vec<String>> {
    let t = quote_ident(&users_table(model));
    Spi::get_one_with_args::<Vec<String>>(
        &format!(
            "SELECT coalesce(array_agg(user_id::text), '{{}}') FROM segment.{t} WHERE updated_at >= to_timestamp($1)"
        ),
        &[since.into()],
    )
    .map_err(from_spi)
    .map(Option::unwrap_or_default)
}

pub fn next_version(model: &str) -> Result<i32> {
    Spi::get_one_with_args("SELECT coalesce(max(version), 0) + 1 FROM segment.models WHERE model = $1", &[model.into()])
        .map_err(from_spi)
        .map(|v: Option<i32>| v.unwrap_or(1))
}

/// Creates the per-model tables and view, or re-creates them when the key type changed.
/// Returns whether the existing tables were kept (so the previous version's users are there).
pub fn ensure_users_table(model: &str, key_type: &str) -> Result<bool> {
    let table = users_table(model);
    let existing: Option<String> = Spi::get_one_with_args(
        "SELECT (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = pg_catalog.to_regclass('segment.' || pg_catalog.quote_ident($1)) \
                   AND a.attname = 'user_id' AND NOT a.attisdropped)",
        &[table.clone().into()],
    )
    .map_err(from_spi)?;
    let (t, v) = (quote_ident(&table), quote_ident(&segments_view(model)));
    let (h, q) = (quote_ident(&history_table(model)), quote_ident(&queue_table(model)));
    let sv = quote_ident(&format!("{model}_sizes_daily"));
    if existing.as_deref() == Some(key_type) {
        ensure_state_columns(model)?;
        return Ok(true);
    }
    if existing.is_some() {
        Spi::run(&format!(
            "DROP VIEW IF EXISTS segment.{v}; DROP VIEW IF EXISTS segment.{sv}; DROP TABLE segment.{t}; \
             DROP TABLE IF EXISTS segment.{h}; DROP TABLE IF EXISTS segment.{q}"
        ))
        .map_err(from_spi)?;
    }
    let rfm: Vec<String> = RFM_COLUMNS.iter().map(|c| format!("{c} float8")).collect();
    Spi::run(&format!(
        "CREATE TABLE segment.{t} (\
           user_id {key_type} PRIMARY KEY, \
           segment_id int, \
           distance float8, \
           cell int, \
           model_version int NOT NULL, \
           {rfm}, \
           features float8[] NOT NULL, \
           embedding real[] NOT NULL, \
           updated_at timestamptz NOT NULL DEFAULT now(), \
           {STATE_COLUMNS}) \
         WITH (fillfactor = {USERS_FILLFACTOR}, toast_tuple_target = {USERS_TOAST_TARGET}); \
         CREATE INDEX ON segment.{t} (segment_id, cell); \
         COMMENT ON TABLE segment.{t} IS {comment}; \
         CREATE VIEW segment.{v} AS \
           SELECT u.user_id, u.segment_id, c.name AS segment, u.distance, u.model_version, u.updated_at \
           FROM segment.{t} u \
           LEFT JOIN segment.centroids c \
             ON c.model = {m} AND c.version = u.model_version AND c.segment_id = u.segment_id; \
         COMMENT ON VIEW segment.{v} IS {vcomment}; \
         CREATE TABLE segment.{h} (\
           user_id {key_type} NOT NULL, \
           from_segment int, \
           to_segment int, \
           changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(), \
           model_version int NOT NULL, \
           reason text NOT NULL); \
         CREATE INDEX ON segment.{h} (user_id, changed_at); \
         CREATE INDEX ON segment.{h} (changed_at); \
         COMMENT ON TABLE segment.{h} IS {hcomment}; \
         CREATE VIEW segment.{sv} AS \
           WITH moves AS ( \
             SELECT changed_at::date AS day, to_segment AS segment_id, 1 AS delta FROM segment.{h} WHERE to_segment IS NOT NULL \
             UNION ALL \
             SELECT changed_at::date, from_segment, -1 FROM segment.{h} WHERE from_segment IS NOT NULL), \
           daily AS (SELECT day, segment_id, sum(delta) AS delta FROM moves GROUP BY 1, 2), \
           sizes AS (SELECT day, segment_id, (sum(delta) OVER (PARTITION BY segment_id ORDER BY day))::bigint AS users \
                     FROM daily) \
           SELECT day, segment_id, users FROM sizes \
           WHERE users >= coalesce(nullif(pg_catalog.current_setting('pg_segment.min_segment_size', true), '')::int, 10); \
         COMMENT ON VIEW segment.{sv} IS {svcomment}; \
         CREATE TABLE segment.{q} (\
           user_id {key_type} NOT NULL, \
           enqueued_at timestamptz NOT NULL DEFAULT now()); \
         COMMENT ON TABLE segment.{q} IS {qcomment}",
        rfm = rfm.join(", "),
        m = quote_literal(model),
        comment = quote_literal(&format!("pg_segment model {model}: features, embedding and segment per user")),
        vcomment = quote_literal(&format!("pg_segment model {model}: segment id and name per user")),
        hcomment = quote_literal(&format!("pg_segment model {model}: every segment membership change")),
        svcomment = quote_literal(&format!(
            "pg_segment model {model}: segment sizes at the end of each day with changes (sizes below pg_segment.min_segment_size are left out)"
        )),
        qcomment = quote_literal(&format!("pg_segment model {model}: users waiting for segment_process (async live mode; a user may appear more than once)")),
    ))
    .map_err(from_spi)?;
    Ok(false)
}

/// Live mode's per-user state (`core::live_state`): NULL until sync mode is turned on, and for
/// users it must rebuild from the sources.
const STATE_COLUMNS: &str = "live_tag int8, live_orders bytea, live_events bytea";

/// Adds the state columns to a users table made before they existed (an ALTER only when they
/// are missing: it locks the table).
pub fn ensure_state_columns(model: &str) -> Result<()> {
    let t = quote_ident(&users_table(model));
    let missing: Option<bool> = Spi::get_one(&format!(
        "SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = 'segment.{t}'::regclass \
                              AND attname = 'live_events' AND NOT attisdropped)",
        t = t.replace('\'', "''")
    ))
    .map_err(from_spi)?;
    if missing == Some(true) {
        let add: Vec<String> = STATE_COLUMNS.split(", ").map(|c| format!("ADD COLUMN IF NOT EXISTS {c}")).collect();
        Spi::run(&format!(
            "ALTER TABLE segment.{t} {}, SET (toast_tuple_target = {USERS_TOAST_TARGET})",
            add.join(", ")
        ))
        .map_err(from_spi)?;
    }
    Ok(())
}

/// Statistics for the users table a fit has just written, when the caller owns it (others would
/// only get a WARNING). Until autovacuum came by, the live path's plans joined thousands of users
/// against a table without statistics: the first 20,000-customer live update after a first fit
/// took 30 s instead of 2.7 s.
pub fn analyze_users_table(model: &str) -> Result<()> {
    let table = format!("segment.{}", quote_ident(&users_table(model)));
    let owner: Option<bool> = Spi::get_one_with_args(
        "SELECT (SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1::regclass)",
        &[table.as_str().into()],
    )
    .map_err(from_spi)?;
    if owner == Some(true) {
        Spi::run(&format!("ANALYZE {table}")).map_err(from_spi)?;
    }
    Ok(())
}

/// A segment of the model's current version as people know it: id, name, description.
pub struct KnownSegment {
    pub id: i32,
    pub name: String,
    pub description: Option<String>,
}

/// Segments of the model's current version (before a new one is written).
pub fn current_segments(model: &str) -> Result<Vec<KnownSegment>> {
    Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [model.into()];
        let mut out = Vec::new();
        let t = c
            .select(
                "SELECT segment_id, name, description FROM segment.centroids \
                 WHERE model = $1 AND version = (SELECT max(version) FROM segment.models WHERE model = $1) \
                 ORDER BY segment_id",
                None,
                &args,
            )
            .map_err(from_spi)?;
        for r in t {
            out.push(KnownSegment {
                id: r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0),
                name: r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
                description: r.get::<String>(3).map_err(from_spi)?,
            });
        }
        Ok(out)
    })
}

/// Users shared by each new cluster (`labels`, by work-table row) and each current segment:
/// (new cluster index, current segment id, users).
pub fn overlap(model: &str, labels: Vec<Option<i32>>) -> Result<Vec<(i32, i32, i64)>> {
    let t = quote_ident(&users_table(model));
    Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [labels.into()];
        let mut out = Vec::new();
        let t = c
            .select(
                &format!(
                    "SELECT a.label, u.segment_id, count(*) \
                     FROM unnest($1::int[]) WITH ORDINALITY AS a(label, rn) \
                     JOIN {work} f ON f.rn = a.rn \
                     JOIN segment.{t} u ON u.user_id = f.user_id \
                     WHERE a.label IS NOT NULL AND u.segment_id IS NOT NULL \
                     GROUP BY 1, 2",
                    work = crate::pg::source::WORK_TABLE
                ),
                None,
                &args,
            )
            .map_err(from_spi)?;
        for r in t {
            out.push((
                r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0),
                r.get::<i32>(2).map_err(from_spi)?.unwrap_or(0),
                r.get::<i64>(3).map_err(from_spi)?.unwrap_or(0),
            ));
        }
        Ok(out)
    })
}

pub struct ModelRow {
    pub model: String,
    pub version: i32,
    pub source: pgrx::pg_sys::Oid,
    pub events: Option<pgrx::pg_sys::Oid>,
    pub key_type: String,
    pub k: i32,
    pub dims: i32,
    pub users: i64,
    pub rows_used: i64,
    pub rows_skipped: i64,
    pub spec: serde_json::Value,
    pub params: serde_json::Value,
    pub metrics: serde_json::Value,
    pub skipped: serde_json::Value,
}

pub fn insert_model(m: ModelRow) -> Result<()> {
    let table = users_table(&m.model);
    Spi::run_with_args(
        "INSERT INTO segment.models (model, version, source, events, key_type, users_table, k, dims, users, \
                                     rows_used, rows_skipped, spec, params, metrics, skipped) \
         VALUES ($1, $2, $3::oid::regclass, $4::oid::regclass, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            m.model.into(),
            m.version.into(),
            m.source.into(),
            m.events.into(),
            m.key_type.into(),
            table.into(),
            m.k.into(),
            m.dims.into(),
            m.users.into(),
            m.rows_used.into(),
            m.rows_skipped.into(),
            JsonB(m.spec).into(),
            JsonB(m.params).into(),
            JsonB(m.metrics).into(),
            JsonB(m.skipped).into(),
        ],
    )
    .map_err(from_spi)
}

pub struct CentroidRow {
    pub segment_id: i32,
    pub name: String,
    pub description: Option<String>,
    pub users: i64,
    pub share: f64,
    pub centroid: Vec<f32>,
    pub top_categories: Vec<String>,
    pub profile: serde_json::Value,
    pub category_mix: serde_json::Value,
}

pub fn insert_centroids(model: &str, version: i32, rows: Vec<CentroidRow>) -> Result<()> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut descriptions = Vec::new();
    let mut users = Vec::new();
    let mut shares = Vec::new();
    let mut centroids = Vec::new();
    let mut cats = Vec::new();
    let mut profiles = Vec::new();
    let mut mixes = Vec::new();
    for r in rows {
        ids.push(r.segment_id);
        names.push(r.name);
        descriptions.push(r.description);
        users.push(r.users);
        shares.push(r.share);
        centroids.push(serde_json::to_string(&r.centroid).unwrap_or_default());
        cats.push(serde_json::to_string(&r.top_categories).unwrap_or_default());
        profiles.push(JsonB(r.profile));
        mixes.push(JsonB(r.category_mix));
    }
    // Ragged arrays cannot travel as one 2-D array: pass them as JSON text and unpack in SQL.
    Spi::run_with_args(
        "INSERT INTO segment.centroids (model, version, segment_id, name, description, users, share, centroid, \
                                        top_categories, profile, category_mix) \
         SELECT $1, $2, s.id, s.name, s.description, s.users, s.share, \
                ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s.centroid::jsonb)::real), \
                ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s.cats::jsonb)), \
                s.profile, s.mix \
         FROM unnest($3::int[], $4::text[], $5::int8[], $6::float8[], $7::text[], $8::text[], $9::jsonb[], \
                     $10::text[], $11::jsonb[]) \
              AS s(id, name, users, share, centroid, cats, profile, description, mix)",
        &[
            model.into(),
            version.into(),
            ids.into(),
            names.into(),
            users.into(),
            shares.into(),
            centroids.into(),
            cats.into(),
            profiles.into(),
            descriptions.into(),
            mixes.into(),
        ],
    )
    .map_err(from_spi)
}

/// Replaces every row of the model's users table (the work table holds the users by `rn`, the
/// arrays hold segment, distance and the flat embedding) and records each membership change in
/// the history (a first fit records every user entering a segment, so sizes over time add up).
/// Returns how many users moved into each segment.
#[allow(clippy::too_many_arguments)]
pub fn write_users(
    model: &str,
    version: i32,
    feature_names: &[String],
    segment: Vec<Option<i32>>,
    distance: Vec<Option<f64>>,
    cells: Vec<Option<i32>>,
    embedding: Vec<f32>,
    dims: usize,
    reason: &str,
) -> Result<Vec<(i32, i64)>> {
    let t = quote_ident(&users_table(model));
    let h = quote_ident(&history_table(model));
    crate::pg::source::drop_temp_table("pg_temp.segment_previous")?;
    Spi::run(&format!(
        "CREATE TEMP TABLE segment_previous ON COMMIT DROP AS SELECT user_id, segment_id FROM segment.{t}"
    ))
    .map_err(from_spi)?;
    let rfm: Vec<String> = RFM_COLUMNS.iter().map(|c| format!("f.{}", quote_ident(c))).collect();
    let all: Vec<String> = feature_names.iter().map(|c| format!("f.{}", quote_ident(c))).collect();
    Spi::run(&format!("DELETE FROM segment.{t}")).map_err(from_spi)?;
    Spi::run_with_args(
        &format!(
            "INSERT INTO segment.{t} (user_id, segment_id, distance, cell, model_version, {rfm_names}, features, embedding) \
             SELECT f.user_id, a.segment_id, a.distance, a.cell, $1, {rfm}, ARRAY[{all}], \
                    $4[(f.rn - 1) * $5 + 1 : f.rn * $5] \
             FROM {work} f \
             JOIN unnest($2::int[], $3::float8[], $6::int[]) WITH ORDINALITY AS a(segment_id, distance, cell, rn) ON a.rn = f.rn",
            rfm_names = RFM_COLUMNS.join(", "),
            rfm = rfm.join(", "),
            all = all.join(", "),
            work = crate::pg::source::WORK_TABLE,
        ),
        &[version.into(), segment.into(), distance.into(), embedding.into(), (dims as i64).into(), cells.into()],
    )
    .map_err(from_spi)?;
    let changes = crate::pg::live::record_changes(
        model,
        version,
        reason,
        &format!(
            "INSERT INTO segment.{h} (user_id, from_segment, to_segment, model_version, reason, changed_at) \
             SELECT user_id, p.segment_id, n.segment_id, $1, $2, pg_catalog.clock_timestamp() \
             FROM segment.{t} n FULL JOIN pg_temp.segment_previous p USING (user_id) \
             WHERE p.segment_id IS DISTINCT FROM n.segment_id \
             RETURNING user_id::text, from_segment, to_segment"
        ),
    )?;
    Spi::run("DROP TABLE pg_temp.segment_previous").map_err(from_spi)?;
    Ok(changes)
}
