//! The async queue: one row per touched user (`segment.<model>_queue`, no index, duplicates
//! allowed), appended by the live triggers and claimed, de-duplicated and deleted by
//! `segment_process`. Appending without a key check is what keeps an async writer's INSERT
//! almost as fast as without pg_segment; a change that commits after a `segment_process` took
//! its snapshot leaves its own row behind for the next run, so nothing is missed.
//!
//! Single-row INSERTs are the hot path, so the INSERT trigger is a row trigger in Rust that
//! writes the queue row straight into the heap: no SPI, no executor, no transition table.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgTupleDesc, PgTriggerError};

use crate::core::error::{ErrorKind, SegError};
use crate::core::features::quote_ident;
use crate::pg::error::OrRaise;

/// The statement appending the users `keys` selects to `queue` (a quoted table name in schema
/// `segment`); used by the statement triggers (UPDATE, DELETE, TRUNCATE, the sync fallback).
pub fn append(queue: &str, keys: &str) -> String {
    format!("INSERT INTO segment.{queue} (user_id) {keys}")
}

/// The SQL claiming up to `$1` users, oldest entry first, with every entry of theirs that no
/// other `segment_process` holds (rows locked by another are skipped, never waited for),
/// deleting the entries and returning the users as text.
pub fn claim(queue: &str) -> String {
    format!(
        "WITH first AS ( \
           SELECT user_id FROM segment.{queue} ORDER BY enqueued_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
         theirs AS ( \
           SELECT ctid FROM segment.{queue} WHERE user_id IN (SELECT user_id FROM first) FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
           DELETE FROM segment.{queue} WHERE ctid = ANY (ARRAY(SELECT ctid FROM theirs)) RETURNING user_id) \
         SELECT DISTINCT user_id::text FROM claimed"
    )
}

/// Row trigger for AFTER INSERT in async mode. Arguments: the queue table's name (in schema
/// `segment`) and the user column of the table it is on. A NULL key is skipped, as the batch
/// path skips it.
#[pg_trigger]
fn _segment_enqueue<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let args = trigger.extra_args()?;
    let data = trigger.trigger_data();
    let appended = match args.as_slice() {
        [queue, column] if !data.tg_trigtuple.is_null() => {
            // SAFETY: PostgreSQL called us as a row trigger: tg_relation is open and locked and
            // tg_trigtuple is its new row, valid for this call.
            unsafe { append_row(data.tg_relation, data.tg_trigtuple, queue, column) }
        }
        _ => Err(SegError::invalid(
            "_segment_enqueue must be an AFTER INSERT row trigger with the queue table and the user column as arguments",
        )),
    };
    appended.or_raise();
    Ok(None)
}

fn missing(what: String) -> SegError {
    SegError::new(ErrorKind::UndefinedObject, what).hint("SELECT segment_live(model, 'async') re-installs the triggers")
}

/// Appends `(key, now())` to `segment.<queue>`, `key` being `column` of `row` (a row of `rel`).
///
/// # Safety
/// `rel` must be an open relation and `row` one of its tuples.
unsafe fn append_row(rel: pg_sys::Relation, row: pg_sys::HeapTuple, queue: &str, column: &str) -> Result<(), SegError> {
    let name = |s: &str| CString::new(s).map_err(|_| SegError::invalid(format!("invalid name {s:?}")));
    let attnum = pg_sys::get_attnum((*rel).rd_id, name(column)?.as_ptr());
    if attnum <= 0 {
        return Err(missing(format!("the live trigger's user column {} does not exist", quote_ident(column))));
    }
    let source_desc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
    let source_type = source_desc.get(attnum as usize - 1).map(|a| a.atttypid).unwrap_or_default();
    let mut is_null = false;
    let key = pg_sys::heap_getattr(row, attnum as i32, (*rel).rd_att, &mut is_null);
    if is_null {
        return Ok(());
    }
    let schema = pg_sys::get_namespace_oid(c"segment".as_ptr(), false);
    let queue_oid = pg_sys::get_relname_relid(name(queue)?.as_ptr(), schema);
    if queue_oid == pg_sys::InvalidOid {
        return Err(missing(format!("the live queue segment.{} does not exist", quote_ident(queue))));
    }
    let queue_rel = pg_sys::table_open(queue_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    let desc = PgTupleDesc::from_pg_unchecked((*queue_rel).rd_att);
    let mut values = vec![pg_sys::Datum::from(0); desc.len()];
    let mut nulls = vec![true; desc.len()];
    for (i, att) in desc.iter().enumerate() {
        if att.attisdropped {
            continue;
        }
        match att.name() {
            "user_id" => {
                values[i] = convert(key, source_type, att.atttypid, att.atttypmod);
                nulls[i] = false;
            }
            "enqueued_at" => {
                values[i] = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
                nulls[i] = false;
            }
            _ => {}
        }
    }
    if (*(*queue_rel).rd_rel).relhasindex {
        // Someone indexed the queue: a plain INSERT keeps the indexes right.
        let user = desc.iter().position(|a| a.name() == "user_id").unwrap_or(0);
        let typ = desc.get(user).map(|a| a.atttypid).unwrap_or_default();
        pg_sys::table_close(queue_rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        let arg = pgrx::datum::DatumWithOid::new(values[user], typ);
        Spi::run_with_args(&format!("INSERT INTO segment.{} (user_id) VALUES ($1)", quote_ident(queue)), &[arg])
            .map_err(crate::pg::error::from_spi)?;
        return Ok(());
    }
    let tuple = pg_sys::heap_form_tuple((*queue_rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::simple_heap_insert(queue_rel, tuple);
    pg_sys::heap_freetuple(tuple);
    // The lock stays until the transaction ends, as for an INSERT.
    pg_sys::table_close(queue_rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    Ok(())
}

/// `value` of type `from` as type `to`: the same datum when the types agree (always, unless
/// someone altered the source column after turning live mode on), else through its text form.
unsafe fn convert(value: pg_sys::Datum, from: pg_sys::Oid, to: pg_sys::Oid, typmod: i32) -> pg_sys::Datum {
    if from == to {
        return value;
    }
    let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
    pg_sys::getTypeOutputInfo(from, &mut output, &mut varlena);
    let text = pg_sys::OidOutputFunctionCall(output, value);
    let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
    pg_sys::getTypeInputInfo(to, &mut input, &mut ioparam);
    pg_sys::OidInputFunctionCall(input, text, ioparam, typmod)
}

extension_sql!(
    "REVOKE ALL ON FUNCTION _segment_enqueue() FROM PUBLIC;",
    name = "enqueue_revoke",
    requires = [_segment_enqueue]
);
