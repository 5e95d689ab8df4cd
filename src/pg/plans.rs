//! Per-backend cache of prepared SPI statements. The live path runs the same few statements for
//! every writing statement; planning them each time cost more than running them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

use crate::core::error::Result;
use crate::pg::error::from_spi;

thread_local! {
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Restores `plan_cache_mode` when dropped, also when an ERROR unwinds through us.
struct GenericPlans(std::ffi::c_int);

impl GenericPlans {
    fn force() -> GenericPlans {
        // SAFETY: a plain GUC variable of this backend's main thread.
        unsafe {
            let saved = pgrx::pg_sys::plan_cache_mode;
            pgrx::pg_sys::plan_cache_mode = pgrx::pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as _;
            GenericPlans(saved)
        }
    }
}

impl Drop for GenericPlans {
    fn drop(&mut self) {
        unsafe { pgrx::pg_sys::plan_cache_mode = self.0 };
    }
}

/// Executes `sql` with `args` (whose types are `types`) through a plan prepared once per backend.
/// PostgreSQL's plan cache re-plans it when a table it uses changes. The generic plan is used
/// from the first call: with array parameters of one element the plan cache would otherwise
/// judge custom plans cheaper and plan every call, which cost more than running them.
pub fn execute<'c>(
    client: &mut SpiClient<'c>,
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid],
) -> Result<SpiTupleTable<'c>> {
    let cached = PLANS.with(|p| p.borrow().get(sql).cloned());
    let plan = match cached {
        Some(plan) => plan,
        None => {
            let plan = Rc::new(client.prepare_mut(sql, types).map_err(from_spi)?.keep());
            PLANS.with(|p| p.borrow_mut().insert(sql.to_string(), plan.clone()));
            plan
        }
    };
    let _generic = GenericPlans::force();
    client.update(&*plan, None, args).map_err(from_spi)
}
