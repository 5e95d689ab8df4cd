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

/// Executes `sql` with `args` (whose types are `types`) through a plan prepared once per backend.
/// PostgreSQL's plan cache re-plans it when a table it uses changes.
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
    client.update(&*plan, None, args).map_err(from_spi)
}
