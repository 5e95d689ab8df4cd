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

use pgrx::datum::{Timestamp, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::Internal;

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

/// What every order of a statement shares (the aggregate's direct arguments after the order's).
struct Shared<'a> {
    as_of: TimestampWithTimeZone,
    cut30: TimestampWithTimeZone,
    cut90: TimestampWithTimeZone,
    priors: &'a pgrx::datum::Array<'a, f64>,
    dedupe: bool,
}

/// The transition: the state (created at the first row), with `row` appended when it is usable.
unsafe fn transition(mut state: Internal, row: Option<OrderRow>, shared: Shared, fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    let ptr = match state_of(&mut state) {
        Some(s) => s,
        None => {
            let (priors, slots) = read_priors(shared.priors);
            let params = Params {
                as_of: shared.as_of.into_inner(),
                cut30: shared.cut30.into_inner(),
                cut90: shared.cut90.into_inner(),
                dedupe: shared.dedupe as u64,
                slots: slots as u64,
                priors,
            };
            new_state(agg_context(fcinfo), params, 8)
        }
    };
    if let Some(row) = row {
        push(&mut *ptr, &[row]);
    }
    Internal::from(Some(pg_sys::Datum::from(ptr)))
}

fn slot_of(slot: Option<i32>) -> u16 {
    slot.unwrap_or(0).clamp(0, u16::MAX as i32) as u16
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(name = "_segment_order_features_sfunc", immutable, parallel_safe)]
fn order_transition(
    state: Internal,
    t: TimestampWithTimeZone,
    local: Timestamp,
    amount: f64,
    slot: Option<i32>,
    category_hash: Option<i64>,
    as_of: TimestampWithTimeZone,
    cut30: TimestampWithTimeZone,
    cut90: TimestampWithTimeZone,
    priors: pgrx::datum::Array<f64>,
    dedupe: bool,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    // NaN and infinite amounts are not usable orders (cheaper here than in the scan's
    // predicate); a user with no usable order finalizes to NULL
    let row = amount.is_finite().then(|| {
        let (hour, weekend) = order_features::hour_and_weekend(local.into_inner());
        OrderRow::new(t.into_inner(), amount, category_hash, slot_of(slot), hour, weekend)
    });
    unsafe { transition(state, row, Shared { as_of, cut30, cut90, priors: &priors, dedupe }, fcinfo) }
}

/// The transition of 0.1.0's signature (hour and weekend computed by SQL, non-finite amounts left
/// out by the scan), whose SQL objects stay installed until `ALTER EXTENSION pg_segment UPDATE`
/// drops them; `source::order_features_aggregate` tells the statements which one to call.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn sfunc(
    state: Internal,
    t: TimestampWithTimeZone,
    amount: f64,
    slot: Option<i32>,
    category_hash: Option<i64>,
    hour: i32,
    weekend: bool,
    as_of: TimestampWithTimeZone,
    cut30: TimestampWithTimeZone,
    cut90: TimestampWithTimeZone,
    priors: pgrx::datum::Array<f64>,
    dedupe: bool,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let row = OrderRow::new(t.into_inner(), amount, category_hash, slot_of(slot), hour.clamp(0, 23) as u8, weekend);
    unsafe { transition(state, Some(row), Shared { as_of, cut30, cut90, priors: &priors, dedupe }, fcinfo) }
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
        let Some(s) = state_of(&mut state) else { return Vec::new() };
        let s = &*s;
        let mut out = Vec::with_capacity(size_of::<Params>() + s.len * size_of::<OrderRow>());
        out.extend_from_slice(std::slice::from_raw_parts((&s.params as *const Params).cast::<u8>(), size_of::<Params>()));
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
        if bytes.len() < size_of::<Params>() || (bytes.len() - size_of::<Params>()) % size_of::<OrderRow>() != 0 {
            error!("pg_segment: corrupt order features state ({} bytes)", bytes.len());
        }
        let params = std::ptr::read_unaligned(bytes.as_ptr().cast::<Params>());
        let n = (bytes.len() - size_of::<Params>()) / size_of::<OrderRow>();
        let s = new_state(pg_sys::CurrentMemoryContext, params, n);
        std::ptr::copy_nonoverlapping(bytes.as_ptr().add(size_of::<Params>()), (*s).rows.cast::<u8>(), n * size_of::<OrderRow>());
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

#[pg_extern(name = "_segment_kmeans_step_sfunc", immutable, parallel_safe)]
fn step_sfunc(
    mut state: Internal,
    embedding: Option<Vec<Option<f32>>>,
    centroids: Vec<f64>,
    k: i32,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    unsafe {
        let Some(e) = embedding else { return state };
        let e: Vec<f64> = e.into_iter().map(|v| v.map_or(f64::NAN, f64::from)).collect();
        let mut step = match Step::from_internal(&mut state) {
            Some(s) => s,
            None => {
                let k = k.max(1) as usize;
                if centroids.len() != k * e.len() {
                    error!("pg_segment: {} centroid values for k = {k} and {} dimensions", centroids.len(), e.len());
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
        let Some(s) = Step::from_internal(&mut state) else { return Vec::new() };
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
