//! The pgrx layer: SQL functions, SPI, errors. It translates and delegates to `core`.

mod aggregates;
mod api;
mod apps;
mod catalog;
mod error;
mod gucs;
mod live;
mod new_rows;
mod plots;
mod plans;
mod queue;
mod source;
mod users_rows;

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

pgrx::extension_sql_file!("../../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../../sql/demo.sql", name = "demo", finalize);
