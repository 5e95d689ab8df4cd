//! `_segment_order_features(...)`: the order features of each user as an aggregate with
//! combine, serialize and deserialize functions, PARALLEL SAFE, so PostgreSQL can split the scan
//! of the orders over parallel workers (and a distributed planner could push it to its nodes)
//! without sorting them by user first.
//!
//! The state is palloc'd in the aggregate's memory context (so hash aggregation accounts for
//! it): the params of the statement and a growable array of `OrderRow`s. The features are
//! computed by `core::order_features` when the group is finalized. `SSPACE` tells the planner
//! the average state size (about 20 orders and the params), so hash aggregation sizes its table
//! for the users it expects instead of spilling after a few thousand (the default estimate for an
//! `internal` state is 8 kB).

use std::mem::size_of;

use pgrx::prelude::*;
use pgrx::Internal;
use pgrx::{pg_getarg, pg_getarg_datum};

use crate::core::live_state;
use crate::core::order_features::{self, OrderRow, Params, MAX_CATEGORY_SLOTS};

#[repr(C)]
struct State {
    params: Params,
    len: usize,
    cap: usize,
    rows: *mut OrderRow,
}

/// The aggregate's memory context (errors when called outside an aggregate).
unsafe fn agg_context(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::MemoryContext {
    let mut cxt: pg_sys::MemoryContext = std::ptr::null_mut();
    if pg_sys::AggCheckCallContext(fcinfo, &mut cxt) == 0 {
        error!("_segment_order_features support functions can only be called by the aggregate");
    }
    cxt
}

unsafe fn new_state(cxt: pg_sys::MemoryContext, params: Params, cap: usize) -> *mut State {
    let state = pg_sys::MemoryContextAlloc(cxt, size_of::<State>()) as *mut State;
    let cap = cap.max(4);
    let rows = pg_sys::MemoryContextAlloc(cxt, cap * size_of::<OrderRow>()) as *mut OrderRow;
    state.write(State { params, len: 0, cap, rows });
    state
}

/// Appends rows, growing the array in its own memory context.
unsafe fn push(state: &mut State, rows: &[OrderRow]) {
    if state.len + rows.len() > state.cap {
        let cap = (state.len + rows.len()).max(state.cap * 2);
        state.rows = pg_sys::repalloc(state.rows.cast(), cap * size_of::<OrderRow>()) as *mut OrderRow;
        state.cap = cap;
    }
    std::ptr::copy_nonoverlapping(rows.as_ptr(), state.rows.add(state.len), rows.len());
    state.len += rows.len();
}

/// The state behind an `internal` argument (None before the first row).
unsafe fn state_of(internal: &mut Internal) -> Option<*mut State> {
    internal.get_mut::<State>().map(|s| s as *mut State)
}

fn read_priors(priors: &pgrx::datum::Array<f64>) -> ([f64; MAX_CATEGORY_SLOTS], usize) {
    let mut out = [0.0; MAX_CATEGORY_SLOTS];
    if priors.len() > MAX_CATEGORY_SLOTS {
        error!("pg_segment: more than {MAX_CATEGORY_SLOTS} category slots");
    }
    for (slot, v) in priors.iter().enumerate() {
        out[slot] = v.unwrap_or(0.0);
    }
    (out, priors.len())
}

/// Positions of the transition functions' arguments (after the state, 0) in the two installed
/// signatures: 0.2.0's `(t, local, amount, slot, category_hash, as_of, cut30, cut90, priors,
/// dedupe)` and 0.1.0's `(t, amount, slot, category_hash, hour, weekend, as_of, cut30, cut90,
/// priors, dedupe)`.
struct Args {
    t: usize,
    local: Local,
    amount: usize,
    slot: usize,
    category_hash: usize,
    /// Then cut30, cut90, priors and dedupe; None for `_segment_order_rows`, which takes no
    /// parameters (it only collects the rows).
    as_of: Option<usize>,
}

/// Where the order's local time of day comes from.
enum Local {
    /// The local time (0.2.0): hour and weekday derived here; non-finite amounts skipped here.
    Time(usize),
    /// The hour and the weekend flag, computed by the scan (0.1.0, which also leaves out
    /// non-finite amounts itself).
    HourWeekend(usize, usize),
}

const ARGS: Args = Args { t: 1, local: Local::Time(2), amount: 3, slot: 4, category_hash: 5, as_of: Some(6) };
const ROWS_ARGS: Args = Args { as_of: None, ..ARGS };
const LEGACY_ARGS: Args =
    Args { t: 1, local: Local::HourWeekend(5, 6), amount: 2, slot: 3, category_hash: 4, as_of: Some(7) };

/// The transition: the state (created at the first row), with the row appended when it is usable.
///
/// The arguments are read from `fcinfo` here rather than unboxed by pgrx for every call: the
/// priors array, which only a group's first row needs, cost a third of the transition when it
/// was converted for each order.
unsafe fn transition(fcinfo: pg_sys::FunctionCallInfo, a: &Args) -> Internal {
    let arg = |n: usize| pg_getarg_datum(fcinfo, n);
    let mut state: Internal = pg_getarg(fcinfo, 0).unwrap_or_default();
    let ptr = match state_of(&mut state) {
        Some(s) => s,
        None => {
            let params = match a.as_of {
                Some(as_of) => {
                    let time = |n: usize| arg(n).map_or(0, |d| d.value() as i64);
                    let priors: Option<pgrx::datum::Array<f64>> = pg_getarg(fcinfo, as_of + 3);
                    let (priors, slots) = priors.as_ref().map_or(([0.0; MAX_CATEGORY_SLOTS], 0), read_priors);
                    Params {
                        as_of: time(as_of),
                        cut30: time(as_of + 1),
                        cut90: time(as_of + 2),
                        dedupe: arg(as_of + 4).is_some_and(|d| d.value() != 0) as u64,
                        slots: slots as u64,
                        priors,
                    }
                }
                None => Params { as_of: 0, cut30: 0, cut90: 0, dedupe: 0, slots: 0, priors: [0.0; MAX_CATEGORY_SLOTS] },
            };
            new_state(agg_context(fcinfo), params, 8)
        }
    };
    if let Some(row) = order_row(fcinfo, a) {
        push(&mut *ptr, &[row]);
    }
    Internal::from(Some(pg_sys::Datum::from(ptr)))
}

/// The order of a transition call, None when it is not usable: a NULL time or amount, or (0.2.0)
/// an amount that is NaN or infinite (cheaper to check here than in the scan's predicate). A user
/// with no usable order finalizes to NULL.
unsafe fn order_row(fcinfo: pg_sys::FunctionCallInfo, a: &Args) -> Option<OrderRow> {
    // all by-value Datums on the 64-bit platforms pgrx supports: timestamptz, timestamp and int8
    // as i64, float8 as its bits, int4 and bool in the low bits
    let arg = |n: usize| pg_getarg_datum(fcinfo, n);
    let t = arg(a.t)?.value() as i64;
    let amount = f64::from_bits(arg(a.amount)?.value() as u64);
    let (hour, weekend) = match a.local {
        Local::Time(local) => {
            if !amount.is_finite() {
                return None;
            }
            order_features::hour_and_weekend(arg(local)?.value() as i64)
        }
        Local::HourWeekend(hour, weekend) => {
            let hour = arg(hour).map_or(0, |d| (d.value() as i32).clamp(0, 23));
            (hour as u8, arg(weekend).is_some_and(|d| d.value() != 0))
        }
    };
    let slot = arg(a.slot).map(|d| d.value() as i32);
    let category_hash = arg(a.category_hash).map(|d| d.value() as i64);
    Some(OrderRow::new(t, amount, category_hash, slot_of(slot), hour, weekend))
}

fn slot_of(slot: Option<i32>) -> u16 {
    slot.unwrap_or(0).clamp(0, u16::MAX as i32) as u16
}

#[pg_extern(sql = r#"
CREATE FUNCTION "_segment_order_features_sfunc"(
	"state" internal,
	"t" timestamp with time zone,
	"local" timestamp,
	"amount" double precision,
	"slot" INT,
	"category_hash" bigint,
	"as_of" timestamp with time zone,
	"cut30" timestamp with time zone,
	"cut90" timestamp with time zone,
	"priors" double precision[],
	"dedupe" bool
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'order_transition_wrapper';
"#)]
fn order_transition(fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    unsafe { transition(fcinfo, &ARGS) }
}

/// The transition of 0.1.0's signature (hour and weekend computed by SQL, non-finite amounts left
/// out by the scan), whose SQL objects stay installed until `ALTER EXTENSION pg_segment UPDATE`
/// drops them; `source::order_features_aggregate` tells the statements which one to call.
#[pg_extern(sql = false)]
fn sfunc(fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    unsafe { transition(fcinfo, &LEGACY_ARGS) }
}

#[pg_extern(name = "_segment_order_features_combine", immutable, parallel_safe)]
fn combine(mut a: Internal, mut b: Internal, fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    unsafe {
        match (state_of(&mut a), state_of(&mut b)) {
            (None, None) => Internal::from(None),
            (Some(_), None) => a,
            (None, Some(b)) => {
                // the result must live in the aggregate's context: copy
                let b = &*b;
                let s = new_state(agg_context(fcinfo), b.params, b.len);
                push(&mut *s, std::slice::from_raw_parts(b.rows, b.len));
                Internal::from(Some(pg_sys::Datum::from(s)))
            }
            (Some(x), Some(y)) => {
                let y = &*y;
                push(&mut *x, std::slice::from_raw_parts(y.rows, y.len));
                a
            }
        }
    }
}

/// Serialized form: the params, then the rows, as raw bytes (both are `repr(C)` plain data, and
/// serialized states never leave the server that wrote them).
#[pg_extern(name = "_segment_order_features_serialize", immutable, parallel_safe, strict)]
fn serialize(mut state: Internal) -> Vec<u8> {
    unsafe {
        let Some(s) = state_of(&mut state) else {
            return Vec::new();
        };
        let s = &*s;
        let mut out = Vec::with_capacity(size_of::<Params>() + s.len * size_of::<OrderRow>());
        out.extend_from_slice(std::slice::from_raw_parts(
            (&s.params as *const Params).cast::<u8>(),
            size_of::<Params>(),
        ));
        out.extend_from_slice(std::slice::from_raw_parts(s.rows.cast::<u8>(), s.len * size_of::<OrderRow>()));
        out
    }
}

/// Deserialized states live in the current (per-input-tuple) memory context, where PostgreSQL
/// calls deserialization functions: the combine function copies what it keeps into the aggregate's
/// context. (Allocating them in the aggregate's context kept every worker's partial state until the
/// end of a hashed finalize step: twice the orders in memory at a million customers.)
#[pg_extern(name = "_segment_order_features_deserialize", immutable, parallel_safe, strict)]
fn deserialize(bytes: &[u8], _state: Internal) -> Internal {
    unsafe {
        if bytes.len() < size_of::<Params>()
            || !(bytes.len() - size_of::<Params>()).is_multiple_of(size_of::<OrderRow>())
        {
            error!("pg_segment: corrupt order features state ({} bytes)", bytes.len());
        }
        let params = std::ptr::read_unaligned(bytes.as_ptr().cast::<Params>());
        let n = (bytes.len() - size_of::<Params>()) / size_of::<OrderRow>();
        let s = new_state(pg_sys::CurrentMemoryContext, params, n);
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr().add(size_of::<Params>()),
            (*s).rows.cast::<u8>(),
            n * size_of::<OrderRow>(),
        );
        (*s).len = n;
        Internal::from(Some(pg_sys::Datum::from(s)))
    }
}

/// `[duplicates, order features...]` (see `core::order_features::compute`).
#[pg_extern(name = "_segment_order_features_final", immutable, parallel_safe)]
fn finalize(mut state: Internal) -> Option<Vec<f64>> {
    unsafe {
        let s = &mut *state_of(&mut state)?;
        if s.len == 0 {
            return None;
        }
        let rows = std::slice::from_raw_parts_mut(s.rows, s.len);
        let (duplicates, mut features) = order_features::compute(rows, &s.params);
        features.insert(0, duplicates);
        Some(features)
    }
}

extension_sql!(
    r#"
CREATE AGGREGATE _segment_order_features(
    t timestamptz, local timestamp, amount float8, slot int, category_hash int8,
    as_of timestamptz, cut30 timestamptz, cut90 timestamptz, priors float8[], dedupe bool)
(
    SFUNC = _segment_order_features_sfunc,
    STYPE = internal,
    SSPACE = 1024,
    FINALFUNC = _segment_order_features_final,
    COMBINEFUNC = _segment_order_features_combine,
    SERIALFUNC = _segment_order_features_serialize,
    DESERIALFUNC = _segment_order_features_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE _segment_order_features(timestamptz, timestamp, float8, int, int8, timestamptz, timestamptz, timestamptz, float8[], bool) IS
    'pg_segment internal: [duplicates, order features...] of one user''s usable orders (NULL without any)';
"#,
    name = "order_features_aggregate",
    requires = [order_transition, combine, serialize, deserialize, finalize]
);

// ---------------------------------------------------------------------------------------------
// `_segment_order_rows(t, local, amount, slot, category_hash)`: a user's usable orders as the
// bytes live mode stores (`core::live_state`), sorted; the same transition, combine and
// serialization as `_segment_order_features`, without its parameters.

#[pg_extern(sql = r#"
CREATE FUNCTION "_segment_order_rows_sfunc"(
	"state" internal,
	"t" timestamp with time zone,
	"local" timestamp,
	"amount" double precision,
	"slot" INT,
	"category_hash" bigint
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rows_transition_wrapper';
"#)]
fn rows_transition(fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    unsafe { transition(fcinfo, &ROWS_ARGS) }
}

/// The sorted rows (empty when none was usable: a group exists, its orders are unusable).
#[pg_extern(name = "_segment_order_rows_final", immutable, parallel_safe)]
fn rows_final(mut state: Internal) -> Vec<u8> {
    unsafe {
        let Some(s) = state_of(&mut state) else {
            return Vec::new();
        };
        let s = &mut *s;
        if s.len == 0 {
            return Vec::new();
        }
        let rows = std::slice::from_raw_parts_mut(s.rows, s.len);
        order_features::sort_rows(rows);
        live_state::encode_rows(rows)
    }
}

/// A user's events as live mode stores them (`core::live_state::Tally`), from what the statement
/// counted: the events at or before `as_of` by kind, the latest of them, and the later ones
/// (`pending_t`, `pending_kind`: 1 view, 2 cart, 3 search, else other).
#[allow(clippy::too_many_arguments)]
#[pg_extern(name = "_segment_event_tally", immutable, parallel_safe)]
fn event_tally(
    as_of: TimestampWithTimeZone,
    events: i64,
    views: i64,
    carts: i64,
    searches: i64,
    last: Option<TimestampWithTimeZone>,
    pending_t: Option<Vec<Option<TimestampWithTimeZone>>>,
    pending_kind: Option<Vec<Option<i32>>>,
) -> Vec<u8> {
    let micros = |t: TimestampWithTimeZone| i64::from(t);
    let pending = pending_t
        .unwrap_or_default()
        .into_iter()
        .zip(pending_kind.unwrap_or_default())
        .filter_map(|(t, k)| Some((micros(t?), live_state::Kind::from_code(k.unwrap_or(0)))))
        .collect();
    live_state::Tally { as_of: micros(as_of), events, views, carts, searches, last: last.map(micros), pending }.encode()
}

extension_sql!(
    r#"
CREATE AGGREGATE _segment_order_rows(t timestamptz, local timestamp, amount float8, slot int, category_hash int8)
(
    SFUNC = _segment_order_rows_sfunc,
    STYPE = internal,
    SSPACE = 1024,
    FINALFUNC = _segment_order_rows_final,
    COMBINEFUNC = _segment_order_features_combine,
    SERIALFUNC = _segment_order_features_serialize,
    DESERIALFUNC = _segment_order_features_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE _segment_order_rows(timestamptz, timestamp, float8, int, int8) IS
    'pg_segment internal: one user''s usable orders, sorted, as live mode stores them';
"#,
    name = "order_rows_aggregate",
    requires = [rows_transition, combine, serialize, deserialize, rows_final]
);

// ---------------------------------------------------------------------------------------------
// `_segment_kmeans_step(embedding, centroids, k)`: one Lloyd step as an aggregate. Each row is
// added to its nearest centroid's sum; the result is, per centroid, `[users, sum...]`, then the
// total squared distance (inertia). Partial sums combine by addition, so the step runs in
// parallel workers (or, distributed, on each node) and only k x (dims + 1) numbers travel.

#[repr(C)]
struct StepHeader {
    k: u64,
    dims: u64,
}

/// Header, then `centroids` (k x dims) and `acc` (k x (dims + 1) + 1), all in one palloc'd block.
struct Step {
    header: *mut StepHeader,
}

impl Step {
    unsafe fn alloc(cxt: pg_sys::MemoryContext, k: usize, dims: usize) -> Step {
        let bytes = size_of::<StepHeader>() + (k * dims + k * (dims + 1) + 1) * size_of::<f64>();
        let header = pg_sys::MemoryContextAllocZero(cxt, bytes) as *mut StepHeader;
        header.write(StepHeader { k: k as u64, dims: dims as u64 });
        Step { header }
    }

    unsafe fn from_internal(internal: &mut Internal) -> Option<Step> {
        internal.get_mut::<StepHeader>().map(|h| Step { header: h as *mut StepHeader })
    }

    fn shape(&self) -> (usize, usize) {
        unsafe { ((*self.header).k as usize, (*self.header).dims as usize) }
    }

    unsafe fn floats(&mut self) -> &mut [f64] {
        let (k, d) = self.shape();
        std::slice::from_raw_parts_mut(self.header.add(1).cast::<f64>(), k * d + k * (d + 1) + 1)
    }

    unsafe fn values(&self) -> &[f64] {
        let (k, d) = self.shape();
        std::slice::from_raw_parts(self.header.add(1).cast::<f64>(), k * d + k * (d + 1) + 1)
    }

    fn bytes(&self) -> usize {
        let (k, d) = self.shape();
        size_of::<StepHeader>() + (k * d + k * (d + 1) + 1) * size_of::<f64>()
    }
}

/// Reads its arguments from `fcinfo` (like the order features' transition): the centroids, which
/// only the first row needs, are not converted for every row.
#[pg_extern(sql = r#"
CREATE FUNCTION "_segment_kmeans_step_sfunc"(
	"state" internal,
	"embedding" real[],
	"centroids" double precision[],
	"k" INT
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'step_sfunc_wrapper';
"#)]
fn step_sfunc(fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    unsafe {
        let mut state: Internal = pg_getarg(fcinfo, 0).unwrap_or_default();
        let Some(e) = pg_getarg::<pgrx::datum::Array<f32>>(fcinfo, 1) else {
            return state;
        };
        let e: Vec<f64> = e.iter().map(|v| v.map_or(f64::NAN, f64::from)).collect();
        let mut step = match Step::from_internal(&mut state) {
            Some(s) => s,
            None => {
                let centroids: Vec<f64> = pg_getarg::<pgrx::datum::Array<f64>>(fcinfo, 2)
                    .map(|c| c.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
                    .unwrap_or_default();
                let k = pg_getarg::<i32>(fcinfo, 3).unwrap_or(1).max(1) as usize;
                if centroids.len() != k * e.len() || centroids.iter().any(|v| !v.is_finite()) {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!(
                            "pg_segment: the centroids must be {} finite values (k = {k}, {} dimensions), not {}",
                            k * e.len(),
                            e.len(),
                            centroids.len()
                        )
                    );
                }
                let mut s = Step::alloc(agg_context(fcinfo), k, e.len());
                s.floats()[..centroids.len()].copy_from_slice(&centroids);
                s
            }
        };
        let (k, d) = step.shape();
        if e.len() != d || e.iter().any(|v| !v.is_finite()) {
            return Internal::from(Some(pg_sys::Datum::from(step.header)));
        }
        let f = step.floats();
        let (cents, acc) = f.split_at_mut(k * d);
        let (c, d2) = crate::core::clustering::nearest_row(cents, d, &e);
        acc[c * (d + 1)] += 1.0;
        for (j, v) in e.iter().enumerate() {
            acc[c * (d + 1) + 1 + j] += v;
        }
        acc[k * (d + 1)] += d2;
        Internal::from(Some(pg_sys::Datum::from(step.header)))
    }
}

#[pg_extern(name = "_segment_kmeans_step_combine", immutable, parallel_safe)]
fn step_combine(mut a: Internal, mut b: Internal, fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    unsafe {
        match (Step::from_internal(&mut a), Step::from_internal(&mut b)) {
            (None, None) => Internal::from(None),
            (Some(_), None) => a,
            (None, Some(y)) => {
                let (k, d) = y.shape();
                let mut s = Step::alloc(agg_context(fcinfo), k, d);
                s.floats().copy_from_slice(y.values());
                Internal::from(Some(pg_sys::Datum::from(s.header)))
            }
            (Some(mut x), Some(y)) => {
                if x.shape() != y.shape() {
                    error!("pg_segment: k-means partial states of different shapes");
                }
                let (k, d) = x.shape();
                for (p, q) in x.floats()[k * d..].iter_mut().zip(&y.values()[k * d..]) {
                    *p += q;
                }
                a
            }
        }
    }
}

#[pg_extern(name = "_segment_kmeans_step_serialize", immutable, parallel_safe, strict)]
fn step_serialize(mut state: Internal) -> Vec<u8> {
    unsafe {
        let Some(s) = Step::from_internal(&mut state) else {
            return Vec::new();
        };
        std::slice::from_raw_parts(s.header.cast::<u8>(), s.bytes()).to_vec()
    }
}

/// In the current memory context, like [`deserialize`].
#[pg_extern(name = "_segment_kmeans_step_deserialize", immutable, parallel_safe, strict)]
fn step_deserialize(bytes: &[u8], _state: Internal) -> Internal {
    unsafe {
        if bytes.len() < size_of::<StepHeader>() {
            error!("pg_segment: corrupt k-means state ({} bytes)", bytes.len());
        }
        let h = std::ptr::read_unaligned(bytes.as_ptr().cast::<StepHeader>());
        let s = Step::alloc(pg_sys::CurrentMemoryContext, h.k as usize, h.dims as usize);
        if bytes.len() != s.bytes() {
            error!("pg_segment: corrupt k-means state ({} bytes)", bytes.len());
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), s.header.cast::<u8>(), bytes.len());
        Internal::from(Some(pg_sys::Datum::from(s.header)))
    }
}

/// Per centroid `[users, sum of each dimension...]`, then the inertia.
#[pg_extern(name = "_segment_kmeans_step_final", immutable, parallel_safe)]
fn step_final(mut state: Internal) -> Option<Vec<f64>> {
    unsafe {
        let s = Step::from_internal(&mut state)?;
        let (k, d) = s.shape();
        Some(s.values()[k * d..].to_vec())
    }
}

extension_sql!(
    r#"
CREATE AGGREGATE _segment_kmeans_step(embedding real[], centroids float8[], k int)
(
    SFUNC = _segment_kmeans_step_sfunc,
    STYPE = internal,
    FINALFUNC = _segment_kmeans_step_final,
    COMBINEFUNC = _segment_kmeans_step_combine,
    SERIALFUNC = _segment_kmeans_step_serialize,
    DESERIALFUNC = _segment_kmeans_step_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE _segment_kmeans_step(real[], float8[], int) IS
    'pg_segment internal: one k-means (Lloyd) step: per centroid [users, sums...], then the inertia';
"#,
    name = "kmeans_step_aggregate",
    requires = [step_sfunc, step_combine, step_serialize, step_deserialize, step_final]
);
