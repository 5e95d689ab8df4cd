//! Behaviour sources: what a relation's columns are, which play which role, and reading the
//! per-user features that one aggregate statement computes.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::core::detect::{self, Column, ColumnType, Role};
use crate::core::error::{ErrorKind, Result, SegError};
use crate::core::features::{self, AsOf, EventsSql, FeatureDef, OrderAggregate, OrdersSql, TopCategory};
use crate::core::options::{EventsSpec, Options};
use crate::core::pipeline::{Model, Placer};
use crate::pg::error::from_spi;

pub struct Relation {
    pub oid: pg_sys::Oid,
    /// `oid::regclass::text`: schema-qualified and quoted where needed.
    pub name: String,
    pub columns: Vec<Column>,
}

fn column_type(oid: pg_sys::Oid) -> ColumnType {
    match oid {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => ColumnType::Integer,
        pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID | pg_sys::NAMEOID => ColumnType::Text,
        pg_sys::UUIDOID => ColumnType::Uuid,
        pg_sys::NUMERICOID | pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => ColumnType::Number,
        pg_sys::TIMESTAMPTZOID | pg_sys::TIMESTAMPOID | pg_sys::DATEOID => ColumnType::Time,
        _ => ColumnType::Other,
    }
}

/// Reads a relation's kind and columns. Tables, partitioned tables, views, materialized views
/// and foreign tables can be sources.
pub fn relation(oid: pg_sys::Oid) -> Result<Relation> {
    Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [oid.into()];
        let head = c
            .select("SELECT relkind::text, oid::regclass::text FROM pg_catalog.pg_class WHERE oid = $1", None, &args)
            .map_err(from_spi)?;
        let Some(row) = head.into_iter().next() else {
            return Err(SegError::new(ErrorKind::UndefinedTable, format!("relation with oid {oid:?} does not exist")));
        };
        let kind: String = row.get(1).map_err(from_spi)?.unwrap_or_default();
        let name: String = row.get(2).map_err(from_spi)?.unwrap_or_default();
        if !["r", "p", "v", "m", "f"].contains(&kind.as_str()) {
            return Err(SegError::new(
                ErrorKind::WrongObjectType,
                format!("{name} is not a table or view"),
            )
            .hint("pass a table, partitioned table, view or materialized view"));
        }
        let mut columns = Vec::new();
        let rows = c
            .select(
                "SELECT a.attname::text, coalesce(nullif(t.typbasetype, 0), a.atttypid), \
                        pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                None,
                &args,
            )
            .map_err(from_spi)?;
        for row in rows {
            let name: String = row.get(1).map_err(from_spi)?.unwrap_or_default();
            let ty: pg_sys::Oid = row.get(2).map_err(from_spi)?.unwrap_or(pg_sys::InvalidOid);
            let type_name: String = row.get(3).map_err(from_spi)?.unwrap_or_default();
            columns.push(Column { name, ty: column_type(ty), type_name });
        }
        Ok(Relation { oid, name, columns })
    })
}

/// Looks a table up by (possibly qualified) name, as the `events` option gives it.
pub fn relation_by_name(name: &str) -> Result<Relation> {
    let oid: Option<pg_sys::Oid> =
        Spi::get_one_with_args("SELECT pg_catalog.to_regclass($1)::oid", &[name.into()]).map_err(from_spi)?;
    match oid {
        Some(oid) => relation(oid),
        None => Err(SegError::new(ErrorKind::UndefinedTable, format!("relation \"{name}\" does not exist"))
            .hint("the \"events\" option names a table; qualify it with its schema if it is not on the search_path")),
    }
}

/// The orders source with its resolved columns.
pub struct Orders {
    pub rel: Relation,
    pub user: Column,
    pub time: Column,
    pub amount: Column,
    pub category: Option<Column>,
}

impl Orders {
    pub fn resolve(
        rel: Relation,
        user: Option<&str>,
        time: Option<&str>,
        amount: Option<&str>,
        category: Option<&str>,
    ) -> Result<Orders> {
        let r = |role, explicit, required| detect::resolve(&rel.columns, role, explicit, required, &rel.name);
        let user = r(Role::User, user, true)?.expect("required");
        let time = r(Role::Time, time, true)?.expect("required");
        let amount = r(Role::Amount, amount, true)?.expect("required");
        let category = r(Role::Category, category, false)?;
        Ok(Orders { rel, user, time, amount, category })
    }

    pub fn sql(&self) -> Result<OrdersSql> {
        Ok(OrdersSql {
            relation: self.rel.name.clone(),
            user: features::quote_ident(&self.user.name),
            time: features::quote_ident(&self.time.name),
            amount: features::quote_ident(&self.amount.name),
            category: self.category.as_ref().map(|c| features::quote_ident(&c.name)),
            aggregate: order_features_aggregate()?,
        })
    }
}

/// The query behind [`extension_schema`], also a subquery of [`order_features_aggregate`].
const EXTENSION_SCHEMA: &str = "SELECT coalesce((SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
       JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_segment'), 'public')";

/// The extension's schema, quoted ("public" before the extension is registered): statements that
/// run with a pinned search_path (the live triggers) name pg_segment's functions with it.
pub fn extension_schema() -> Result<String> {
    Spi::get_one::<String>(EXTENSION_SCHEMA).map_err(from_spi).map(Option::unwrap_or_default)
}

/// The order features aggregate, and which of its signatures is installed (0.1.0's until
/// `ALTER EXTENSION pg_segment UPDATE`: the library serves the SQL objects of both), in one query.
pub fn order_features_aggregate() -> Result<OrderAggregate> {
    let (name, current) = Spi::get_two::<String, bool>(&format!(
        "SELECT a, pg_catalog.to_regprocedure(a || '(timestamptz, timestamp, float8, int, int8, timestamptz, \
           timestamptz, timestamptz, float8[], bool)') IS NOT NULL \
         FROM (SELECT ({EXTENSION_SCHEMA}) || '._segment_order_features' AS a) s"
    ))
    .map_err(from_spi)?;
    Ok(OrderAggregate { name: name.unwrap_or_default(), legacy: current != Some(true) })
}

pub struct Events {
    pub rel: Relation,
    pub user: Column,
    pub time: Column,
    pub event_type: Column,
}

impl Events {
    pub fn resolve(spec: &EventsSpec, orders_user: &Column) -> Result<Events> {
        let rel = relation_by_name(&spec.table)?;
        // Same detection as for orders, but the hint names the events option's field.
        let r = |role: Role, explicit: &Option<String>| {
            detect::resolve(&rel.columns, role, explicit.as_deref(), true, &rel.name)
                .map(|c| c.expect("required"))
                .map_err(|e| SegError {
                    hint: Some(format!(
                        "name it in the events option: {{\"events\": {{\"table\": \"{}\", \"{}\": \"column_name\"}}}}",
                        spec.table,
                        role.argument()
                    )),
                    ..e
                })
        };
        let user = r(Role::User, &spec.user_column)?;
        let time = r(Role::Time, &spec.time_column)?;
        let event_type = r(Role::EventType, &spec.type_column)?;
        let same_family = user.ty == orders_user.ty;
        if !same_family {
            return Err(SegError::new(
                ErrorKind::DatatypeMismatch,
                format!(
                    "the events user column \"{}\" ({}) does not match the orders user column \"{}\" ({})",
                    user.name, user.type_name, orders_user.name, orders_user.type_name
                ),
            ));
        }
        Ok(Events { rel, user, time, event_type })
    }

    pub fn sql(&self) -> EventsSql {
        EventsSql {
            relation: self.rel.name.clone(),
            user: features::quote_ident(&self.user.name),
            time: features::quote_ident(&self.time.name),
            event_type: features::quote_ident(&self.event_type.name),
        }
    }
}

/// Reference time in epoch seconds: `as_of` from the options, or now(). Also checks the
/// `timezone` option (PostgreSQL raises 22023 for an unknown zone, 22007 for a bad as_of).
pub fn as_of(opts: &Options) -> Result<AsOf> {
    let v: Option<Vec<f64>> = Spi::get_one_with_args(
        "SELECT ARRAY[extract(epoch FROM t), extract(epoch FROM t - interval '30 days'), \
                      extract(epoch FROM t - interval '90 days')]::float8[] \
         FROM (SELECT coalesce($1::timestamptz, now()) AS t) s WHERE (now() AT TIME ZONE $2) IS NOT NULL",
        &[opts.as_of.clone().into(), opts.timezone.clone().into()],
    )
    .map_err(from_spi)?;
    match v.as_deref() {
        Some(&[epoch, cut30, cut90]) => Ok(AsOf::At { epoch, cut30, cut90 }),
        _ => Ok(AsOf::at(0.0)),
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Skipped {
    pub total: i64,
    pub null_user: i64,
    pub null_time: i64,
    pub null_amount: i64,
    pub non_finite_amount: i64,
    pub after_as_of: i64,
    pub duplicates: i64,
    pub duplicates_removed: bool,
}

impl Skipped {
    /// Rows none of the skip reasons applies to (duplicates included).
    pub fn usable(&self) -> i64 {
        self.total - self.null_user - self.null_time - self.null_amount - self.non_finite_amount - self.after_as_of
    }
}

/// What a fit needs to know about the orders before its features, from one read: the rows
/// skipped by reason and the top categories (see `features::source_summary_sql`).
pub fn summarize(o: &OrdersSql, as_of: AsOf) -> Result<(Skipped, Vec<TopCategory>)> {
    Spi::connect(|c| {
        let mut skipped = None;
        let mut ranked = Vec::new();
        for row in c.select(&features::source_summary_sql(o, as_of, 8), None, &[]).map_err(from_spi)? {
            let g = |i| row.get::<i64>(i).map(|v| v.unwrap_or(0)).map_err(from_spi);
            if row.get::<bool>(1).map_err(from_spi)? == Some(true) {
                skipped = Some(Skipped {
                    total: g(5)?,
                    null_user: g(6)?,
                    null_time: g(7)?,
                    null_amount: g(8)?,
                    non_finite_amount: g(9)?,
                    after_as_of: g(10)?,
                    duplicates: 0,
                    duplicates_removed: false,
                });
            } else if let Some(name) = row.get::<String>(2).map_err(from_spi)? {
                ranked.push((g(4)?, TopCategory { name, share: row.get::<f64>(3).map_err(from_spi)?.unwrap_or(0.0) }));
            }
        }
        ranked.sort_by_key(|(rank, _)| *rank);
        Ok((skipped.unwrap_or_default(), ranked.into_iter().map(|(_, c)| c).collect()))
    })
}

/// Runs `f` with `work_mem` raised to `maintenance_work_mem` (when that is larger) and JIT
/// compilation off, for this transaction, then puts both back; an error aborts the
/// (sub)transaction, which puts them back too. Bulk work (fits, refreshes) is maintenance work:
/// the order features aggregate keeps each user's orders in its hash table and the writes join
/// a row per user, and spilling either to disk costs more than the rest of the statement; the
/// row estimates of those joins (arrays unnested against a fresh table) are far too high and
/// make the planner spend more time compiling them than running them.
pub fn with_bulk_settings<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let previous: Vec<String> = Spi::get_one(
        "SELECT ARRAY[pg_catalog.current_setting('work_mem'), pg_catalog.current_setting('jit')]",
    )
    .map_err(from_spi)?
    .unwrap_or_default();
    Spi::run(
        "SELECT pg_catalog.set_config('work_mem', pg_catalog.current_setting('maintenance_work_mem'), true) \
         WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('maintenance_work_mem')) \
             > pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem')); \
         SELECT pg_catalog.set_config('jit', 'off', true)",
    )
    .map_err(from_spi)?;
    let result = f();
    if let [work_mem, jit] = previous.as_slice() {
        Spi::run_with_args(
            "SELECT pg_catalog.set_config('work_mem', $1, true), pg_catalog.set_config('jit', $2, true)",
            &[work_mem.as_str().into(), jit.as_str().into()],
        )
        .map_err(from_spi)?;
    }
    result
}

/// Drops a temporary table left by an earlier call in the same transaction, if there is one
/// (without `IF EXISTS`, whose NOTICE the caller would see).
pub fn drop_temp_table(name: &str) -> Result<()> {
    let leftover: Option<bool> =
        Spi::get_one_with_args("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[name.into()]).map_err(from_spi)?;
    if leftover == Some(true) {
        Spi::run(&format!("DROP TABLE {name}")).map_err(from_spi)?;
    }
    Ok(())
}

/// Name of the per-call work table holding one row per user.
pub const WORK_TABLE: &str = "pg_temp.segment_features_work";

/// What [`materialize_features`] found.
pub struct Materialized {
    /// Users, numbered `rn` 1..=users in the work table (by user key).
    pub users: usize,
    /// Exact duplicate order rows seen.
    pub duplicates: i64,
    /// Order rows counted in the features.
    pub counted_rows: i64,
}

/// Materialises the features into [`WORK_TABLE`] (one row per user, numbered by `rn`).
pub fn materialize_features(sql: &str) -> Result<Materialized> {
    // A second call in the same transaction finds the first call's table (ON COMMIT DROP).
    drop_temp_table(WORK_TABLE)?;
    let started = std::time::Instant::now();
    Spi::run(sql).map_err(from_spi)?;
    debug1!("pg_segment: features computed in {:.1} s", started.elapsed().as_secs_f64());
    Spi::connect(|c| {
        let t = c
            .select(
                &format!("SELECT count(*), coalesce(sum(duplicates), 0)::int8, coalesce(sum(frequency), 0)::int8 FROM {WORK_TABLE}"),
                Some(1),
                &[],
            )
            .map_err(from_spi)?;
        let row = t.first();
        let get = |i| row.get::<i64>(i).map(Option::unwrap_or_default).map_err(from_spi);
        Ok(Materialized { users: get(1)? as usize, duplicates: get(2)?, counted_rows: get(3)? })
    })
}

fn feature_list(feats: &[FeatureDef]) -> String {
    feats.iter().map(|f| features::quote_ident(&f.name)).collect::<Vec<_>>().join(", ")
}

/// Feature values by column (one vector per feature, one entry per user; None where missing).
type Columns = Vec<Vec<Option<f64>>>;

/// Reads one batch of rows `(rn, feature...)` into row positions (`rn - 1`) and columns.
fn read_rows(t: pgrx::spi::SpiTupleTable, n_feats: usize) -> Result<(Vec<usize>, Columns)> {
    let mut rows = Vec::with_capacity(t.len());
    let mut columns = vec![Vec::with_capacity(t.len()); n_feats];
    for row in t {
        rows.push((row.get::<i64>(1).map_err(from_spi)?.unwrap_or(0) - 1) as usize);
        for (j, col) in columns.iter_mut().enumerate() {
            col.push(row.get::<f64>(j + 2).map_err(from_spi)?);
        }
    }
    Ok((rows, columns))
}

/// The features of the users at `rows` (positions from 0, ascending), in that order.
pub fn read_features_of(feats: &[FeatureDef], rows: &[usize]) -> Result<Columns> {
    let rns: Vec<i64> = rows.iter().map(|&r| r as i64 + 1).collect();
    let (found, columns) = Spi::connect(|c| {
        let sql = format!("SELECT w.rn, {} FROM {WORK_TABLE} w JOIN unnest($1::int8[]) AS s(rn) USING (rn)", feature_list(feats));
        let args: [DatumWithOid; 1] = [rns.into()];
        read_rows(c.select(&sql, None, &args).map_err(from_spi)?, feats.len())
    })?;
    let mut ordered = vec![vec![None; rows.len()]; feats.len()];
    for (i, row) in found.iter().enumerate() {
        let at = rows.binary_search(row).map_err(|_| {
            SegError::new(ErrorKind::Internal, "the features work table is not numbered 1..n")
        })?;
        for (out, col) in ordered.iter_mut().zip(&columns) {
            out[at] = col[i];
        }
    }
    Ok(ordered)
}

/// Streams every user's features to `each(row positions, columns)` in batches of
/// `pg_segment.batch_users`; each batch is read in its own SPI connection, so its memory is freed
/// before the next one.
fn for_each_batch(feats: &[FeatureDef], mut each: impl FnMut(&[usize], &[Vec<Option<f64>>])) -> Result<()> {
    let sql = format!("SELECT rn, {} FROM {WORK_TABLE}", feature_list(feats));
    let batch = crate::pg::gucs::BATCH_USERS.get().max(1).into();
    let mut cursor = Spi::connect(|c| c.try_open_cursor(sql.as_str(), &[]).map(|c| c.detach_into_name())).map_err(from_spi)?;
    loop {
        let (rows, columns, name) = Spi::connect(|c| {
            let mut cur = c.find_cursor(&cursor).map_err(from_spi)?;
            let (rows, columns) = read_rows(cur.fetch(batch).map_err(from_spi)?, feats.len())?;
            Ok::<_, SegError>((rows, columns, cur.detach_into_name()))
        })?;
        cursor = name;
        if rows.is_empty() {
            break;
        }
        each(&rows, &columns);
    }
    // dropping the cursor closes it
    Spi::connect(|c| c.find_cursor(&cursor).map(drop)).map_err(from_spi)
}

/// Places every user of the work table (`users` of them) under `model`, batch by batch.
pub fn place_all(model: &Model, users: usize) -> Result<Placer> {
    let mut placer = Placer::new(model, users);
    for_each_batch(&model.features, |rows, columns| placer.add(model, rows, columns))?;
    Ok(placer)
}
