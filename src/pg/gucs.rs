//! Settings, all under the reserved prefix `pg_segment.`.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static NOTIFY_CHANNEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"segment_changes"));

pub static MIN_SEGMENT_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10);

pub static REFIT_DRIFT: GucSetting<f64> = GucSetting::<f64>::new(0.2);

pub static MAX_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);

pub static BATCH_USERS: GucSetting<i32> = GucSetting::<i32>::new(50_000);

pub fn init() {
    GucRegistry::define_float_guc(
        c"pg_segment.refit_drift",
        c"Share of users changing segment in segment_refresh() that triggers a re-fit.",
        c"segment_refresh(refit => NULL) re-fits the model when more than this share of its users changed segment; 1 never re-fits automatically.",
        &REFIT_DRIFT,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_segment.min_segment_size",
        c"Smallest segment that reports describe on their own.",
        c"segment_describe, segment_top_categories and segment_recommend merge or leave out segments with fewer users than this, so that no report singles out a person; 1 reports every segment.",
        &MIN_SEGMENT_SIZE,
        1,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_segment.max_threads",
        c"Threads a backend uses for pg_segment's computations (0: one per CPU core).",
        c"K-means, assignment, cells and evaluation run on up to this many threads inside the backend running segment_users, segment_refresh or a large live update; the threads only compute, never touch the database. 1 keeps everything on the backend's own thread.",
        &MAX_THREADS,
        0,
        1024,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_segment.batch_users",
        c"Users whose features a fit or refresh reads into memory at a time.",
        c"segment_users and segment_refresh stream every user's features from a temporary table in batches of this many users; larger batches cost more memory and fewer round trips. Results do not depend on it.",
        &BATCH_USERS,
        100,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_segment.notify_channel",
        c"NOTIFY channel for segment membership changes.",
        c"Live updates, segment_process and segment_refresh send a JSON payload for each batch of users who changed segment. Empty disables notifications.",
        &NOTIFY_CHANNEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_segment".as_ptr()) };
}

/// Hands `pg_segment.max_threads` to the pure code; called before heavy work.
pub fn apply_max_threads() {
    crate::core::parallel::set_max_threads(MAX_THREADS.get().max(0) as usize);
}

pub fn notify_channel() -> Option<String> {
    NOTIFY_CHANNEL.get().map(|c| c.to_string_lossy().into_owned()).filter(|c| !c.is_empty())
}
