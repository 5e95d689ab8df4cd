//! Direct reads and writes of a model's users rows for the sync INSERT path, where a single-row
//! INSERT into the orders must stay cheap: one primary-key probe to read a user's segment and
//! stored state, and one `heap_update` (index entries only when it is not a HOT update) to write
//! the new row, instead of two SPI statements with their executor start-up. Users without a row
//! (their first order) and tables this does not handle (an index with expressions or a
//! predicate, added by hand) go through SQL (`live::write_users`).
//!
//! Reads use the latest snapshot, taken after the caller locked the users (`live::lock_users`):
//! a concurrent writer of the same user has committed, and its row version is the one updated.

use std::ffi::CString;

use pgrx::pg_sys::{self, Datum};
use pgrx::{FromDatum, IntoDatum};


/// Columns written by the live path, by attribute number (1-based).
struct Attnums {
    segment_id: usize,
    distance: usize,
    cell: usize,
    model_version: usize,
    rfm: [usize; 5],
    features: usize,
    embedding: usize,
    updated_at: usize,
    live_tag: usize,
    live_orders: usize,
    live_events: usize,
}

/// A user's row as the live path reads it.
pub struct Found {
    pub tid: pg_sys::ItemPointerData,
    pub segment: Option<i32>,
    pub tag: Option<i64>,
    pub orders: Option<Vec<u8>>,
    pub events: Option<Vec<u8>>,
}

/// What the live path writes into a user's row.
pub struct Values<'a> {
    pub segment: Option<i32>,
    pub distance: Option<f64>,
    pub cell: Option<i32>,
    pub version: i32,
    /// The feature vector; its first five are the RFM columns.
    pub features: &'a [Option<f64>],
    pub embedding: &'a [f32],
    pub tag: i64,
    pub orders: &'a [u8],
    pub events: Option<&'a [u8]>,
}

/// An open users table with its indexes and a scan on its primary key.
pub struct Users {
    rel: pg_sys::Relation,
    indexes: Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo)>,
    scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
    /// For index entries of new row versions.
    new_slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
    key: pg_sys::ScanKeyData,
    key_input: (pg_sys::Oid, pg_sys::Oid, i32),
    att: Attnums,
    /// Reset after each user.
    cxt: pg_sys::MemoryContext,
}

impl Users {
    /// Opens `segment.<table>` for the live path; None when its shape asks for SQL instead.
    ///
    /// # Safety
    /// Inside a transaction, with the caller holding the users' live locks.
    pub unsafe fn open(table: &str) -> Option<Users> {
        let name = CString::new(table).ok()?;
        let schema = pg_sys::get_namespace_oid(c"segment".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(name.as_ptr(), schema);
        if relid == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let desc = (*rel).rd_att;
        let attnum = |n: &str| -> Option<usize> {
            (0..(*desc).natts as usize).find_map(|i| {
                let a = &*(*desc).attrs.as_ptr().add(i);
                (!a.attisdropped && pgrx::name_data_to_str(&a.attname) == n).then_some(i + 1)
            })
        };
        let att = (|| {
            Some(Attnums {
                segment_id: attnum("segment_id")?,
                distance: attnum("distance")?,
                cell: attnum("cell")?,
                model_version: attnum("model_version")?,
                rfm: [
                    attnum("recency_days")?,
                    attnum("frequency")?,
                    attnum("monetary")?,
                    attnum("avg_order_value")?,
                    attnum("tenure_days")?,
                ],
                features: attnum("features")?,
                embedding: attnum("embedding")?,
                updated_at: attnum("updated_at")?,
                live_tag: attnum("live_tag")?,
                live_orders: attnum("live_orders")?,
                live_events: attnum("live_events")?,
            })
        })();
        let (Some(att), Some(user)) = (att, attnum("user_id")) else {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        };
        let mut users = Users {
            rel,
            indexes: Vec::new(),
            scan: std::ptr::null_mut(),
            slot: std::ptr::null_mut(),
            new_slot: std::ptr::null_mut(),
            snapshot: std::ptr::null_mut(),
            key: std::mem::zeroed(),
            key_input: (pg_sys::InvalidOid, pg_sys::InvalidOid, -1),
            att,
            cxt: std::ptr::null_mut(),
        };
        // From here on, dropping `users` closes what was opened.
        let list = pg_sys::RelationGetIndexList(rel);
        let mut primary = None;
        for i in 0..if list.is_null() { 0 } else { (*list).length as usize } {
            let oid = (*(*list).elements.add(i)).oid_value;
            let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let info = pg_sys::BuildIndexInfo(index);
            users.indexes.push((index, info));
            if !(*info).ii_Expressions.is_null() || !(*info).ii_Predicate.is_null() {
                return None;
            }
            let form = &*(*index).rd_index;
            if form.indisprimary && form.indnatts == 1 && (*info).ii_IndexAttrNumbers[0] as usize == user {
                primary = Some(index);
            }
        }
        let primary = primary?;
        let opfamily = *(*primary).rd_opfamily;
        let opcintype = *(*primary).rd_opcintype;
        let op = pg_sys::get_opfamily_member(opfamily, opcintype, opcintype, pg_sys::BTEqualStrategyNumber as i16);
        if op == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::ScanKeyEntryInitialize(
            &mut users.key,
            0,
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::InvalidOid,
            *(*primary).rd_indcollation,
            pg_sys::get_opcode(op),
            Datum::from(0),
        );
        let key_type = (*(*desc).attrs.as_ptr().add(user - 1)).atttypid;
        let key_typmod = (*(*desc).attrs.as_ptr().add(user - 1)).atttypmod;
        let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
        pg_sys::getTypeInputInfo(key_type, &mut input, &mut ioparam);
        users.key_input = (input, ioparam, key_typmod);
        users.snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        users.scan = pg_sys::index_beginscan(rel, primary, users.snapshot, 1, 0);
        users.slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        users.new_slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
        users.cxt = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"pg_segment live row".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        Some(users)
    }

    /// The row of the user whose key's text form is `key`, if any.
    ///
    /// # Safety
    /// `self` is open (see [`Users::open`]).
    pub unsafe fn fetch(&mut self, key: &str) -> Option<Found> {
        let text = CString::new(key).ok()?;
        let (input, ioparam, typmod) = self.key_input;
        self.key.sk_argument = pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut _, ioparam, typmod);
        pg_sys::index_rescan(self.scan, &mut self.key, 1, std::ptr::null_mut(), 0);
        if !pg_sys::index_getnext_slot(self.scan, pg_sys::ScanDirection::ForwardScanDirection, self.slot) {
            return None;
        }
        let mut should_free = false;
        let tuple = pg_sys::ExecFetchSlotHeapTuple(self.slot, false, &mut should_free);
        let desc = (*self.rel).rd_att;
        let get = |attnum: usize| {
            let mut is_null = false;
            let d = pgrx::pg_sys::heap_getattr(tuple, attnum as i32, desc, &mut is_null);
            (!is_null).then_some(d)
        };
        let bytes = |attnum: usize| get(attnum).and_then(|d| <&[u8]>::from_datum(d, false)).map(<[u8]>::to_vec);
        let found = Found {
            tid: (*tuple).t_self,
            segment: get(self.att.segment_id).map(|d| d.value() as i32),
            tag: get(self.att.live_tag).map(|d| d.value() as i64),
            orders: bytes(self.att.live_orders),
            events: bytes(self.att.live_events),
        };
        if should_free {
            pg_sys::heap_freetuple(tuple);
        }
        Some(found)
    }

    /// Writes `v` over the row at `tid` (read by [`Users::fetch`] in this statement).
    ///
    /// # Safety
    /// `self` is open and `tid` is a live row of it.
    pub unsafe fn update(&mut self, mut tid: pg_sys::ItemPointerData, v: &Values) {
        let previous = pg_sys::MemoryContextSwitchTo(self.cxt);
        let desc = (*self.rel).rd_att;
        let natts = (*desc).natts as usize;
        let mut values = vec![Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        let mut replace = vec![false; natts];
        let mut set = |attnum: usize, d: Option<Datum>| {
            values[attnum - 1] = d.unwrap_or(Datum::from(0));
            nulls[attnum - 1] = d.is_none();
            replace[attnum - 1] = true;
        };
        let a = &self.att;
        set(a.segment_id, v.segment.into_datum());
        set(a.distance, v.distance.into_datum());
        set(a.cell, v.cell.into_datum());
        set(a.model_version, v.version.into_datum());
        for (attnum, f) in a.rfm.iter().zip(v.features) {
            set(*attnum, f.into_datum());
        }
        set(a.features, v.features.to_vec().into_datum());
        set(a.embedding, v.embedding.to_vec().into_datum());
        set(a.updated_at, Some(Datum::from(pg_sys::GetCurrentTimestamp())));
        set(a.live_tag, v.tag.into_datum());
        set(a.live_orders, v.orders.into_datum());
        set(a.live_events, v.events.into_datum());
        // the row version read by `fetch`, under the same snapshot
        let mut old = pg_sys::HeapTupleData { t_self: tid, ..std::mem::zeroed() };
        let mut buffer: pg_sys::Buffer = 0;
        if !pg_sys::heap_fetch(self.rel, self.snapshot, &mut old, &mut buffer, false) {
            pg_sys::MemoryContextSwitchTo(previous);
            pgrx::error!("pg_segment: a users row read by this statement is gone");
        }
        let new = pg_sys::heap_modify_tuple(&mut old, desc, values.as_mut_ptr(), nulls.as_mut_ptr(), replace.as_mut_ptr());
        pg_sys::ReleaseBuffer(buffer);
        let update_indexes = simple_update(self.rel, &mut tid, new);
        if update_indexes {
            pg_sys::ExecStoreHeapTuple(new, self.new_slot, false);
            for &(index, info) in &self.indexes {
                let mut ivalues = [Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
                let mut inulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
                pg_sys::FormIndexDatum(info, self.new_slot, std::ptr::null_mut(), ivalues.as_mut_ptr(), inulls.as_mut_ptr());
                let unique = if (*(*index).rd_index).indisunique {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                } else {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                };
                pg_sys::index_insert(
                    index,
                    ivalues.as_mut_ptr(),
                    inulls.as_mut_ptr(),
                    &mut (*new).t_self,
                    self.rel,
                    unique,
                    false,
                    info,
                );
            }
            pg_sys::ExecClearTuple(self.new_slot);
        }
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextReset(self.cxt);
    }
}

/// `simple_heap_update`, returning whether the new version needs index entries (not a HOT
/// update).
#[cfg(feature = "pg15")]
unsafe fn simple_update(rel: pg_sys::Relation, tid: &mut pg_sys::ItemPointerData, new: pg_sys::HeapTuple) -> bool {
    pg_sys::simple_heap_update(rel, tid, new);
    (*(*new).t_data).t_infomask2 & pg_sys::HEAP_ONLY_TUPLE as u16 == 0
}

#[cfg(not(feature = "pg15"))]
unsafe fn simple_update(rel: pg_sys::Relation, tid: &mut pg_sys::ItemPointerData, new: pg_sys::HeapTuple) -> bool {
    let mut update_indexes = pg_sys::TU_UpdateIndexes::TU_All;
    pg_sys::simple_heap_update(rel, tid, new, &mut update_indexes);
    update_indexes != pg_sys::TU_UpdateIndexes::TU_None
}

impl Drop for Users {
    fn drop(&mut self) {
        // SAFETY: closes exactly what `open` opened; locks stay until the transaction ends.
        unsafe {
            if !self.scan.is_null() {
                pg_sys::index_endscan(self.scan);
            }
            if !self.slot.is_null() {
                pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            }
            if !self.new_slot.is_null() {
                pg_sys::ExecDropSingleTupleTableSlot(self.new_slot);
            }
            if !self.snapshot.is_null() {
                pg_sys::UnregisterSnapshot(self.snapshot);
            }
            if !self.cxt.is_null() {
                pg_sys::MemoryContextDelete(self.cxt);
            }
            for &(index, _) in &self.indexes {
                pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}
