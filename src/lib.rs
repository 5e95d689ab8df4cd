//! pg_segment: dynamic customer segmentation inside PostgreSQL.
//!
//! `core` is the pure pipeline (features SQL text, scaling, autoencoder/PCA, clustering,
//! metrics, naming) and never touches PostgreSQL; `pg` is the thin pgrx layer (SPI, SQL
//! functions, errors).

pub mod core;
mod pg;

::pgrx::pg_module_magic!(name, version);

/// In-database tests (`cargo pgrx test`): the test bodies live in `pgrx-tests/`.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    include!("../pgrx-tests/helpers.rs");
    include!("../pgrx-tests/pipeline.rs");
    include!("../pgrx-tests/lookups.rs");
    include!("../pgrx-tests/errors.rs");
    include!("../pgrx-tests/live.rs");
    include!("../pgrx-tests/apps.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

/// Packaging: the version is said once, in Cargo.toml; META.json must follow it.
#[cfg(test)]
mod packaging {
    #[test]
    fn meta_json_carries_the_crate_version() {
        let meta: serde_json::Value = serde_json::from_str(include_str!("../META.json")).expect("META.json parses");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(meta["version"], version, "META.json version");
        assert_eq!(meta["provides"]["pg_segment"]["version"], version, "META.json provides.pg_segment.version");
        assert_eq!(meta["name"], env!("CARGO_PKG_NAME"));
    }

    /// Every released version (a frozen `sql/pg_segment--X.sql`) reaches the current version
    /// through upgrade scripts `sql/pg_segment--A--B.sql`.
    #[test]
    fn every_released_version_has_an_upgrade_path_to_this_one() {
        let current = env!("CARGO_PKG_VERSION");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("sql/ exists")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("pg_segment--")?.strip_suffix(".sql").map(str::to_string))
            .collect();
        let steps: Vec<(&str, &str)> = names.iter().filter_map(|n| n.split_once("--")).collect();
        let released: Vec<&String> = names.iter().filter(|n| !n.contains("--")).collect();
        assert!(!released.is_empty(), "at least one released version is kept in sql/");
        for version in released {
            let mut at = version.as_str();
            let mut hops = 0;
            while at != current {
                let next = steps.iter().find(|(from, _)| *from == at).map(|(_, to)| *to);
                at = next.unwrap_or_else(|| panic!("no upgrade script from {version} (stuck at {at}) to {current}"));
                hops += 1;
                assert!(hops < 100, "upgrade scripts loop");
            }
        }
    }
}
