//! The new rows of an INSERT, read straight from the statement's transition table and turned
//! into the parts of the touched users' live states (`core::live_state`): what the statements
//! `features::order_rows_select` and `features::event_tally_select` compute over `new_rows`,
//! without planning and running them for every single-row INSERT. Each SQL cast, `AT TIME ZONE`,
//! `lower()` and `hashtextextended()` of those statements is the same function called here.
//! A source this does not cover (a cast needing more than its value, a nondeterministic
//! collation) returns None, and the caller runs the statement instead.

use std::collections::HashMap;

use pgrx::pg_sys::{self, Datum, Oid};

use crate::core::features::{unquote_ident, CART_TYPES, SEARCH_TYPES, VIEW_TYPES};
use crate::core::live_state::{self, Kind};
use crate::core::order_features::{self, OrderRow};

/// How a column's value becomes the type a statement casts it to (`value::type`).
enum Cast {
    Same,
    Func(Oid),
    ViaIo { output: Oid, input: Oid, ioparam: Oid },
}

/// The explicit cast from `from` to `to`, when it is one this module can call.
unsafe fn cast(from: Oid, to: Oid) -> Option<Cast> {
    if from == to {
        return Some(Cast::Same);
    }
    let mut func = pg_sys::InvalidOid;
    match pg_sys::find_coercion_pathway(to, from, pg_sys::CoercionContext::COERCION_EXPLICIT, &mut func) {
        pg_sys::CoercionPathType::COERCION_PATH_RELABELTYPE => Some(Cast::Same),
        pg_sys::CoercionPathType::COERCION_PATH_FUNC if pg_sys::get_func_nargs(func) == 1 => Some(Cast::Func(func)),
        pg_sys::CoercionPathType::COERCION_PATH_COERCEVIAIO => {
            let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
            pg_sys::getTypeOutputInfo(from, &mut output, &mut varlena);
            let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
            pg_sys::getTypeInputInfo(to, &mut input, &mut ioparam);
            Some(Cast::ViaIo { output, input, ioparam })
        }
        _ => None,
    }
}

impl Cast {
    /// The text form of `d` under this cast to text: an I/O cast's output function gives it
    /// without making a `text` first.
    unsafe fn text(&self, d: Datum) -> String {
        match self {
            Cast::ViaIo { output, .. } => {
                let c = pg_sys::OidOutputFunctionCall(*output, d);
                std::ffi::CStr::from_ptr(c).to_string_lossy().into_owned()
            }
            _ => text_of(self.apply(d)),
        }
    }

    unsafe fn apply(&self, d: Datum) -> Datum {
        match self {
            Cast::Same => d,
            Cast::Func(f) => pg_sys::OidFunctionCall1Coll(*f, pg_sys::InvalidOid, d),
            Cast::ViaIo { output, input, ioparam } => {
                let text = pg_sys::OidOutputFunctionCall(*output, d);
                pg_sys::OidInputFunctionCall(*input, text, *ioparam, -1)
            }
        }
    }
}

/// A column of the transition table with its cast.
struct Column {
    /// 0-based
    index: usize,
    cast: Cast,
    /// The collation `(column)::text` has.
    collation: Oid,
}

unsafe fn column(desc: pg_sys::TupleDesc, quoted: &str, to: Oid) -> Option<Column> {
    let name = unquote_ident(quoted);
    let index = (0..(*desc).natts as usize).find(|&i| {
        let a = &*(*desc).attrs.as_ptr().add(i);
        !a.attisdropped && pgrx::name_data_to_str(&a.attname) == name
    })?;
    let a = &*(*desc).attrs.as_ptr().add(index);
    let collation = if a.attcollation == pg_sys::InvalidOid { pg_sys::DEFAULT_COLLATION_OID } else { a.attcollation };
    if to == pg_sys::TEXTOID && !pg_sys::get_collation_isdeterministic(collation) {
        return None;
    }
    Some(Column { index, cast: cast(a.atttypid, to)?, collation })
}

/// The transition table's rows, each as `(values, nulls)` of the relation's columns.
unsafe fn for_each_row(data: &pg_sys::TriggerData, mut f: impl FnMut(&[Datum], &[bool])) {
    let store = data.tg_newtable;
    let desc = (*data.tg_relation).rd_att;
    let natts = (*desc).natts;
    let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
    // a read pointer of our own, as a scan of the transition table takes one
    let pointer = pg_sys::tuplestore_alloc_read_pointer(store, 0);
    pg_sys::tuplestore_select_read_pointer(store, pointer);
    pg_sys::tuplestore_rescan(store);
    while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
        pg_sys::slot_getsomeattrs_int(slot, natts);
        let values = std::slice::from_raw_parts((*slot).tts_values, natts as usize);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts as usize);
        f(values, nulls);
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
}

/// The bytes of a `text` datum (valid while the datum is).
unsafe fn text_bytes<'a>(d: Datum) -> &'a [u8] {
    let t = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr::<pg_sys::varlena>());
    std::slice::from_raw_parts(pgrx::vardata_any(t) as *const u8, pgrx::varsize_any_exhdr(t))
}

unsafe fn text_of(d: Datum) -> String {
    String::from_utf8_lossy(text_bytes(d)).into_owned()
}

fn text_datum(s: &str) -> Datum {
    // SAFETY: a palloc'd text copy of `s`.
    unsafe { Datum::from(pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), s.len() as i32)) }
}

/// Keys in order of first appearance, with what each collected.
struct ByUser<T> {
    order: Vec<String>,
    parts: HashMap<String, T>,
}

impl<T: Default> ByUser<T> {
    fn new() -> Self {
        ByUser { order: Vec::new(), parts: HashMap::new() }
    }

    fn entry(&mut self, key: String) -> &mut T {
        if !self.parts.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.parts.entry(key).or_default()
    }
}

/// `(user key as text, orders part)` of each user with new rows that are not skipped, as
/// `features::order_rows_select` over `new_rows` returns them.
///
/// # Safety
/// `data` is an AFTER INSERT statement trigger's data with a new transition table.
pub unsafe fn order_parts(
    data: &pg_sys::TriggerData,
    user: &str,
    time: &str,
    amount: &str,
    category: Option<&str>,
    slots: &[Option<&str>],
    timezone: &str,
) -> Option<Vec<(String, Vec<u8>)>> {
    let desc = (*data.tg_relation).rd_att;
    let user = column(desc, user, pg_sys::TEXTOID)?;
    let time = column(desc, time, pg_sys::TIMESTAMPTZOID)?;
    let amount = column(desc, amount, pg_sys::FLOAT8OID)?;
    // a category matters only with category slots (else the statement passes NULLs)
    let category = match category {
        Some(c) if !slots.is_empty() => Some(column(desc, c, pg_sys::TEXTOID)?),
        _ => None,
    };
    let zone = text_datum(timezone);
    let mut users: ByUser<Vec<OrderRow>> = ByUser::new();
    for_each_row(data, |values, nulls| {
        if nulls[user.index] || nulls[time.index] || nulls[amount.index] {
            return;
        }
        let t = time.cast.apply(values[time.index]);
        let a = f64::from_bits(amount.cast.apply(values[amount.index]).value() as u64);
        let key = user.cast.text(values[user.index]);
        // the transition skips what is not a finite amount (its group still exists)
        let rows = users.entry(key);
        if !a.is_finite() {
            return;
        }
        let local = pg_sys::OidFunctionCall2Coll(
            Oid::from(pg_sys::F_TIMEZONE_TEXT_TIMESTAMPTZ),
            pg_sys::InvalidOid,
            zone,
            t,
        );
        let (hour, weekend) = order_features::hour_and_weekend(local.value() as i64);
        let (slot, hash) = match &category {
            Some(c) if !nulls[c.index] => {
                let text = c.cast.apply(values[c.index]);
                let name = text_bytes(text);
                let slot = slots.iter().position(|s| s.map(str::as_bytes) == Some(name)).map_or(0, |i| i + 1);
                let hash = pg_sys::OidFunctionCall2Coll(
                    Oid::from(pg_sys::F_HASHTEXTEXTENDED),
                    c.collation,
                    text,
                    Datum::from(0i64),
                );
                (slot as u16, Some(hash.value() as i64))
            }
            _ => (0, None),
        };
        rows.push(OrderRow::new(t.value() as i64, a, hash, slot, hour, weekend));
    });
    Some(
        users
            .order
            .into_iter()
            .map(|k| {
                let mut rows = users.parts.remove(&k).unwrap_or_default();
                order_features::sort_rows(&mut rows);
                (k, live_state::encode_rows(&rows))
            })
            .collect(),
    )
}

/// `(user key as text, events part)` of each user with new events, as
/// `features::event_tally_select` over `new_rows` returns them (tallied as of `as_of`, now()).
///
/// # Safety
/// As for [`order_parts`].
pub unsafe fn event_parts(
    data: &pg_sys::TriggerData,
    user: &str,
    time: &str,
    event_type: &str,
    as_of: i64,
) -> Option<Vec<(String, Vec<u8>)>> {
    let desc = (*data.tg_relation).rd_att;
    let user = column(desc, user, pg_sys::TEXTOID)?;
    let time = column(desc, time, pg_sys::TIMESTAMPTZOID)?;
    let kind = column(desc, event_type, pg_sys::TEXTOID)?;
    let mut users: ByUser<Vec<(i64, Kind)>> = ByUser::new();
    for_each_row(data, |values, nulls| {
        if nulls[user.index] || nulls[time.index] {
            return;
        }
        let t = time.cast.apply(values[time.index]).value() as i64;
        let k = if nulls[kind.index] {
            Kind::Other
        } else {
            let lower = pg_sys::OidFunctionCall1Coll(
                Oid::from(pg_sys::F_LOWER_TEXT),
                kind.collation,
                kind.cast.apply(values[kind.index]),
            );
            let name = text_of(lower);
            let is = |list: &[&str]| list.contains(&name.as_str());
            if is(VIEW_TYPES) {
                Kind::View
            } else if is(CART_TYPES) {
                Kind::Cart
            } else if is(SEARCH_TYPES) {
                Kind::Search
            } else {
                Kind::Other
            }
        };
        users.entry(user.cast.text(values[user.index])).push((t, k));
    });
    Some(
        users
            .order
            .into_iter()
            .map(|k| {
                let events = users.parts.remove(&k).unwrap_or_default();
                (k, live_state::tally(as_of, events).encode())
            })
            .collect(),
    )
}
