//! Live segments: triggers on the behaviour tables keep each touched user's features, embedding
//! and segment current, in the writer's transaction (`sync`) or through a queue drained by
//! `segment_process` (`async`). A touched user's features are recomputed from the source with
//! the very statement the batch fit uses, restricted to those users, so the incremental result
//! equals a batch recompute by construction.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::core::error::{ErrorKind, Result, SegError};
use crate::core::features::{self, quote_ident, quote_literal, AsOf, EventsSql, OrdersSql, TopCategory, RFM_COLUMNS};
use crate::core::live_state::{self, Tally};
use crate::core::options::Options;
use crate::core::order_features::{self, Params};
use crate::core::pipeline::Model;
use crate::pg::catalog::{self, history_table, queue_table, users_table};
use crate::pg::error::{from_spi, OrRaise};
use crate::pg::gucs;
use crate::pg::plans;
use crate::pg::new_rows;
use crate::pg::queue;
use crate::pg::users_rows;

use pgrx::pg_sys::{self as sys, PgOid};

const TEXT: PgOid = PgOid::BuiltIn(sys::BuiltinOid::TEXTOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(sys::BuiltinOid::TEXTARRAYOID);
const INT4: PgOid = PgOid::BuiltIn(sys::BuiltinOid::INT4OID);
const INT8: PgOid = PgOid::BuiltIn(sys::BuiltinOid::INT8OID);
const INT4_ARRAY: PgOid = PgOid::BuiltIn(sys::BuiltinOid::INT4ARRAYOID);
const FLOAT4_ARRAY: PgOid = PgOid::BuiltIn(sys::BuiltinOid::FLOAT4ARRAYOID);
const FLOAT8_ARRAY: PgOid = PgOid::BuiltIn(sys::BuiltinOid::FLOAT8ARRAYOID);
const BYTEA_ARRAY: PgOid = PgOid::BuiltIn(sys::BuiltinOid::BYTEAARRAYOID);

/// A model version as the live path needs it, cached per backend and per model. Relations are
/// schema-qualified: the triggers run with a pinned search_path.
pub struct LiveModel {
    pub model: String,
    pub version: i32,
    pub key_type: String,
    pub fitted: Model,
    /// The feature catalogue with its SQL (the stored model keeps only names and transforms).
    pub feats: Vec<features::FeatureDef>,
    pub orders: OrdersSql,
    pub events: Option<EventsSql>,
    pub dedupe: bool,
    pub timezone: String,
    /// Feature statement for the users in `$1` (text keys), returning `user_id::text` first.
    pub select_for_users: String,
    /// The same for statements that touch more than [`MANY_USERS`] users.
    pub select_for_many_users: String,
    /// How this version keeps per-user state for sync INSERTs; None while the installed SQL
    /// objects or the users table predate it (features are then recomputed from the source).
    pub state: Option<StateSql>,
    /// Which `segment_live()` call this was loaded under (the live row's xmin).
    installed: Option<String>,
    /// The sources' relations (for the live triggers to check they are on them).
    orders_oid: pg_sys::Oid,
    events_oid: Option<pg_sys::Oid>,
}

/// Live mode's stored per-user state (`core::live_state`) for one model version.
pub struct StateSql {
    /// What the stored states must carry to be used (see `live_state::tag`).
    pub tag: i64,
    /// Dedupe, category slots and priors; the times are set per statement.
    pub params: Params,
    /// State statements for the users in `$1` (text keys), few or many (as `select_for_users`),
    /// and for every user; each returns `user_id`, `orders`, `events`.
    pub for_users: String,
    pub for_many_users: String,
    pub for_all: String,
    /// `user_id::text`, `orders`, `events` from the transition table `new_rows` of an INSERT
    /// into the orders (events): the new rows' parts of the users' states.
    pub new_orders: String,
    pub new_events: Option<String>,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, Rc<LiveModel>>> = RefCell::new(HashMap::new());
}

fn spec_str(v: &Value, path: &[&str]) -> Option<String> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str).map(str::to_string)
}

fn broken(model: &str, what: &str) -> SegError {
    SegError::new(ErrorKind::TrainingFailed, format!("model \"{model}\" cannot be used for live updates"))
        .detail(what.to_string())
        .hint("re-fit it with segment_users()")
}

/// The current version of `model`, from the cache when no newer version was committed.
pub fn load(model: &str) -> Result<Rc<LiveModel>> {
    load_with_times(model).map(|(live, _)| live)
}

thread_local! {
    /// The relations whose changes make cached models stale (`segment.models`, `segment.live`),
    /// and whether none changed since the cache was last checked against them.
    static CATALOG: std::cell::Cell<Option<(pg_sys::Oid, pg_sys::Oid)>> = const { std::cell::Cell::new(None) };
    static UNCHANGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Relcache invalidation callback: `segment.models` or `segment.live` was written (their
/// statement trigger, `_segment_catalog_changed`, invalidates them), or the whole relcache was
/// reset.
#[pg_guard]
unsafe extern "C-unwind" fn catalog_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = CATALOG.with(|c| c.get());
    if relid == pg_sys::InvalidOid || watched.is_none_or(|(m, l)| relid == m || relid == l) {
        UNCHANGED.with(|u| u.set(false));
    }
}

/// Whether no model version or live mode changed since the cached models were checked; marks
/// them checked (the caller checks them when it returns false). Invalidations are processed at
/// each transaction start and here, so a version committed while this writer waited for the
/// model's lock is seen.
fn catalog_unchanged() -> bool {
    // SAFETY: catalog lookups and invalidation processing inside a transaction.
    unsafe {
        if CATALOG.with(|c| c.get()).is_none() {
            let schema = pg_sys::get_namespace_oid(c"segment".as_ptr(), true);
            let models = pg_sys::get_relname_relid(c"models".as_ptr(), schema);
            let live = pg_sys::get_relname_relid(c"live".as_ptr(), schema);
            if models == pg_sys::InvalidOid || live == pg_sys::InvalidOid {
                return false;
            }
            CATALOG.with(|c| c.set(Some((models, live))));
            pg_sys::CacheRegisterRelcacheCallback(Some(catalog_changed), pg_sys::Datum::from(0));
        }
        pg_sys::AcceptInvalidationMessages();
    }
    UNCHANGED.with(|u| u.replace(true))
}

/// `now()` and the starts of the 30- and 90-day windows before it, as `now() - interval '30
/// days'` computes them (in the session's time zone).
fn statement_times() -> Times {
    thread_local! {
        /// The last transaction's times (the same for all its statements).
        static LAST: std::cell::Cell<Times> = const { std::cell::Cell::new([i64::MIN; 3]) };
    }
    // SAFETY: the transaction's start time.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    if let Some(times) = LAST.with(|l| Some(l.get()).filter(|t| t[0] == now)) {
        return times;
    }
    // SAFETY: timestamptz_mi_interval with the arguments it declares.
    let times = unsafe {
        let before = |days: i32| {
            let interval = pg_sys::palloc0(std::mem::size_of::<pg_sys::Interval>()) as *mut pg_sys::Interval;
            (*interval).day = days;
            pg_sys::OidFunctionCall2Coll(
                pg_sys::Oid::from(pg_sys::F_TIMESTAMPTZ_MI_INTERVAL),
                pg_sys::InvalidOid,
                pg_sys::Datum::from(now),
                pg_sys::Datum::from(interval),
            )
            .value() as i64
        };
        [now, before(30), before(90)]
    };
    LAST.with(|l| l.set(times));
    times
}

/// `now()` and the starts of the 30- and 90-day windows before it, as PostgreSQL computes them
/// (in the session's time zone), in microseconds.
type Times = [i64; 3];

/// [`load`], with the statement's [`Times`] from the same query.
fn load_with_times(model: &str) -> Result<(Rc<LiveModel>, Times)> {
    let times = statement_times();
    // Nothing was written to the catalog since the cache was checked (see `catalog_unchanged`).
    if catalog_unchanged() {
        if let Some(hit) = CACHE.with(|c| c.borrow().get(model).cloned()) {
            return Ok((hit, times));
        }
    }
    // The live row is written anew by every segment_live(): a backend that cached the model
    // before then (say, before its users table had the state columns) loads it again.
    let (version, installed) = Spi::connect_mut(|c| {
        let args: [DatumWithOid; 1] = [model.into()];
        let t = plans::execute(
            c,
            "SELECT max(version), (SELECT l.xmin::text FROM segment.live l WHERE l.model = $1) \
             FROM segment.models WHERE model = $1",
            &[TEXT],
            &args,
        )?;
        let r = t.first();
        Ok::<_, SegError>((r.get::<i32>(1).map_err(from_spi)?, r.get::<String>(2).map_err(from_spi)?))
    })?;
    let Some(version) = version else {
        return catalog::current(model).and_then(|_| Err(broken(model, "no version")));
    };
    if let Some(hit) =
        CACHE.with(|c| c.borrow().get(model).filter(|m| m.version == version && m.installed == installed).cloned())
    {
        return Ok((hit, times));
    }
    let row = Spi::connect(|c| {
        let args: [DatumWithOid; 2] = [model.into(), version.into()];
        let t = c
            .select(
                "SELECT m.key_type, m.params::text, m.spec::text, \
                        (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = m.source), \
                        (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = m.events), \
                        m.source::oid, m.events::oid, \
                        EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass('segment.' || pg_catalog.quote_ident(m.users_table)) \
                                  AND a.attname = 'live_tag' AND NOT a.attisdropped) \
                 FROM segment.models m WHERE m.model = $1 AND m.version = $2",
                Some(1),
                &args,
            )
            .map_err(from_spi)?;
        let r = t.first();
        Ok::<_, SegError>((
            r.get::<String>(1).map_err(from_spi)?.unwrap_or_default(),
            r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
            r.get::<String>(3).map_err(from_spi)?.unwrap_or_default(),
            r.get::<String>(4).map_err(from_spi)?.unwrap_or_default(),
            r.get::<String>(5).map_err(from_spi)?,
            r.get::<pg_sys::Oid>(6).map_err(from_spi)?.unwrap_or(pg_sys::InvalidOid),
            r.get::<pg_sys::Oid>(7).map_err(from_spi)?,
            r.get::<bool>(8).map_err(from_spi)?.unwrap_or(false),
        ))
    })?;
    let (key_type, params, spec, source, events_rel, orders_oid, events_oid, state_columns) = row;
    let fitted: Model = serde_json::from_str(&params).map_err(|e| broken(model, &e.to_string()))?;
    let spec: Value = serde_json::from_str(&spec).map_err(|e| broken(model, &e.to_string()))?;
    let options: Options =
        serde_json::from_value(spec["options"].clone()).map_err(|e| broken(model, &e.to_string()))?;
    let col = |k: &str| spec_str(&spec, &["columns", k]).map(|c| quote_ident(&c));
    let orders = OrdersSql {
        relation: source,
        user: col("user").ok_or_else(|| broken(model, "no user column"))?,
        time: col("time").ok_or_else(|| broken(model, "no time column"))?,
        amount: col("amount").ok_or_else(|| broken(model, "no amount column"))?,
        category: col("category"),
        aggregate: crate::pg::source::order_features_aggregate()?,
    };
    let events = events_rel.map(|relation| EventsSql {
        relation,
        user: quote_ident(&spec_str(&spec, &["events", "user"]).unwrap_or_default()),
        time: quote_ident(&spec_str(&spec, &["events", "time"]).unwrap_or_default()),
        event_type: quote_ident(&spec_str(&spec, &["events", "type"]).unwrap_or_default()),
    });
    let categories: Vec<TopCategory> = spec["categories"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| TopCategory {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    share: c["share"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default();
    let feats = features::catalogue(&categories, orders.category.is_some(), events.is_some());
    let stored: Vec<&str> = fitted.features.iter().map(|f| f.name.as_str()).collect();
    if feats.iter().map(|f| f.name.as_str()).ne(stored.iter().copied()) {
        return Err(broken(model, "its feature list does not match this version of pg_segment"));
    }
    // Two forms of "these users": `= ANY($1)` gets a cheap generic plan of index probes for the
    // few users of an ordinary statement; a COPY touching tens of thousands of users gets a
    // semi-join (a generic plan would search the parameter array linearly for every row).
    let select = |only: String| {
        let inner = features::features_select(
            &orders,
            events.as_ref(),
            &feats,
            AsOf::Now,
            options.dedupe,
            &options.timezone,
            Some(&only),
        );
        let cols: Vec<String> = feats.iter().map(|f| format!("f.{}", quote_ident(&f.name))).collect();
        format!("SELECT f.user_id::text, {} FROM ({inner}) f", cols.join(", "))
    };
    let select_for_users = select(format!("= ANY($1::text[]::{key_type}[])"));
    let select_for_many_users = select(format!("IN (SELECT k::{key_type} FROM unnest($1::text[]) k)"));
    let state = if state_columns { state_sql(&orders, events.as_ref(), &feats, &options, &key_type)? } else { None };
    let live = Rc::new(LiveModel {
        model: model.to_string(),
        version,
        key_type,
        fitted,
        feats,
        orders,
        events,
        dedupe: options.dedupe,
        timezone: options.timezone.clone(),
        select_for_users,
        select_for_many_users,
        state,
        installed,
        orders_oid,
        events_oid,
    });
    CACHE.with(|c| c.borrow_mut().insert(model.to_string(), live.clone()));
    Ok((live, times))
}

/// The state statements of a model version, when the installed SQL objects have them (not
/// before `ALTER EXTENSION pg_segment UPDATE` from 0.1.0).
fn state_sql(
    orders: &OrdersSql,
    events: Option<&EventsSql>,
    feats: &[features::FeatureDef],
    options: &Options,
    key_type: &str,
) -> Result<Option<StateSql>> {
    let ext = crate::pg::source::extension_schema()?;
    let (rows_agg, tally_fn) = (format!("{ext}._segment_order_rows"), format!("{ext}._segment_event_tally"));
    let installed: Option<bool> = Spi::get_one(&format!(
        "SELECT pg_catalog.to_regprocedure({}) IS NOT NULL",
        quote_literal(&format!("{rows_agg}(timestamptz, timestamp, float8, int, int8)"))
    ))
    .map_err(from_spi)?;
    if installed != Some(true) {
        return Ok(None);
    }
    let shares: Vec<f64> = feats.iter().filter_map(|f| f.category.as_ref()).map(|(_, share)| *share).collect();
    let mut priors = [0.0; order_features::MAX_CATEGORY_SLOTS];
    for (p, share) in priors.iter_mut().zip(&shares) {
        *p = *share;
    }
    let by_key = |sql: String| format!("SELECT user_id::text, orders, events FROM ({sql}) s");
    let state = |only: Option<String>| {
        features::state_select(orders, events, feats, &options.timezone, &rows_agg, &tally_fn, only.as_deref())
    };
    Ok(Some(StateSql {
        tag: live_state::tag(&options.timezone, &features::slot_names(feats), events.is_some()),
        params: Params {
            as_of: 0,
            cut30: 0,
            cut90: 0,
            dedupe: options.dedupe as u64,
            slots: shares.len() as u64,
            priors,
        },
        for_users: by_key(state(Some(format!("= ANY($1::text[]::{key_type}[])")))),
        for_many_users: by_key(state(Some(format!("IN (SELECT k::{key_type} FROM unnest($1::text[]) k)")))),
        for_all: state(None),
        new_orders: format!(
            "SELECT user_id::text, orders, NULL::bytea FROM ({}) p",
            features::order_rows_select(orders, feats, &options.timezone, &rows_agg, "new_rows", None)
        ),
        new_events: events.map(|e| {
            format!(
                "SELECT user_id::text, NULL::bytea, events FROM ({}) p",
                features::event_tally_select(e, &tally_fn, "new_rows", None)
            )
        }),
    }))
}

/// One membership change, for history and NOTIFY.
struct Change {
    user: String,
    from: Option<i32>,
    to: Option<i32>,
}

/// Recomputes, re-embeds and re-assigns `keys` (text forms of the user keys) under the current
/// model; users with no usable rows left are removed. Returns the number of users whose segment
/// changed.
pub fn apply(model: &str, keys: &[String], reason: &str) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    if keys.len() > MANY_USERS {
        // a COPY, a big refresh or queue drain is bulk work: give its aggregate the memory of one
        return crate::pg::source::with_bulk_settings(|| apply_to(model, keys, reason));
    }
    apply_to(model, keys, reason)
}

fn apply_to(model: &str, keys: &[String], reason: &str) -> Result<usize> {
    // Locks first: a re-fit that commits while we wait must be the version we load.
    lock_users(model, keys)?;
    gucs::apply_max_threads();
    let (live, times) = load_with_times(model)?;
    let changes = match &live.state {
        Some(st) => {
            let p = params_at(st, times);
            let (old, _) = read_users(&live, st.tag, keys)?;
            let mut from_source = states_from_source(&live, st, keys)?;
            let states = keys.iter().map(|k| (k.clone(), from_source.remove(k))).collect();
            write_states(&live, st, &p, states, &old, None, reason)?
        }
        None => recompute(&live, keys, reason)?,
    };
    notify(model, live.version, reason, &changes)?;
    Ok(changes.len())
}

/// Without stored state (SQL objects or users table from 0.1.0): the touched users' features
/// from the source, with the batch statement restricted to them.
fn recompute(live: &LiveModel, keys: &[String], reason: &str) -> Result<Vec<Change>> {
    // Features from the source, for exactly these users (a fresh snapshot after the locks).
    let n_feats = live.fitted.features.len();
    let (found, columns) = Spi::connect_mut(|c| {
        let args: [DatumWithOid; 1] = [keys.to_vec().into()];
        let mut found = Vec::new();
        let mut columns = vec![Vec::new(); n_feats];
        let sql = if keys.len() > MANY_USERS { &live.select_for_many_users } else { &live.select_for_users };
        for row in plans::execute(c, sql, &[TEXT_ARRAY], &args)? {
            found.push(row.get::<String>(1).map_err(from_spi)?.unwrap_or_default());
            for (j, col) in columns.iter_mut().enumerate() {
                col.push(row.get::<f64>(j + 2).map_err(from_spi)?);
            }
        }
        Ok::<_, SegError>((found, columns))
    })?;
    let mut changes = upsert(live, &found, &columns, reason)?;
    let found_set: HashSet<&String> = found.iter().collect();
    let gone: Vec<String> = keys.iter().filter(|k| !found_set.contains(k)).cloned().collect();
    changes.extend(remove(live, &gone, reason)?);
    Ok(changes)
}

/// A user's live state: their usable orders (sorted) and, with an events source, their tally.
type UserState = (Vec<order_features::OrderRow>, Option<Tally>);

/// The parameters of `st` at the statement's [`Times`].
fn params_at(st: &StateSql, [as_of, cut30, cut90]: Times) -> Params {
    Params { as_of, cut30, cut90, ..st.params }
}

/// Decodes a state's two halves; None when either is not a state (then it is rebuilt).
fn decode_state(orders: Option<&[u8]>, events: Option<&[u8]>) -> Option<UserState> {
    let rows = live_state::decode_rows(orders.unwrap_or_default())?;
    let tally = match events {
        Some(e) => Some(Tally::decode(e)?),
        None => None,
    };
    Some((rows, tally))
}

/// The states of `keys` (the users that have usable rows) from the sources.
fn states_from_source(live: &LiveModel, st: &StateSql, keys: &[String]) -> Result<HashMap<String, UserState>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    Spi::connect_mut(|c| {
        let args: [DatumWithOid; 1] = [keys.to_vec().into()];
        let sql = if keys.len() > MANY_USERS { &st.for_many_users } else { &st.for_users };
        let mut out = HashMap::with_capacity(keys.len());
        for row in plans::execute(c, sql, &[TEXT_ARRAY], &args)? {
            let key = row.get::<String>(1).map_err(from_spi)?.unwrap_or_default();
            let orders = row.get::<&[u8]>(2).map_err(from_spi)?;
            let events = row.get::<&[u8]>(3).map_err(from_spi)?;
            let state = decode_state(orders, events)
                .ok_or_else(|| broken(&live.model, "the state aggregate returned something that is not a state"))?;
            out.insert(key, state);
        }
        Ok(out)
    })
}

/// A user as `write_states` writes them: key, features, then the state's orders and events.
type Written = (String, Vec<Option<f64>>, Vec<u8>, Option<Vec<u8>>);

/// Features, embedding and segment of each user from their state (None: no usable rows left),
/// written with the states: through `direct` for users whose row it read (`rows`), through SQL
/// for the others.
#[allow(clippy::too_many_arguments)]
fn write_states(
    live: &LiveModel,
    st: &StateSql,
    p: &Params,
    states: Vec<(String, Option<UserState>)>,
    old: &HashMap<String, Option<i32>>,
    mut direct: Option<(&mut users_rows::Users, &HashMap<String, pg_sys::ItemPointerData>)>,
    reason: &str,
) -> Result<Vec<Change>> {
    let n_feats = live.fitted.features.len();
    let with_events = live.events.is_some();
    let mut gone = Vec::new();
    // the users written through SQL, then directly
    let mut by_sql: Vec<Written> = Vec::new();
    let mut by_row: Vec<Written> = Vec::new();
    for (key, state) in states {
        let computed = state.as_ref().and_then(|(rows, tally)| {
            // a tally is always taken to the statement's time before it gets here
            let tally = tally.as_ref().and_then(|t| t.at(p.as_of));
            live_state::features(rows, tally.as_ref(), with_events, p).map(|f| (f, tally))
        });
        match (computed, state) {
            (Some((f, tally)), Some((rows, _))) if f.len() == n_feats => {
                let written = (key, f, live_state::encode_rows(&rows), tally.map(|t| t.encode()));
                match &direct {
                    Some((_, tids)) if tids.contains_key(&written.0) => by_row.push(written),
                    _ => by_sql.push(written),
                }
            }
            (Some(_), _) => return Err(broken(&live.model, "its feature count does not match its stored state")),
            _ => gone.push(key),
        }
    }
    let columns_of = |users: &[Written]| -> Vec<Vec<Option<f64>>> {
        (0..n_feats).map(|j| users.iter().map(|u| u.1[j]).collect()).collect()
    };
    let mut changes = Vec::new();
    if let (Some((rows, tids)), false) = (direct.as_mut(), by_row.is_empty()) {
        let placed = live.fitted.assign(&columns_of(&by_row));
        let dims = placed.embedding.ncols();
        let mut direct_changes = Vec::new();
        for (i, (key, features, orders, events)) in by_row.iter().enumerate() {
            let (segment, distance) = placed.assigned[i].map_or((None, None), |(s, d)| (Some(s), Some(d)));
            let embedding: Vec<f32> = placed.embedding.row(i).iter().map(|&v| v as f32).collect();
            debug_assert_eq!(embedding.len(), dims);
            let values = users_rows::Values {
                segment,
                distance,
                cell: placed.cells[i],
                version: live.version,
                features,
                embedding: &embedding,
                tag: st.tag,
                orders,
                events: events.as_deref(),
            };
            // SAFETY: `rows` is open, and the tid is the row it read for this user.
            unsafe { rows.update(tids[key], &values) };
            let from = old.get(key).copied().flatten();
            if from != segment {
                direct_changes.push(Change { user: key.clone(), from, to: segment });
            }
        }
        insert_history(live, &direct_changes, reason)?;
        changes.extend(direct_changes);
    }
    let found: Vec<String> = by_sql.iter().map(|u| u.0.clone()).collect();
    let columns = columns_of(&by_sql);
    let (orders, events) = by_sql.into_iter().map(|u| (Some(u.2), u.3)).unzip();
    changes.extend(write_users(live, &found, &columns, (st.tag, orders, events), old, reason)?);
    changes.extend(remove(live, &gone, reason)?);
    Ok(changes)
}

/// The touched users' rows: their current segment (None without a row or a segment), and their
/// stored state when it carries `tag`.
#[allow(clippy::type_complexity)]
fn read_users(
    live: &LiveModel,
    tag: i64,
    keys: &[String],
) -> Result<(HashMap<String, Option<i32>>, HashMap<String, UserState>)> {
    let sql = format!(
        "SELECT user_id::text, segment_id, live_tag = $2, live_orders, live_events FROM segment.{t} WHERE user_id {only}",
        t = quote_ident(&users_table(&live.model)),
        only = if keys.len() > MANY_USERS {
            format!("IN (SELECT k::{} FROM unnest($1::text[]) k)", live.key_type)
        } else {
            format!("= ANY($1::text[]::{}[])", live.key_type)
        }
    );
    Spi::connect_mut(|c| {
        let args: [DatumWithOid; 2] = [keys.to_vec().into(), tag.into()];
        let (mut segments, mut states) = (HashMap::with_capacity(keys.len()), HashMap::with_capacity(keys.len()));
        for row in plans::execute(c, &sql, &[TEXT_ARRAY, INT8], &args)? {
            let key = row.get::<String>(1).map_err(from_spi)?.unwrap_or_default();
            if row.get::<bool>(3).map_err(from_spi)? == Some(true) {
                let state = decode_state(row.get::<&[u8]>(4).map_err(from_spi)?, row.get::<&[u8]>(5).map_err(from_spi)?);
                if let Some(state) = state {
                    states.insert(key.clone(), state);
                }
            }
            segments.insert(key, row.get::<i32>(2).map_err(from_spi)?);
        }
        Ok((segments, states))
    })
}

/// Writes features, embedding, segment and live state of the `found` users (one plain upsert:
/// their previous segments are known, `old`), then history rows for those whose segment changed.
fn write_users(
    live: &LiveModel,
    found: &[String],
    columns: &[Vec<Option<f64>>],
    states: States,
    old: &HashMap<String, Option<i32>>,
    reason: &str,
) -> Result<Vec<Change>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let placed = live.fitted.assign(columns);
    let n_feats = columns.len();
    // Missing values travel as NaN, as in `upsert`.
    let mut flat_features: Vec<f64> = Vec::with_capacity(found.len() * n_feats);
    for i in 0..found.len() {
        flat_features.extend(columns.iter().map(|c| c[i].unwrap_or(f64::NAN)));
    }
    let segment: Vec<Option<i32>> = placed.assigned.iter().map(|a| a.map(|(s, _)| s)).collect();
    let distance: Vec<Option<f64>> = placed.assigned.iter().map(|a| a.map(|(_, d)| d)).collect();
    let flat_embedding: Vec<f32> = placed.embedding.iter().map(|&v| v as f32).collect();
    let changes: Vec<Change> = found
        .iter()
        .zip(&segment)
        .filter_map(|(user, to)| {
            let from = old.get(user).copied().flatten();
            (from != *to).then(|| Change { user: user.clone(), from, to: *to })
        })
        .collect();
    let rfm: Vec<String> = (1..=RFM_COLUMNS.len()).map(|j| format!("nullif($5[(i - 1) * $6 + {j}], 'NaN')")).collect();
    let sql = format!(
        "INSERT INTO segment.{t} AS u (user_id, segment_id, distance, cell, model_version, {rfm_names}, \
                                     features, embedding, updated_at, live_tag, live_orders, live_events) \
         SELECT k::{kt}, s, d, nullif(c, -1), $4, {rfm}, \
                pg_catalog.array_replace($5[(i - 1) * $6 + 1 : i * $6], 'NaN'::float8, NULL), \
                $7[(i - 1) * $8 + 1 : i * $8], pg_catalog.clock_timestamp(), $9, so, se \
         FROM unnest($1::text[], $2::int[], $3::float8[], $10::int[], $11::bytea[], $12::bytea[]) \
              WITH ORDINALITY AS x(k, s, d, c, so, se, i) \
         ON CONFLICT (user_id) DO UPDATE SET segment_id = EXCLUDED.segment_id, distance = EXCLUDED.distance, \
           cell = EXCLUDED.cell, model_version = EXCLUDED.model_version, {rfm_set}, features = EXCLUDED.features, \
           embedding = EXCLUDED.embedding, updated_at = EXCLUDED.updated_at, live_tag = EXCLUDED.live_tag, \
           live_orders = EXCLUDED.live_orders, live_events = EXCLUDED.live_events",
        kt = live.key_type,
        t = quote_ident(&users_table(&live.model)),
        rfm_names = RFM_COLUMNS.join(", "),
        rfm = rfm.join(", "),
        rfm_set = RFM_COLUMNS.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", "),
    );
    let (tag, orders, events) = states;
    Spi::connect_mut(|c| {
        let args: [DatumWithOid; 12] = [
            found.to_vec().into(),
            segment.into(),
            distance.into(),
            live.version.into(),
            flat_features.into(),
            (n_feats as i64).into(),
            flat_embedding.into(),
            (placed.embedding.ncols() as i64).into(),
            tag.into(),
            placed.cells.iter().map(|c| c.unwrap_or(-1)).collect::<Vec<i32>>().into(),
            orders.into(),
            events.into(),
        ];
        let types = [
            TEXT_ARRAY,
            INT4_ARRAY,
            FLOAT8_ARRAY,
            INT4,
            FLOAT8_ARRAY,
            INT8,
            FLOAT4_ARRAY,
            INT8,
            INT8,
            INT4_ARRAY,
            BYTEA_ARRAY,
            BYTEA_ARRAY,
        ];
        plans::execute(c, &sql, &types, &args)?;
        Ok::<_, SegError>(())
    })?;
    insert_history(live, &changes, reason)?;
    Ok(changes)
}

/// History rows for segment changes the live path wrote itself.
fn insert_history(live: &LiveModel, changes: &[Change], reason: &str) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let history = format!(
        "INSERT INTO segment.{h} (user_id, from_segment, to_segment, model_version, reason, changed_at) \
         SELECT k::{kt}, f, s, $4, $5, pg_catalog.clock_timestamp() \
         FROM unnest($1::text[], $2::int[], $3::int[]) x(k, f, s)",
        h = quote_ident(&history_table(&live.model)),
        kt = live.key_type,
    );
    Spi::connect_mut(|c| {
        let args: [DatumWithOid; 5] = [
            changes.iter().map(|c| c.user.clone()).collect::<Vec<_>>().into(),
            changes.iter().map(|c| c.from).collect::<Vec<_>>().into(),
            changes.iter().map(|c| c.to).collect::<Vec<_>>().into(),
            live.version.into(),
            reason.into(),
        ];
        plans::execute(c, &history, &[TEXT_ARRAY, INT4_ARRAY, INT4_ARRAY, INT4, TEXT], &args)?;
        Ok(())
    })
}

/// The sync INSERT path: each touched user's stored state plus what the statement inserted
/// (`orders`, `events`: their parts per key, as `StateSql::new_orders`/`new_events` make them),
/// without reading their history. Users without a usable stored state (new, written under
/// another model version, or tallied at a later time than this statement's) are rebuilt from
/// the sources, which already hold the new rows.
pub fn insert(model: &str, keys: &[String], orders: &[Option<Vec<u8>>], events: &[Option<Vec<u8>>]) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    if keys.len() > MANY_USERS {
        return crate::pg::source::with_bulk_settings(|| insert_to(model, keys, orders, events));
    }
    insert_to(model, keys, orders, events)
}

fn insert_to(model: &str, keys: &[String], orders: &[Option<Vec<u8>>], events: &[Option<Vec<u8>>]) -> Result<usize> {
    lock_users(model, keys)?;
    gucs::apply_max_threads();
    let (live, times) = load_with_times(model)?;
    let Some(st) = &live.state else {
        let changes = recompute(&live, keys, "order")?;
        notify(model, live.version, "order", &changes)?;
        return Ok(changes.len());
    };
    let p = params_at(st, times);
    // SAFETY: in the writer's transaction, after the users' locks.
    let mut rows = unsafe { users_rows::Users::open(&users_table(model)) };
    let mut changes = Vec::new();
    // Users in key order (numeric keys by value): a fit writes the users table in that order, so
    // a statement touching many users reads and rewrites its pages about in sequence, and a
    // chunk's rows are read and written while their pages are still in the buffers.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    if keys.len() > 1 {
        order.sort_by_cached_key(|&i| keys[i].parse::<i64>().map_err(|_| keys[i].clone()));
    }
    let part = |v: &[Option<Vec<u8>>], i: usize| v.get(i).cloned().flatten();
    for chunk in order.chunks(INSERT_CHUNK) {
        let chunk_keys: Vec<String> = chunk.iter().map(|&i| keys[i].clone()).collect();
        let chunk_orders: Vec<Option<Vec<u8>>> = chunk.iter().map(|&i| part(orders, i)).collect();
        let chunk_events: Vec<Option<Vec<u8>>> = chunk.iter().map(|&i| part(events, i)).collect();
        changes.extend(insert_chunk(&live, st, &p, rows.as_mut(), &chunk_keys, &chunk_orders, &chunk_events)?);
    }
    drop(rows);
    notify(model, live.version, "order", &changes)?;
    Ok(changes.len())
}

/// Users an INSERT statement's state merge handles at a time.
const INSERT_CHUNK: usize = 1000;

/// [`insert_to`] for some of the statement's users (`orders`, `events`: their parts, by position).
fn insert_chunk(
    live: &LiveModel,
    st: &StateSql,
    p: &Params,
    mut rows: Option<&mut users_rows::Users>,
    keys: &[String],
    orders: &[Option<Vec<u8>>],
    events: &[Option<Vec<u8>>],
) -> Result<Vec<Change>> {
    let mut tids = HashMap::new();
    let (old, mut stored) = match rows.as_deref_mut() {
        Some(rows) => {
            let (mut old, mut stored) = (HashMap::with_capacity(keys.len()), HashMap::with_capacity(keys.len()));
            for key in keys {
                // SAFETY: `rows` is open.
                let Some(found) = (unsafe { rows.fetch(key) }) else { continue };
                old.insert(key.clone(), found.segment);
                tids.insert(key.clone(), found.tid);
                if found.tag == Some(st.tag) {
                    if let Some(state) = decode_state(found.orders.as_deref(), found.events.as_deref()) {
                        stored.insert(key.clone(), state);
                    }
                }
            }
            (old, stored)
        }
        None => read_users(live, st.tag, keys)?,
    };
    let mut states = Vec::with_capacity(keys.len());
    let mut rebuild = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let part = |v: &'_ [Option<Vec<u8>>]| v.get(i).and_then(|b| b.clone());
        let merged = stored.remove(key).and_then(|(rows, tally)| {
            let new_rows = live_state::decode_rows(&part(orders).unwrap_or_default())?;
            let new_tally = part(events).map(|e| Tally::decode(&e));
            let tally = match (tally, new_tally) {
                (None, None) => None,
                (Some(t), None) => Some(t.at(p.as_of)?),
                (None, Some(n)) => Some(n?.at(p.as_of)?),
                (Some(t), Some(n)) => Some(t.merge(&n?).at(p.as_of)?),
            };
            Some((live_state::merge_rows(rows, &new_rows), tally))
        });
        match merged {
            Some(state) => states.push((key.clone(), Some(state))),
            None => rebuild.push(key.clone()),
        }
    }
    let mut from_source = states_from_source(live, st, &rebuild)?;
    states.extend(rebuild.into_iter().map(|k| {
        let state = from_source.remove(&k);
        (k, state)
    }));
    let direct = rows.map(|r| (r, &tids));
    write_states(live, st, p, states, &old, direct, "order")
}

/// Writes every user's live state from the sources (turning sync mode on): users the sources no
/// longer know lose theirs, so nothing written before live mode was off can be built upon.
fn build_all_states(live: &LiveModel) -> Result<()> {
    let Some(st) = &live.state else { return Ok(()) };
    let t = quote_ident(&users_table(&live.model));
    crate::pg::source::with_bulk_settings(|| {
        Spi::run_with_args(
            &format!(
                // rows whose state is already right are left alone (turning sync mode off and
                // on would otherwise rewrite the whole table); a tally is right whatever time it
                // was taken at (its first 8 bytes) when its counts and pending events agree
                "UPDATE segment.{t} u SET live_tag = CASE WHEN s.user_id IS NULL THEN NULL ELSE $1 END, \
                   live_orders = s.orders, live_events = s.events \
                 FROM segment.{t} u0 LEFT JOIN ({all}) s ON s.user_id = u0.user_id \
                 WHERE u.user_id = u0.user_id \
                   AND (CASE WHEN s.user_id IS NULL THEN NULL ELSE $1 END IS DISTINCT FROM u0.live_tag \
                        OR s.orders IS DISTINCT FROM u0.live_orders \
                        OR pg_catalog.substr(s.events, 9) IS DISTINCT FROM pg_catalog.substr(u0.live_events, 9))",
                all = st.for_all
            ),
            &[st.tag.into()],
        )
        .map_err(from_spi)
    })
}

/// Above this many touched users a statement uses the semi-join form of the features query.
const MANY_USERS: usize = 256;

/// Number of lock buckets per model: a statement touching many users (a COPY) takes at most
/// this many locks, however many users it touches.
const LOCK_BUCKETS: i64 = 1024;

/// Transaction locks on the touched users' buckets (users hashed into [`LOCK_BUCKETS`]), taken
/// in one order so that concurrent statements cannot deadlock. Statements on the same user
/// serialize; statements on different users rarely share a bucket.
fn lock_users(model: &str, keys: &[String]) -> Result<()> {
    // What `pg_advisory_xact_lock_shared(hashtext('pg_segment.model:' || model))` (the shared
    // side of `catalog::lock_model`) and `pg_advisory_xact_lock(hashtext(model),
    // (hashtextextended(key, 0) % LOCK_BUCKETS)::int)` take, without two statements per write.
    // SAFETY: hash functions called through fmgr with the arguments they declare; lock tags
    // built as the advisory lock functions build them.
    unsafe {
        let model_key = hash_text(&format!("pg_segment.model:{model}")) as i64;
        advisory_xact_lock((model_key >> 32) as u32, model_key as u32, 1, pg_sys::ShareLock);
        let buckets: std::collections::BTreeSet<i32> =
            keys.iter().map(|k| (hash_text_extended(k) % LOCK_BUCKETS) as i32).collect();
        let user_key = hash_text(model) as u32;
        for b in buckets {
            advisory_xact_lock(user_key, b as u32, 2, pg_sys::ExclusiveLock);
        }
    }
    Ok(())
}

/// What `pg_advisory_xact_lock*` do: `kind` 1 is the one-int8 form (high and low halves), 2 the
/// two-int4 form.
unsafe fn advisory_xact_lock(key1: u32, key2: u32, kind: u16, mode: u32) {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: pg_sys::MyDatabaseId.to_u32(),
        locktag_field2: key1,
        locktag_field3: key2,
        locktag_field4: kind,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, false);
}

/// `hashtext(s)` (under the default collation, as the SQL spelling gets it).
unsafe fn hash_text(s: &str) -> i32 {
    let t = pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32);
    let h = pg_sys::OidFunctionCall1Coll(pg_sys::Oid::from(pg_sys::F_HASHTEXT), pg_sys::DEFAULT_COLLATION_OID, t.into());
    h.value() as i32
}

/// `hashtextextended(s, 0)`.
unsafe fn hash_text_extended(s: &str) -> i64 {
    let t = pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32);
    let h = pg_sys::OidFunctionCall2Coll(
        pg_sys::Oid::from(pg_sys::F_HASHTEXTEXTENDED),
        pg_sys::DEFAULT_COLLATION_OID,
        t.into(),
        pg_sys::Datum::from(0i64),
    );
    h.value() as i64
}

/// Stored live states to write with the users (see `write_states`): their tag, then each user's
/// orders and events halves.
type States = (i64, Vec<Option<Vec<u8>>>, Vec<Option<Vec<u8>>>);

/// Writes features, embedding and segment of the `found` users, and their history.
fn upsert(live: &LiveModel, found: &[String], columns: &[Vec<Option<f64>>], reason: &str) -> Result<Vec<Change>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let placed = live.fitted.assign(columns);
    let (embedding, assigned) = (&placed.embedding, &placed.assigned);
    let n_feats = columns.len();
    // Missing values travel as NaN (no feature is ever NaN): an array with NULLs would make every
    // subscript below scan the array from its start.
    let mut flat_features: Vec<f64> = Vec::with_capacity(found.len() * n_feats);
    for i in 0..found.len() {
        flat_features.extend(columns.iter().map(|c| c[i].unwrap_or(f64::NAN)));
    }
    let segment: Vec<Option<i32>> = assigned.iter().map(|a| a.map(|(s, _)| s)).collect();
    let distance: Vec<Option<f64>> = assigned.iter().map(|a| a.map(|(_, d)| d)).collect();
    let flat_embedding: Vec<f32> = embedding.iter().map(|&v| v as f32).collect();
    let dims = embedding.ncols() as i64;
    let rfm: Vec<String> =
        (1..=RFM_COLUMNS.len()).map(|j| format!("nullif($5[(i - 1) * $6 + {j}], 'NaN')")).collect();
    let sql = format!(
        "WITH input AS ( \
           SELECT k::{kt} AS user_id, s AS segment_id, d AS distance, i \
           FROM unnest($1::text[], $2::int[], $3::float8[]) WITH ORDINALITY AS x(k, s, d, i)), \
         old AS (SELECT u.user_id, u.segment_id FROM segment.{t} u JOIN input USING (user_id)), \
         up AS ( \
           INSERT INTO segment.{t} AS u (user_id, segment_id, distance, cell, model_version, {rfm_names}, \
                                         features, embedding, updated_at) \
           SELECT user_id, segment_id, distance, nullif($10[i], -1), $4, {rfm}, \
                  pg_catalog.array_replace($5[(i - 1) * $6 + 1 : i * $6], 'NaN'::float8, NULL), \
                  $7[(i - 1) * $8 + 1 : i * $8], clock_timestamp() \
           FROM input \
           ON CONFLICT (user_id) DO UPDATE SET segment_id = EXCLUDED.segment_id, distance = EXCLUDED.distance, cell = EXCLUDED.cell, \
             model_version = EXCLUDED.model_version, {rfm_set}, features = EXCLUDED.features, \
             embedding = EXCLUDED.embedding, updated_at = EXCLUDED.updated_at \
           RETURNING u.user_id, u.segment_id), \
         changed AS ( \
           INSERT INTO segment.{h} (user_id, from_segment, to_segment, model_version, reason, changed_at) \
           SELECT up.user_id, old.segment_id, up.segment_id, $4, $9, pg_catalog.clock_timestamp() \
           FROM up LEFT JOIN old USING (user_id) \
           WHERE old.segment_id IS DISTINCT FROM up.segment_id \
           RETURNING user_id, from_segment, to_segment) \
         SELECT user_id::text, from_segment, to_segment FROM changed",
        kt = live.key_type,
        t = quote_ident(&users_table(&live.model)),
        h = quote_ident(&history_table(&live.model)),
        rfm_names = RFM_COLUMNS.join(", "),
        rfm = rfm.join(", "),
        rfm_set = RFM_COLUMNS.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", "),
    );
    Spi::connect_mut(|c| {
        let args: [DatumWithOid; 10] = [
            found.to_vec().into(),
            segment.into(),
            distance.into(),
            live.version.into(),
            flat_features.into(),
            (n_feats as i64).into(),
            flat_embedding.into(),
            dims.into(),
            reason.into(),
            // no NULLs in a subscripted array (see flat_features)
            placed.cells.iter().map(|c| c.unwrap_or(-1)).collect::<Vec<i32>>().into(),
        ];
        let types = [TEXT_ARRAY, INT4_ARRAY, FLOAT8_ARRAY, INT4, FLOAT8_ARRAY, INT8, FLOAT4_ARRAY, INT8, TEXT, INT4_ARRAY];
        collect_changes(plans::execute(c, &sql, &types, &args)?)
    })
}

/// Removes users that have no usable rows left (every order deleted, say).
fn remove(live: &LiveModel, gone: &[String], reason: &str) -> Result<Vec<Change>> {
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "WITH gone AS (DELETE FROM segment.{t} WHERE user_id IN (SELECT k::{kt} FROM unnest($1::text[]) k) \
                       RETURNING user_id, segment_id), \
         changed AS ( \
           INSERT INTO segment.{h} (user_id, from_segment, to_segment, model_version, reason, changed_at) \
           SELECT user_id, segment_id, NULL, $2, $3, pg_catalog.clock_timestamp() FROM gone WHERE segment_id IS NOT NULL \
           RETURNING user_id, from_segment, to_segment) \
         SELECT user_id::text, from_segment, to_segment FROM changed",
        kt = live.key_type,
        t = quote_ident(&users_table(&live.model)),
        h = quote_ident(&history_table(&live.model)),
    );
    Spi::connect_mut(|c| {
        let args: [DatumWithOid; 3] = [gone.to_vec().into(), live.version.into(), reason.into()];
        collect_changes(c.update(&sql, None, &args).map_err(from_spi)?)
    })
}

fn collect_changes(t: pgrx::spi::SpiTupleTable) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    for r in t {
        out.push(Change {
            user: r.get::<String>(1).map_err(from_spi)?.unwrap_or_default(),
            from: r.get::<i32>(2).map_err(from_spi)?,
            to: r.get::<i32>(3).map_err(from_spi)?,
        });
    }
    Ok(out)
}

/// Runs a history-writing statement (parameters: $1 model version, $2 reason; it returns
/// user_id::text, from_segment, to_segment), sends the NOTIFY and counts arrivals per segment.
pub fn record_changes(model: &str, version: i32, reason: &str, sql: &str) -> Result<Vec<(i32, i64)>> {
    let changes = Spi::connect_mut(|c| {
        let args: [DatumWithOid; 2] = [version.into(), reason.into()];
        collect_changes(c.update(sql, None, &args).map_err(from_spi)?)
    })?;
    notify(model, version, reason, &changes)?;
    let mut moved: HashMap<i32, i64> = HashMap::new();
    for c in changes.iter() {
        if let Some(to) = c.to {
            *moved.entry(to).or_default() += 1;
        }
    }
    Ok(moved.into_iter().collect())
}

/// More changes than this in one statement are announced as one summary payload.
const NOTIFY_DETAIL_MAX: usize = 1_000;

/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
const NOTIFY_PAYLOAD_MAX: usize = 7_500;

/// Sends the changes on the `pg_segment.notify_channel` channel as JSON, as few payloads as
/// fit: `{"model", "version", "reason", "changes": [{"user", "from", "to"}, ...]}`.
fn notify(model: &str, version: i32, reason: &str, changes: &[Change]) -> Result<()> {
    let Some(channel) = gucs::notify_channel() else {
        return Ok(());
    };
    if changes.is_empty() {
        return Ok(());
    }
    if changes.len() > NOTIFY_DETAIL_MAX {
        let summary = json!({"model": model, "version": version, "reason": reason, "changed": changes.len()});
        return Spi::run_with_args(
            "SELECT pg_catalog.pg_notify($1, $2)",
            &[channel.into(), summary.to_string().into()],
        )
        .map_err(from_spi);
    }
    let head = json!({"model": model, "version": version, "reason": reason}).to_string();
    let mut payloads = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut size = head.len() + 16;
    for c in changes {
        let item = json!({"user": c.user, "from": c.from, "to": c.to}).to_string();
        if !batch.is_empty() && size + item.len() + 1 > NOTIFY_PAYLOAD_MAX {
            payloads.push(std::mem::take(&mut batch));
            size = head.len() + 16;
        }
        size += item.len() + 1;
        batch.push(item);
    }
    payloads.push(batch);
    let texts: Vec<String> =
        payloads.into_iter().map(|b| format!("{},\"changes\":[{}]}}", &head[..head.len() - 1], b.join(","))).collect();
    Spi::run_with_args(
        "SELECT count(pg_catalog.pg_notify($1, p)) FROM unnest($2::text[]) p",
        &[channel.into(), texts.into()],
    )
    .map_err(from_spi)
}

// ---------------------------------------------------------------------------------------------
// Installing and removing the triggers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "sync" => Ok(Mode::Sync),
            "async" => Ok(Mode::Async),
            "off" => Ok(Mode::Off),
            _ => Err(SegError::invalid(format!("invalid live mode \"{s}\""))
                .hint("use 'sync' (update in the writer's transaction), 'async' (queue for segment_process) or 'off'")),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::Off => "off",
        }
    }
}

/// The SQL name of a trigger or trigger function for `model` on `table_role` ("orders" or
/// "events") and event ("ins", "upd", "del", "trunc").
fn object_name(model: &str, table_role: &str, event: &str) -> String {
    format!("{model}_live_{table_role}_{event}")
}

const EVENTS: [(&str, &str, &str); 3] = [
    ("ins", "INSERT", "REFERENCING NEW TABLE AS new_rows"),
    ("upd", "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ("del", "DELETE", "REFERENCING OLD TABLE AS old_rows"),
];

fn drop_triggers(model: &str) -> Result<()> {
    let installed: Option<(Option<String>, Option<String>)> = Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [model.into()];
        let t = c
            .select("SELECT source::text, events::text FROM segment.live WHERE model = $1", Some(1), &args)
            .map_err(from_spi)?;
        Ok::<_, SegError>(
            t.into_iter().next().map(|r| (r.get::<String>(1).ok().flatten(), r.get::<String>(2).ok().flatten())),
        )
    })?;
    let Some((source, events)) = installed else {
        return Ok(());
    };
    for (role, rel) in [("orders", source), ("events", events)] {
        let Some(rel) = rel else { continue };
        for event in ["ins", "upd", "del", "trunc"] {
            let name = quote_ident(&object_name(model, role, event));
            Spi::run(&format!("DROP TRIGGER IF EXISTS {name} ON {rel}")).map_err(from_spi)?;
            // the sync INSERT trigger calls a function of the extension's, the others their own
            let own: Option<bool> = Spi::get_one(&format!(
                "SELECT pg_catalog.to_regprocedure({}) IS NOT NULL",
                quote_literal(&format!("segment.{name}()"))
            ))
            .map_err(from_spi)?;
            if own == Some(true) {
                Spi::run(&format!("DROP FUNCTION segment.{name}()")).map_err(from_spi)?;
            }
        }
    }
    Spi::run_with_args("DELETE FROM segment.live WHERE model = $1", &[model.into()]).map_err(from_spi)
}

/// Installs (or removes, for `off`) the live triggers of `model`'s current version.
pub fn install(model: &str, mode: Mode) -> Result<()> {
    catalog::check_model_name(model)?;
    catalog::current(model)?;
    catalog::ensure_state_columns(model)?;
    CACHE.with(|c| c.borrow_mut().remove(model));
    let live = load(model)?;
    catalog::lock_model(model)?;
    drop_triggers(model)?;
    if mode == Mode::Off {
        return Ok(());
    }
    let ext_schema = crate::pg::source::extension_schema()?;
    let queue = quote_ident(&queue_table(model));
    if mode == Mode::Async {
        let enqueue = quote_literal(&format!("{ext_schema}._segment_enqueue()"));
        let installed: Option<bool> =
            Spi::get_one(&format!("SELECT pg_catalog.to_regprocedure({enqueue}) IS NOT NULL")).map_err(from_spi)?;
        if installed != Some(true) {
            return Err(SegError::new(
                ErrorKind::UndefinedObject,
                "async live mode needs the function _segment_enqueue(), which this installation lacks",
            )
            .detail("the extension's library is newer than its SQL objects")
            .hint("ALTER EXTENSION pg_segment UPDATE"));
        }
    }
    drop_queue_key(model)?;
    let mut tables = vec![("orders", live.orders.relation.clone(), live.orders.user.clone())];
    if let Some(e) = &live.events {
        tables.push(("events", e.relation.clone(), e.user.clone()));
    }
    for (role, rel, user) in &tables {
        warn_without_index(rel, user)?;
        for (event, op, referencing) in EVENTS {
            let keys = match event {
                "ins" => format!("SELECT {user} FROM new_rows"),
                "del" => format!("SELECT {user} FROM old_rows"),
                _ => format!("SELECT {user} FROM old_rows UNION SELECT {user} FROM new_rows"),
            };
            let keys = format!("SELECT DISTINCT k FROM ({keys}) s(k) WHERE k IS NOT NULL");
            if mode == Mode::Async && event == "ins" {
                // the hot path: a row trigger appending straight to the queue (see queue.rs)
                let name = quote_ident(&object_name(model, role, event));
                Spi::run(&format!(
                    "CREATE TRIGGER {name} AFTER INSERT ON {rel} FOR EACH ROW \
                       EXECUTE FUNCTION {ext_schema}._segment_enqueue({q}, {u}); \
                     COMMENT ON TRIGGER {name} ON {rel} IS {c}",
                    q = quote_literal(&queue_table(model)),
                    u = quote_literal(&features::unquote_ident(user)),
                    c = quote_literal(&format!("pg_segment: keeps model {model} current")),
                ))
                .map_err(from_spi)?;
                continue;
            }
            if mode == Mode::Sync && event == "ins" && live.state.is_some() {
                // the hot path: the new rows merged into the users' stored state (see sync_trigger)
                let name = quote_ident(&object_name(model, role, event));
                Spi::run(&format!(
                    "CREATE TRIGGER {name} AFTER INSERT ON {rel} {referencing} FOR EACH STATEMENT \
                       EXECUTE FUNCTION {ext_schema}._segment_live_sync({m}, {r}, {u}); \
                     COMMENT ON TRIGGER {name} ON {rel} IS {c}",
                    m = quote_literal(model),
                    r = quote_literal(role),
                    u = quote_literal(&features::unquote_ident(user)),
                    c = quote_literal(&format!("pg_segment: keeps model {model} current")),
                ))
                .map_err(from_spi)?;
                continue;
            }
            let call = format!("PERFORM {ext_schema}._segment_live_apply({}, ARRAY({keys})::text[])", quote_literal(model));
            let body = match mode {
                Mode::Async => format!("{}; RETURN NULL;", queue::append(&queue, &keys)),
                _ => format!(
                    "{call}; \
                     RETURN NULL; \
                   EXCEPTION WHEN OTHERS THEN \
                     {enqueue}; \
                     RAISE WARNING 'pg_segment: live update of model \"%\" failed: %', {m}, SQLERRM \
                       USING HINT = 'the users were queued; SELECT segment_process(' || quote_literal({m}) || ') applies them'; \
                     RETURN NULL;",
                    m = quote_literal(model),
                    enqueue = queue::append(&queue, &keys)
                ),
            };
            write_trigger(
                model,
                role,
                event,
                rel,
                &format!("AFTER {op} ON {rel} {referencing} FOR EACH STATEMENT"),
                &body,
            )?;
        }
        // TRUNCATE has no transition table: re-derive every user of the model.
        let body = match mode {
            Mode::Async => format!(
                "{}; RETURN NULL;",
                queue::append(&queue, &format!("SELECT user_id FROM segment.{}", quote_ident(&users_table(model))))
            ),
            _ => format!("PERFORM {ext_schema}._segment_live_truncate({}); RETURN NULL;", quote_literal(model)),
        };
        write_trigger(model, role, "trunc", rel, &format!("AFTER TRUNCATE ON {rel} FOR EACH STATEMENT"), &body)?;
    }
    if mode == Mode::Sync {
        build_all_states(&live)?;
    }
    Spi::run_with_args(
        "INSERT INTO segment.live (model, mode, source, events) VALUES ($1, $2, $3::regclass, $4::regclass)",
        &[
            model.into(),
            mode.as_str().into(),
            live.orders.relation.clone().into(),
            live.events.as_ref().map(|e| e.relation.clone()).into(),
        ],
    )
    .map_err(from_spi)
}

/// Re-writes the live triggers of `model` in the mode it is in (if any): after a fit that
/// re-created its tables (the user key's type changed), the triggers must follow.
pub fn reinstall(model: &str) -> Result<()> {
    let mode: Option<String> =
        Spi::get_one_with_args("SELECT (SELECT mode FROM segment.live WHERE model = $1)", &[model.into()])
            .map_err(from_spi)?;
    match mode {
        Some(mode) => install(model, Mode::parse(&mode)?),
        None => Ok(()),
    }
}

/// Queues made before 0.2.0 have a primary key on the user (the triggers de-duplicated on
/// insert); the triggers written now append and would fail on it, so it goes before they come.
fn drop_queue_key(model: &str) -> Result<()> {
    let key: Option<String> = Spi::get_one_with_args(
        "SELECT (SELECT conname::text FROM pg_catalog.pg_constraint \
                 WHERE conrelid = pg_catalog.to_regclass('segment.' || pg_catalog.quote_ident($1)) AND contype = 'p')",
        &[queue_table(model).into()],
    )
    .map_err(from_spi)?;
    if let Some(key) = key {
        Spi::run(&format!(
            "ALTER TABLE segment.{} DROP CONSTRAINT {}",
            quote_ident(&queue_table(model)),
            quote_ident(&key)
        ))
        .map_err(from_spi)?;
    }
    Ok(())
}

/// Live updates look the touched users up in the source: without an index on the user column
/// every statement scans the whole table. Say so (creating an index on the user's table is
/// theirs to decide).
fn warn_without_index(rel: &str, user: &str) -> Result<()> {
    let indexed: Option<bool> = Spi::get_one_with_args(
        "SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a \
                          ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                        WHERE i.indrelid = $1::regclass \
                          AND '\"' || replace(a.attname, '\"', '\"\"') || '\"' = $2)",
        &[rel.into(), user.into()],
    )
    .map_err(from_spi)?;
    if indexed == Some(false) {
        notice!(
            "pg_segment: {rel} has no index on {user}: every live update will scan the table; CREATE INDEX ON {rel} ({user})"
        );
    }
    Ok(())
}

/// A SECURITY DEFINER trigger function (so writers need no rights on schema `segment`) with a
/// pinned search_path, and its statement-level trigger.
fn write_trigger(model: &str, role: &str, event: &str, rel: &str, when: &str, body: &str) -> Result<()> {
    let name = quote_ident(&object_name(model, role, event));
    Spi::run(&format!(
        "CREATE FUNCTION segment.{name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
           SET search_path = pg_catalog, pg_temp AS $fn$ BEGIN {body} END $fn$; \
         REVOKE ALL ON FUNCTION segment.{name}() FROM PUBLIC; \
         CREATE TRIGGER {name} {when} EXECUTE FUNCTION segment.{name}(); \
         COMMENT ON TRIGGER {name} ON {rel} IS 'pg_segment: keeps model {m} current'",
        m = model.replace('\'', "")
    ))
    .map_err(from_spi)
}

/// Drains up to `max_users` queued users: claimed with SKIP LOCKED, so several sessions can
/// run it at once without waiting for or repeating each other's work.
pub fn process(model: &str, max_users: i32) -> Result<i32> {
    catalog::check_model_name(model)?;
    catalog::current(model)?;
    let queue = quote_ident(&queue_table(model));
    let keys: Vec<String> = Spi::connect_mut(|c| {
        let args: [DatumWithOid; 1] = [max_users.into()];
        let t = c.update(&queue::claim(&queue), None, &args).map_err(from_spi)?;
        let mut keys = Vec::new();
        for r in t {
            keys.push(r.get::<String>(1).map_err(from_spi)?.unwrap_or_default());
        }
        Ok::<_, SegError>(keys)
    })?;
    apply(model, &keys, "order")?;
    Ok(keys.len() as i32)
}

/// Every user currently in the model, as text keys.
pub fn all_users(model: &str) -> Result<Vec<String>> {
    let t = quote_ident(&users_table(model));
    Spi::get_one::<Vec<String>>(&format!("SELECT coalesce(array_agg(user_id::text), '{{}}') FROM segment.{t}"))
        .map_err(from_spi)
        .map(Option::unwrap_or_default)
}

// ---------------------------------------------------------------------------------------------
// Refresh

/// One row of `segment_users` and `segment_refresh`: segment id, name, users, share, users who
/// moved into it.
pub type SegmentRow = (i32, String, i64, f64, i64);

/// Brings every user up to date (features at now(), nearest segment of the current version);
/// with `refit`, fits a new version whose segments keep their ids where they are the same
/// group. `refit => NULL` re-fits when more users changed segment than
/// `pg_segment.refit_drift` allows.
pub fn refresh(model: &str, refit: Option<bool>) -> Result<Vec<SegmentRow>> {
    catalog::check_model_name(model)?;
    catalog::current(model)?;
    if refit == Some(true) {
        return refit_model(model);
    }
    crate::pg::source::with_bulk_settings(|| refresh_all(model, refit))
}

/// `refresh` without a forced re-fit: every user brought up to date under the current version.
fn refresh_all(model: &str, refit: Option<bool>) -> Result<Vec<SegmentRow>> {
    let since = catalog::quiesce(model)?;
    let live = load(model)?;
    gucs::apply_max_threads();
    // the planner's row count of the orders (a refresh does not count them)
    let rows: Option<f64> = Spi::get_one_with_args(
        "SELECT reltuples::float8 FROM pg_catalog.pg_class WHERE oid = $1::regclass",
        &[live.orders.relation.clone().into()],
    )
    .map_err(from_spi)?;
    if let Some(rows) = rows.filter(|r| *r > 0.0) {
        crate::pg::api::warn_if_aggregate_spills(rows as i64, "refresh")?;
    }
    let sql = features::features_sql(
        crate::pg::source::WORK_TABLE,
        &live.orders,
        live.events.as_ref(),
        &live.feats,
        AsOf::Now,
        live.dedupe,
        &live.timezone,
    );
    let users = crate::pg::source::materialize_features(&sql)?.users;
    let (assigned, cells, embedding) = crate::pg::source::place_all(&live.fitted, users)?.into_parts();
    catalog::lock_model(model)?;
    let touched = catalog::touched_since(model, since)?;
    let names: Vec<String> = live.feats.iter().map(|f| f.name.clone()).collect();
    let moved = catalog::write_users(
        model,
        live.version,
        &names,
        assigned.iter().map(|a| a.map(|(c, _)| live.fitted.segment_id(c))).collect(),
        assigned.iter().map(|a| a.map(|(_, d)| d)).collect(),
        cells,
        embedding.iter().map(|&v| v as f32).collect(),
        embedding.ncols(),
        "refresh",
    )?;
    // the rewrite dropped the users' live states: in sync mode, build them again now rather than
    // on each user's next order
    let mode: Option<String> =
        Spi::get_one_with_args("SELECT (SELECT mode FROM segment.live WHERE model = $1)", &[model.into()])
            .map_err(from_spi)?;
    if mode.as_deref() == Some("sync") {
        build_all_states(&live)?;
    }
    apply(model, &touched, "order")?;
    let changed: i64 = moved.iter().map(|(_, n)| n).sum();
    let drift = changed as f64 / users.max(1) as f64;
    notice!(
        "pg_segment: refreshed {users} users of model \"{model}\": {changed} changed segment ({:.1}%)",
        drift * 100.0
    );
    if refit.is_none() && drift > gucs::REFIT_DRIFT.get() {
        notice!("pg_segment: more than pg_segment.refit_drift changed segment: re-fitting");
        return refit_model(model);
    }
    segment_sizes(model, live.version, &moved)
}

/// Fits a new version with the arguments and options of the current one (as of now).
fn refit_model(model: &str) -> Result<Vec<SegmentRow>> {
    let (source, spec) = Spi::connect(|c| {
        let args: [DatumWithOid; 1] = [model.into()];
        let t = c
            .select("SELECT source::oid, spec::text FROM segment.current_models WHERE model = $1", Some(1), &args)
            .map_err(from_spi)?;
        let r = t.first();
        Ok::<_, SegError>((
            r.get::<pgrx::pg_sys::Oid>(1).map_err(from_spi)?.unwrap_or(pgrx::pg_sys::InvalidOid),
            r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
        ))
    })?;
    let spec: Value = serde_json::from_str(&spec).map_err(|e| broken(model, &e.to_string()))?;
    let mut opts: Options =
        serde_json::from_value(spec["options"].clone()).map_err(|e| broken(model, &e.to_string()))?;
    opts.as_of = None;
    opts.live = None;
    let a = &spec["arguments"];
    let arg = |k: &str| a[k].as_str().map(str::to_string);
    let args = crate::pg::api::FitArgs {
        source,
        k: a["k"].as_i64().map(|k| k as i32),
        model: model.to_string(),
        user_column: arg("user_column"),
        time_column: arg("time_column"),
        amount_column: arg("amount_column"),
        category_column: arg("category_column"),
        opts,
    };
    crate::pg::api::fit_model(&args, "refit")
}

fn segment_sizes(model: &str, version: i32, moved: &[(i32, i64)]) -> Result<Vec<SegmentRow>> {
    let t = quote_ident(&users_table(model));
    Spi::connect(|c| {
        let args: [DatumWithOid; 2] = [model.into(), version.into()];
        let mut rows = Vec::new();
        let q = format!(
            "SELECT c.segment_id, c.name, count(u.user_id), \
                    coalesce(count(u.user_id)::float8 / nullif((SELECT count(*) FROM segment.{t}), 0), 0) \
             FROM segment.centroids c LEFT JOIN segment.{t} u ON u.segment_id = c.segment_id \
             WHERE c.model = $1 AND c.version = $2 GROUP BY 1, 2 ORDER BY 1"
        );
        for r in c.select(&q, None, &args).map_err(from_spi)? {
            let id = r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0);
            rows.push((
                id,
                r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
                r.get::<i64>(3).map_err(from_spi)?.unwrap_or(0),
                r.get::<f64>(4).map_err(from_spi)?.unwrap_or(0.0),
                moved.iter().find(|(s, _)| *s == id).map_or(0, |(_, n)| *n),
            ));
        }
        Ok(rows)
    })
}

// ---------------------------------------------------------------------------------------------
// SQL functions

/// Brings a model's users up to date and, with `refit`, fits a label-stable new version.
#[pg_extern(volatile, parallel_unsafe)]
fn segment_refresh(
    model: default!(&str, "'default'"),
    refit: default!(Option<bool>, "NULL"),
) -> TableIterator<
    'static,
    (name!(segment_id, i32), name!(name, String), name!(users, i64), name!(share, f64), name!(moved_in, i64)),
> {
    TableIterator::new(refresh(model, refit).or_raise())
}

/// Turns live updates on (`sync`, `async`) or off for a model.
#[pg_extern(volatile, parallel_unsafe)]
fn segment_live(model: default!(&str, "'default'"), mode: default!(&str, "'sync'")) {
    install(model, Mode::parse(mode).or_raise()).or_raise()
}

/// Applies queued users of an async model; returns how many were processed.
#[pg_extern(volatile, parallel_unsafe)]
fn segment_process(model: default!(&str, "'default'"), max_users: default!(i32, 10000)) -> i32 {
    if max_users < 1 {
        crate::pg::error::raise(SegError::invalid(format!("max_users must be at least 1, not {max_users}")));
    }
    process(model, max_users).or_raise()
}

/// Called by the sync triggers with the touched users' keys.
#[pg_extern(name = "_segment_live_apply", volatile, parallel_unsafe)]
fn live_apply(model: &str, keys: Vec<Option<String>>) {
    let keys: Vec<String> = keys.into_iter().flatten().collect();
    apply(model, &keys, "order").or_raise();
}

/// The sync INSERT trigger (`_segment_live_sync(model, role, user column)`, statement level,
/// transition table `new_rows`): the new rows' parts of the touched users' states, then
/// [`insert`], in a subtransaction. Should that fail, the users are queued for
/// `segment_process` and a WARNING says why: the writer's INSERT never fails because of us.
mod sync_trigger {
    use pgrx::prelude::*;

    #[pg_trigger]
    fn _segment_live_sync<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
        let args = trigger.extra_args()?;
        let data = trigger.trigger_data();
        match args.as_slice() {
            [model, role, user] if !data.tg_newtable.is_null() => super::sync_insert(data, model, role, user),
            _ => crate::pg::error::raise(crate::core::error::SegError::invalid(
                "_segment_live_sync must be an AFTER INSERT statement trigger with a new table and the model, the \
                 table's role and its user column as arguments",
            )),
        }
        Ok(None)
    }

    // Not revoked from PUBLIC, so that whoever may turn live mode on can create the trigger (as
    // for the PL/pgSQL functions it replaced): it acts only on the tables of the model it names.
    extension_sql!(
        "ALTER FUNCTION _segment_live_sync() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;",
        name = "live_sync_definer",
        requires = [_segment_live_sync]
    );
}

/// See [`sync_trigger`].
fn sync_insert(data: &pg_sys::TriggerData, model: &str, role: &str, user: &str) {
    let relid = unsafe { (*data.tg_relation).rd_id };
    let applied = in_subtransaction(|| {
        let (live, _) = load_with_times(model)?;
        let parts = match (&live.state, role) {
            (Some(st), "orders") if live.orders_oid == relid => Some(&st.new_orders),
            (Some(st), "events") if live.events_oid == Some(relid) => st.new_events.as_ref(),
            _ => None,
        };
        let Some(parts) = parts else {
            return Err(broken(model, "its live INSERT trigger does not match it")
                .hint(format!("SELECT segment_live({}) re-installs its triggers", quote_literal(model))));
        };
        // SAFETY: the trigger's data (an AFTER INSERT statement trigger with a new table).
        let direct = unsafe {
            match role {
                "orders" => new_rows::order_parts(
                    data,
                    &live.orders.user,
                    &live.orders.time,
                    &live.orders.amount,
                    live.orders.category.as_deref(),
                    &features::slot_names(&live.feats),
                    &live.timezone,
                ),
                _ => live.events.as_ref().and_then(|e| {
                    new_rows::event_parts(data, &e.user, &e.time, &e.event_type, statement_times()[0])
                }),
            }
        };
        if let Some(parts) = direct {
            let keys: Vec<String> = parts.iter().map(|(k, _)| k.clone()).collect();
            let (orders, events) = match role {
                "orders" => (parts.into_iter().map(|(_, p)| Some(p)).collect(), vec![None; keys.len()]),
                _ => (vec![None; keys.len()], parts.into_iter().map(|(_, p)| Some(p)).collect()),
            };
            return insert(model, &keys, &orders, &events);
        }
        let (keys, orders, events) = Spi::connect_mut(|c| {
            // SAFETY: the trigger's data, for this SPI connection's queries on `new_rows`.
            unsafe { pg_sys::SPI_register_trigger_data(data as *const _ as *mut _) };
            let (mut keys, mut orders, mut events) = (Vec::new(), Vec::new(), Vec::new());
            for row in plans::execute(c, parts, &[], &[])? {
                keys.push(row.get::<String>(1).map_err(from_spi)?.unwrap_or_default());
                orders.push(row.get::<Vec<u8>>(2).map_err(from_spi)?);
                events.push(row.get::<Vec<u8>>(3).map_err(from_spi)?);
            }
            Ok::<_, SegError>((keys, orders, events))
        })?;
        insert(model, &keys, &orders, &events)
    });
    if let Err(message) = applied {
        // Only a trigger on the model's own tables queues (this runs as the extension's owner:
        // a trigger someone put on another table must not write, or cast their rows, as it).
        let registered: Option<bool> = Spi::get_one_with_args(
            "SELECT EXISTS (SELECT FROM segment.live WHERE model = $1 AND (source = $2 OR events = $2))",
            &[model.into(), relid.into()],
        )
        .unwrap_or(Some(false));
        if registered != Some(true) {
            crate::pg::error::raise(
                SegError::new(
                    ErrorKind::WrongObjectType,
                    format!("_segment_live_sync is not a live trigger of model \"{model}\" on this table"),
                )
                .detail(message)
                .hint(format!("SELECT segment_live({}) installs the model's triggers", quote_literal(model))),
            );
        }
        let queue = quote_ident(&queue_table(model));
        let keys = format!("SELECT DISTINCT k FROM (SELECT {} FROM new_rows) s(k) WHERE k IS NOT NULL", quote_ident(user));
        let queued = Spi::connect_mut(|c| {
            // SAFETY: as above.
            unsafe { pg_sys::SPI_register_trigger_data(data as *const _ as *mut _) };
            c.update(&queue::append(&queue, &keys), None, &[]).map(|_| ()).map_err(from_spi)
        });
        queued.or_raise();
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("pg_segment: live update of model \"{model}\" failed: {message}"),
            "pg_segment",
        )
        .set_hint(format!("the users were queued; SELECT segment_process({}) applies them", quote_literal(model)))
        .report(PgLogLevel::WARNING);
    }
}

/// Runs `f` in a subtransaction, as PL/pgSQL runs a block with an EXCEPTION clause: on any error
/// its writes are rolled back and the error's message returned.
fn in_subtransaction<R>(f: impl FnOnce() -> Result<R>) -> std::result::Result<R, String> {
    // SAFETY: the subtransaction protocol of PL/pgSQL's exec_stmt_block: back to the caller's
    // memory context and resource owner after beginning, releasing or rolling back.
    unsafe {
        let (cxt, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let restore = move || {
            pg_sys::MemoryContextSwitchTo(cxt);
            pg_sys::CurrentResourceOwner = owner;
        };
        let outcome = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| match f() {
            Ok(r) => Ok(r),
            Err(e) => Err(e.message),
        }))
        .catch_others(|e| {
            Err(match e {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
                    r.message().to_string()
                }
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
            })
        })
        .execute();
        match outcome {
            Ok(r) => {
                pg_sys::ReleaseCurrentSubTransaction();
                restore();
                Ok(r)
            }
            Err(message) => {
                restore();
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                restore();
                Err(message)
            }
        }
    }
}

/// Statement trigger on `segment.models` and `segment.live`: backends drop their cached models
/// (see `catalog_unchanged`) once the writing transaction commits.
mod catalog_trigger {
    use pgrx::prelude::*;

    #[pg_trigger]
    fn _segment_catalog_changed<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
        // SAFETY: the trigger's relation is open.
        unsafe { pg_sys::CacheInvalidateRelcache(trigger.trigger_data().tg_relation) };
        Ok(None)
    }

    extension_sql!(
        "CREATE TRIGGER models_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON segment.models \
           FOR EACH STATEMENT EXECUTE FUNCTION _segment_catalog_changed();
         CREATE TRIGGER live_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON segment.live \
           FOR EACH STATEMENT EXECUTE FUNCTION _segment_catalog_changed();
         REVOKE ALL ON FUNCTION _segment_catalog_changed() FROM PUBLIC;",
        name = "catalog_changed_triggers",
        requires = ["bootstrap", _segment_catalog_changed]
    );
}

/// Called by the sync TRUNCATE triggers: every user is re-derived from what is left.
#[pg_extern(name = "_segment_live_truncate", volatile, parallel_unsafe)]
fn live_truncate(model: &str) {
    let keys = all_users(model).or_raise();
    apply(model, &keys, "truncate").or_raise();
}

/// How far each centroid of the current version has moved: the distance from the stored
/// centroid to the mean of the users nearest to it now (one k-means step over the users table,
/// run as the parallel `_segment_kmeans_step` aggregate), with those users' count.
#[pg_extern(name = "_segment_centroid_shift", stable, parallel_safe)]
fn centroid_shift(
    model: &str,
) -> TableIterator<'static, (name!(segment_id, i32), name!(users, i64), name!(shift, Option<f64>))> {
    TableIterator::new(centroid_shift_rows(model).or_raise())
}

fn centroid_shift_rows(model: &str) -> Result<Vec<(i32, i64, Option<f64>)>> {
    catalog::check_model_name(model)?;
    let live = load(model)?;
    let c = &live.fitted.clustering.centroids;
    let (k, d) = (c.nrows(), c.ncols());
    let flat: Vec<f64> = c.iter().copied().collect();
    let acc: Option<Vec<f64>> = Spi::get_one_with_args(
        &format!(
            "SELECT {}._segment_kmeans_step(embedding, $1, $2) FROM segment.{}",
            crate::pg::source::extension_schema()?,
            quote_ident(&users_table(model))
        ),
        &[flat.into(), (k as i32).into()],
    )
    .map_err(from_spi)?;
    let acc = acc.unwrap_or_default();
    Ok((0..k)
        .map(|i| {
            let id = live.fitted.segment_id(i);
            let Some(block) = acc.get(i * (d + 1)..(i + 1) * (d + 1)) else {
                return (id, 0, None);
            };
            let n = block[0];
            let shift = (n > 0.0)
                .then(|| block[1..].iter().zip(c.row(i)).map(|(s, c)| (s / n - c).powi(2)).sum::<f64>().sqrt());
            (id, n as i64, shift)
        })
        .collect())
}

/// Pending work of a model's queue.
#[pg_extern(name = "_segment_queue_stats", stable, parallel_safe)]
fn queue_stats(
    model: &str,
) -> TableIterator<'static, (name!(pending, i64), name!(oldest, Option<pgrx::datum::TimestampWithTimeZone>))> {
    let q = quote_ident(&queue_table(model));
    let row = Spi::get_two::<i64, pgrx::datum::TimestampWithTimeZone>(&format!(
        "SELECT count(DISTINCT user_id), min(enqueued_at) FROM segment.{q}"
    ))
    .or_raise();
    TableIterator::once((row.0.unwrap_or(0), row.1))
}

extension_sql!(
    r#"
-- Live mode of every model and its queue: pending users and the oldest enqueue time.
CREATE VIEW segment.live_status AS
SELECT l.model, l.mode, l.source, l.events, l.since, q.pending, q.oldest
FROM segment.live l, LATERAL @extschema@._segment_queue_stats(l.model) q;

-- How far the users have moved since the current version was fitted.
CREATE FUNCTION segment_drift(model text DEFAULT 'default')
RETURNS TABLE (metric text, segment_id int, value float8)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    m record;
    t text;
    h text;
BEGIN
    SELECT c.model, c.version, c.metrics INTO m FROM segment.current_models c WHERE c.model = segment_drift.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', segment_drift.model
            USING ERRCODE = 'undefined_object', HINT = 'create it with SELECT * FROM segment_users(...)';
    END IF;
    t := format('segment.%I', m.model || '_users');
    h := format('segment.%I', m.model || '_history');
    RETURN QUERY EXECUTE format($q$
        SELECT 'mean_distance_at_fit'::text, NULL::int, (%1$L::jsonb->>'mean_distance')::float8
        UNION ALL
        SELECT 'mean_distance_now', NULL, avg(distance) FROM %2$s
        UNION ALL
        SELECT 'changed_since_fit', NULL,
               (SELECT count(DISTINCT user_id) FROM %3$s WHERE model_version = %4$s AND reason NOT IN ('fit', 'refit'))::float8
               / greatest(1, (SELECT count(*) FROM %2$s))
        UNION ALL
        (SELECT 'centroid_shift', s.segment_id, s.shift FROM @extschema@._segment_centroid_shift(%5$L) s ORDER BY s.segment_id)
        UNION ALL
        (SELECT 'size_shift', c.segment_id, (count(u.user_id) - c.users)::float8 / greatest(c.users, 1)
         FROM segment.centroids c LEFT JOIN %2$s u ON u.segment_id = c.segment_id
         WHERE c.model = %5$L AND c.version = %4$s
         GROUP BY c.segment_id, c.users ORDER BY c.segment_id)$q$,
        m.metrics, t, h, m.version, m.model);
END
$fn$;
COMMENT ON FUNCTION segment_drift(text) IS
    'mean distance to the centroid now vs at fit, share of users who changed segment since, centroid and size shift per segment';
"#,
    name = "live_status_view",
    requires = [queue_stats, centroid_shift, "bootstrap"]
);
