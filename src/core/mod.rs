//! The pure pipeline: no PostgreSQL here (a test greps for it). Each module is unit-tested
//! with plain `cargo test`.

pub mod cells;
pub mod clustering;
pub mod detect;
pub mod embedding;
pub mod error;
pub mod features;
pub mod kmeans;
pub mod live_state;
pub mod matching;
pub mod metrics;
pub mod naming;
pub mod neighbors;
pub mod options;
pub mod order_features;
pub mod parallel;
pub mod pipeline;
pub mod plot;
pub mod privacy;
pub mod recommend;
pub mod scaling;
