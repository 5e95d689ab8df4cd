//! Pure-compute threads. The pipeline's parallel loops (k-means, assignment, cells, silhouette)
//! run on a rayon pool of at most [`max_threads`] threads: the glue layer sets it from the GUC
//! `pg_segment.max_threads` before heavy work. Work run here never calls into PostgreSQL.
//!
//! Every parallel result in `core` is combined in a fixed order (per fixed-size chunk, then
//! sequentially), so results do not depend on the number of threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// 0 means one thread per core.
static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: Mutex<Option<(usize, Arc<ThreadPool>)>> = Mutex::new(None);

/// Caps the threads of later parallel work (0: one per core).
pub fn set_max_threads(n: usize) {
    MAX_THREADS.store(n, Ordering::Relaxed);
}

/// The number of threads parallel work uses now.
pub fn max_threads() -> usize {
    match MAX_THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs `f` in a pool of [`max_threads`] threads (kept between calls while the size stays the
/// same): rayon's parallel iterators inside `f` use that pool. Called from a thread of a rayon
/// pool already, runs `f` there. Falls back to the global pool if a pool cannot be built.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let n = max_threads();
    let pool = {
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some((size, pool)) if *size == n => Some(pool.clone()),
            _ => match ThreadPoolBuilder::new().num_threads(n).thread_name(|i| format!("pg_segment-{i}")).build() {
                Ok(pool) => {
                    let pool = Arc::new(pool);
                    *guard = Some((n, pool.clone()));
                    Some(pool)
                }
                Err(_) => None,
            },
        }
    };
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_uses_the_configured_number_of_threads() {
        set_max_threads(3);
        assert_eq!(max_threads(), 3);
        assert_eq!(install(rayon::current_num_threads), 3);
        set_max_threads(0);
        assert!(max_threads() >= 1);
    }
}
