//! pg_segment: dynamic customer segmentation inside PostgreSQL.
//!
//! `core` is the pure pipeline (features SQL text, scaling, autoencoder/PCA, clustering,
//! metrics, naming) and never touches PostgreSQL; `pg` is the thin pgrx layer (SPI, SQL
//! functions, errors).

pub mod core;
#[cfg(not(test))]
mod pg;
#[cfg(test)]
mod pg;

::pgrx::pg_module_magic!();
