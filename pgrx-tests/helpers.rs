// Shared helpers for the in-database tests (included into `mod tests` in src/lib.rs).

use pgrx::prelude::*;

/// Runs `sql` in a subtransaction and returns the SQLSTATE it failed with (None on success).
/// The subtransaction is rolled back, so whatever the statement wrote is undone, exactly as
/// for a caller whose statement failed.
fn sqlstate_of(sql: &str) -> Option<String> {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN EXECUTE q; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
    )
    .unwrap();
    Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[sql.into()]).unwrap()
}

fn one<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap()
}

/// Small demo data (orders, events, personas) with prefix `p`, fixed seed and as_of.
fn demo(p: &str, users: i32) {
    Spi::run(&format!("SELECT * FROM segment_demo({users}, 7, '2026-06-01', '{p}')")).unwrap();
}

const AS_OF: &str = r#""as_of": "2026-06-01""#;
