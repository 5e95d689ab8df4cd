//! The `options jsonb` argument of `segment_users`, parsed and validated in one place.

use serde_json::{Map, Value};

use super::error::{Result, SegError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Kmeans,
    Dbscan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingChoice {
    Auto,
    Autoencoder,
    Pca,
    None,
}

/// A second behaviour source (page views, carts, searches...). Column names left `None` are
/// detected like the orders columns.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct EventsSpec {
    pub table: String,
    pub user_column: Option<String>,
    pub time_column: Option<String>,
    pub type_column: Option<String>,
    pub category_column: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    pub algorithm: Algorithm,
    pub embedding: EmbeddingChoice,
    /// Embedding dimensions; `None` means "choose from the feature count".
    pub dims: Option<usize>,
    pub seed: u64,
    /// Reference time for recency, as text PostgreSQL will cast to timestamptz.
    pub as_of: Option<String>,
    pub k_range: (usize, usize),
    /// Cap on the users used to train the encoder and the clusters.
    pub sample: usize,
    pub events: Option<EventsSpec>,
    pub dedupe: bool,
    /// DBSCAN radius; `None` derives it from the k-distance curve.
    pub eps: Option<f64>,
    /// DBSCAN density; `None` means `2 × dims`.
    pub min_points: Option<usize>,
    /// Time zone of the hour-of-day and day-of-week features (not the session's, so a model
    /// does not depend on who runs it).
    pub timezone: String,
    /// Live mode to switch on after the fit: "sync", "async" or "off".
    #[serde(default)]
    pub live: Option<String>,
}

pub const KNOWN_KEYS: &[&str] = &[
    "algorithm",
    "embedding",
    "dims",
    "seed",
    "as_of",
    "k_range",
    "sample",
    "events",
    "dedupe",
    "eps",
    "min_points",
    "timezone",
    "live",
];

pub const MAX_DIMS: usize = 64;
pub const MAX_K: usize = 256;

impl Default for Options {
    fn default() -> Self {
        Options {
            algorithm: Algorithm::Kmeans,
            embedding: EmbeddingChoice::Auto,
            dims: None,
            seed: 42,
            as_of: None,
            k_range: (2, 12),
            sample: 100_000,
            events: None,
            dedupe: false,
            eps: None,
            min_points: None,
            timezone: "UTC".to_string(),
            live: None,
        }
    }
}

fn bad(key: &str, expected: &str, got: &Value) -> SegError {
    SegError::invalid(format!("invalid value for option \"{key}\""))
        .detail(format!("expected {expected}, got {got}"))
}

fn as_int(key: &str, v: &Value, min: i64, max: i64) -> Result<i64> {
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(key, &format!("an integer from {min} to {max}"), v)),
    }
}

fn as_str<'a>(key: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str().ok_or_else(|| bad(key, "a string", v))
}

fn opt_str(key: &str, obj: &Map<String, Value>, field: &str) -> Result<Option<String>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(as_str(&format!("{key}.{field}"), v)?.to_string())),
    }
}

fn parse_events(v: &Value) -> Result<EventsSpec> {
    match v {
        Value::String(s) => Ok(EventsSpec { table: s.clone(), ..Default::default() }),
        Value::Object(obj) => {
            const FIELDS: &[&str] =
                &["table", "user_column", "time_column", "type_column", "category_column"];
            if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return Err(SegError::invalid(format!("unknown key \"{k}\" in option \"events\""))
                    .hint(format!("valid keys are: {}", FIELDS.join(", "))));
            }
            let table = opt_str("events", obj, "table")?.ok_or_else(|| {
                SegError::invalid("option \"events\" needs a \"table\"")
                    .hint("pass {\"events\": \"page_events\"} or {\"events\": {\"table\": \"page_events\", ...}}")
            })?;
            Ok(EventsSpec {
                table,
                user_column: opt_str("events", obj, "user_column")?,
                time_column: opt_str("events", obj, "time_column")?,
                type_column: opt_str("events", obj, "type_column")?,
                category_column: opt_str("events", obj, "category_column")?,
            })
        }
        _ => Err(bad("events", "a table name or an object with \"table\"", v)),
    }
}

impl Options {
    /// Parses the `options` argument. Every key is checked; unknown keys are an error so that a
    /// typo never silently falls back to a default.
    pub fn parse(v: &Value) -> Result<Options> {
        let obj = match v {
            Value::Object(o) => o,
            Value::Null => return Ok(Options::default()),
            other => {
                return Err(SegError::invalid("options must be a json object")
                    .detail(format!("got {other}"))
                    .hint("pass options => '{\"seed\": 1}' or leave it out"))
            }
        };
        let mut o = Options::default();
        for (key, val) in obj {
            if val.is_null() {
                continue; // an explicit null means "the default"
            }
            match key.as_str() {
                "algorithm" => {
                    o.algorithm = match as_str(key, val)? {
                        "kmeans" => Algorithm::Kmeans,
                        "dbscan" => Algorithm::Dbscan,
                        _ => return Err(bad(key, "\"kmeans\" or \"dbscan\"", val)),
                    }
                }
                "embedding" => {
                    o.embedding = match as_str(key, val)? {
                        "auto" => EmbeddingChoice::Auto,
                        "autoencoder" => EmbeddingChoice::Autoencoder,
                        "pca" => EmbeddingChoice::Pca,
                        "none" => EmbeddingChoice::None,
                        _ => {
                            return Err(bad(key, "\"auto\", \"autoencoder\", \"pca\" or \"none\"", val))
                        }
                    }
                }
                "dims" => o.dims = Some(as_int(key, val, 1, MAX_DIMS as i64)? as usize),
                "seed" => o.seed = as_int(key, val, 0, i64::MAX)? as u64,
                "as_of" => o.as_of = Some(as_str(key, val)?.to_string()),
                "k_range" => {
                    let arr = val.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                        bad(key, "an array of two integers such as [2, 12]", val)
                    })?;
                    let lo = as_int(key, &arr[0], 2, MAX_K as i64)? as usize;
                    let hi = as_int(key, &arr[1], 2, MAX_K as i64)? as usize;
                    if lo > hi {
                        return Err(bad(key, "[low, high] with low <= high", val));
                    }
                    o.k_range = (lo, hi);
                }
                "sample" => o.sample = as_int(key, val, 100, 100_000_000)? as usize,
                "events" => o.events = Some(parse_events(val)?),
                "dedupe" => o.dedupe = val.as_bool().ok_or_else(|| bad(key, "true or false", val))?,
                "eps" => match val.as_f64() {
                    Some(e) if e.is_finite() && e > 0.0 => o.eps = Some(e),
                    _ => return Err(bad(key, "a positive number", val)),
                },
                "min_points" => o.min_points = Some(as_int(key, val, 2, 10_000)? as usize),
                "timezone" => o.timezone = as_str(key, val)?.to_string(),
                "live" => match as_str(key, val)? {
                    m @ ("sync" | "async" | "off") => o.live = Some(m.to_string()),
                    _ => return Err(bad(key, "\"sync\", \"async\" or \"off\"", val)),
                },
                unknown => {
                    return Err(SegError::invalid(format!("unknown option \"{unknown}\""))
                        .hint(format!("valid options are: {}", KNOWN_KEYS.join(", "))))
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn defaults_when_empty() {
        assert_eq!(Options::parse(&json!({})).unwrap(), Options::default());
        assert_eq!(Options::parse(&Value::Null).unwrap(), Options::default());
    }

    #[test]
    fn parses_every_key() {
        let o = Options::parse(&json!({
            "algorithm": "dbscan", "embedding": "pca", "dims": 4, "seed": 7,
            "as_of": "2026-01-01", "k_range": [3, 5], "sample": 5000, "dedupe": true,
            "eps": 0.5, "min_points": 10, "timezone": "Europe/Paris",
            "events": {"table": "ev", "type_column": "kind"}
        }))
        .unwrap();
        assert_eq!(o.algorithm, Algorithm::Dbscan);
        assert_eq!(o.embedding, EmbeddingChoice::Pca);
        assert_eq!(o.dims, Some(4));
        assert_eq!(o.k_range, (3, 5));
        assert!(o.dedupe);
        assert_eq!(o.timezone, "Europe/Paris");
        assert_eq!(o.events.unwrap().type_column.as_deref(), Some("kind"));
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        for bad in [
            json!({"algoritm": "kmeans"}),
            json!({"algorithm": "hdbscan"}),
            json!({"dims": 0}),
            json!({"dims": "8"}),
            json!({"k_range": [5, 3]}),
            json!({"k_range": [1, 3]}),
            json!({"k_range": 4}),
            json!({"seed": -1}),
            json!({"eps": -0.1}),
            json!({"events": 3}),
            json!({"events": {"user_column": "u"}}),
            json!({"events": {"table": "e", "colour": "red"}}),
            json!([1, 2]),
        ] {
            let err = Options::parse(&bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidParameter, "{bad}");
            assert_eq!(err.message, err.message.to_lowercase(), "{bad}");
        }
    }
}
