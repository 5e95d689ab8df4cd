//! The batch pipeline from raw per-user features to a fitted model and every user's segment:
//! scale → embed (autoencoder or PCA) → cluster (k-means / DBSCAN, automatic k) → evaluate →
//! name. Pure: the glue layer reads the features from PostgreSQL and writes the result back.

use std::time::Instant;

use ndarray::{Array2, ArrayView2, Axis};

use super::cells;
use super::clustering::{self, Clustering, KScore};
use super::embedding::{self, EmbeddingReport, Encoder};
use super::error::{ErrorKind, Result, SegError};
use super::features::FeatureDef;
use super::metrics;
use super::naming::{self, Profile};
use super::options::{Algorithm, EmbeddingChoice, Options};
use super::scaling::Scaler;

/// Rows used to train the autoencoder, at most (the rest of the sample adds little).
pub const AUTOENCODER_MAX_ROWS: usize = 20_000;
/// Rows DBSCAN runs on, at most; the others are assigned by the nearest-centroid rule.
pub const DBSCAN_MAX_ROWS: usize = 20_000;

/// Everything needed to place a user: stored with the model version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub features: Vec<FeatureDef>,
    pub scaler: Scaler,
    pub encoder: Encoder,
    pub clustering: Clustering,
    /// The segment id of each centroid (1..=k at the first fit; a label-stable refit keeps the
    /// ids of the segments it matched).
    #[serde(default)]
    pub segment_ids: Vec<i32>,
    /// Cell centres of each segment (by centroid index), for lookalike search; empty for a
    /// model fitted before cells existed.
    #[serde(default)]
    pub cells: Vec<Array2<f64>>,
}

/// Where a batch of users lands: embeddings, (segment id, distance) and cell per user.
pub struct Placement {
    pub embedding: Array2<f64>,
    pub assigned: Vec<Option<(i32, f64)>>,
    pub cells: Vec<Option<i32>>,
}

impl Model {
    /// The embedding, segment id, distance and cell of each user of a batch (`None` for
    /// DBSCAN noise).
    pub fn assign(&self, columns: &[Vec<Option<f64>>]) -> Placement {
        let e = self.embed(columns);
        let by_index = self.clustering.assign(e.view());
        let cells = cells::assign(&self.cells, e.view(), &clustering::labels_of(&by_index));
        let assigned = by_index.into_iter().map(|a| a.map(|(c, d)| (self.segment_id(c), d))).collect();
        Placement { embedding: e, assigned, cells }
    }

    pub fn segment_id(&self, index: usize) -> i32 {
        self.segment_ids.get(index).copied().unwrap_or(index as i32 + 1)
    }

    /// Scaled features → embedding → segment, for a batch of users (column-major raw input).
    pub fn embed(&self, columns: &[Vec<Option<f64>>]) -> Array2<f64> {
        self.encoder.encode(self.scaler.transform(columns).view())
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub k: usize,
    pub users: usize,
    pub assigned: usize,
    pub coverage: f64,
    pub silhouette: f64,
    pub silhouette_sampled: bool,
    pub davies_bouldin: f64,
    pub calinski_harabasz: f64,
    pub inertia: f64,
    pub mean_distance: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitReport {
    pub algorithm: Algorithm,
    pub embedding: EmbeddingReport,
    pub k_requested: Option<usize>,
    pub k_scores: Vec<KScore>,
    pub eps: Option<f64>,
    pub min_points: Option<usize>,
    pub training_rows: usize,
    pub metrics: Metrics,
}

pub struct Segment {
    pub name: String,
    pub users: usize,
    /// Scaled feature means (z-like scores vs the population), in catalogue order.
    pub profile: Vec<f64>,
    /// Raw feature means over the members that have the feature, in catalogue order.
    pub raw_means: Vec<f64>,
}

pub struct FitResult {
    pub model: Model,
    pub report: FitReport,
    pub segments: Vec<Segment>,
    /// Per user: (segment index from 0, distance to its centroid), `None` for noise.
    pub assignments: Vec<Option<(usize, f64)>>,
    /// Per user: cell within the segment (see `cells`).
    pub cells: Vec<Option<i32>>,
    pub embeddings: Array2<f64>,
}

/// Reports progress; the glue layer turns each call into a NOTICE.
pub trait Progress {
    fn phase(&mut self, what: &str);
}

impl<F: FnMut(&str)> Progress for F {
    fn phase(&mut self, what: &str) {
        self(what)
    }
}

pub fn fit(
    features: Vec<FeatureDef>,
    columns: &[Vec<Option<f64>>],
    k: Option<i32>,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<FitResult> {
    let n = columns.first().map_or(0, Vec::len);
    let started = Instant::now();
    let say = |progress: &mut dyn Progress, what: String| {
        progress.phase(&format!("{what} ({:.1} s into training)", started.elapsed().as_secs_f64()))
    };
    validate_k(k, n, opts)?;

    let scaler = Scaler::fit(&features, columns);
    let x = scaler.transform(columns);
    say(progress, format!("scaled {} features for {n} users", features.len()));

    let dims = match opts.dims {
        Some(d) if opts.embedding != EmbeddingChoice::None && d > features.len() => {
            return Err(SegError::invalid(format!(
                "dims must be at most the number of features ({})",
                features.len()
            ))
            .detail(format!("dims is {d}")))
        }
        Some(d) => d,
        None => embedding::default_dims(features.len()),
    };
    let sample = clustering::sample_rows(n, opts.sample, opts.seed);
    let ae_rows = clustering::sample_rows(sample.len(), AUTOENCODER_MAX_ROWS, opts.seed ^ 1);
    let ae_train = x.select(Axis(0), &ae_rows.iter().map(|&i| sample[i]).collect::<Vec<_>>());
    let (encoder, emb_report) = embedding::fit_encoder(ae_train.view(), opts.embedding, dims, opts.seed);
    let e = encoder.encode(x.view());
    say(
        progress,
        format!(
            "embedding: {} with {} dims (held-out error autoencoder {}, pca {})",
            emb_report.chosen,
            encoder.dims(),
            fmt_opt(emb_report.autoencoder_holdout_mse),
            fmt_opt(emb_report.pca_holdout_mse)
        ),
    );

    let e_sample = e.select(Axis(0), &sample);
    let (clusters, k_scores, eps, min_points) = match opts.algorithm {
        Algorithm::Kmeans => {
            let (k, scores) = match k {
                Some(k) => (k as usize, Vec::new()),
                None => clustering::choose_k(e_sample.view(), opts.k_range, opts.seed)?,
            };
            // The scoring run's centroids for this k are one more start for the final fit.
            let warm = scores.iter().find(|s| s.k == k).and_then(|s| s.centroids.as_ref());
            let centroids = clustering::kmeans_from(e_sample.view(), k, clustering::FINAL_RUNS, opts.seed, warm)?;
            (Clustering { centroids, radii: None }, scores, None, None)
        }
        Algorithm::Dbscan => {
            let idx = clustering::sample_rows(e_sample.nrows(), DBSCAN_MAX_ROWS, opts.seed ^ 2);
            let s = e_sample.select(Axis(0), &idx);
            let min_points = opts.min_points.unwrap_or(2 * encoder.dims()).max(2);
            let eps = opts.eps.unwrap_or_else(|| clustering::estimate_eps(s.view(), min_points, opts.seed));
            (clustering::dbscan(s.view(), eps, min_points)?, Vec::new(), Some(eps), Some(min_points))
        }
    };
    let clusters = clustering::order_by_size(clusters, e.view());
    say(progress, format!("clustered: {} segments from {} training users", clusters.k(), sample.len()));

    let assignments = clusters.assign(e.view());
    let labels = clustering::labels_of(&assignments);
    let metrics = evaluate(e.view(), &labels, &assignments, &clusters, opts.seed);
    say(
        progress,
        format!(
            "evaluated: silhouette {:.3}, davies-bouldin {:.3}, coverage {:.3}",
            metrics.silhouette, metrics.davies_bouldin, metrics.coverage
        ),
    );

    let cell_centres = cells::fit(e.view(), &labels, clusters.k(), opts.seed);
    let user_cells = cells::assign(&cell_centres, e.view(), &labels);

    let feature_names: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
    let weights: Vec<f64> = scaler.features.iter().map(|f| f.weight).collect();
    let segments = describe(x.view(), &weights, columns, &labels, clusters.k(), &feature_names);
    let report = FitReport {
        algorithm: opts.algorithm,
        embedding: emb_report,
        k_requested: k.map(|k| k as usize),
        k_scores,
        eps,
        min_points,
        training_rows: sample.len(),
        metrics,
    };
    Ok(FitResult {
        model: Model {
            features,
            scaler,
            encoder,
            segment_ids: (1..=clusters.k() as i32).collect(),
            clustering: clusters,
            cells: cell_centres,
        },
        report,
        segments,
        assignments,
        cells: user_cells,
        embeddings: e,
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The checks on `k` that need no data, so a call fails before any work is done.
pub fn check_k(k: Option<i32>) -> Result<()> {
    match k {
        Some(k) if k < 2 => Err(SegError::invalid(format!("k must be at least 2, not {k}"))
            .hint("pass k => NULL to choose k automatically")),
        Some(k) if k as usize > super::options::MAX_K => Err(SegError::new(
            ErrorKind::LimitExceeded,
            format!("k ({k}) is larger than the maximum of {}", super::options::MAX_K),
        )),
        _ => Ok(()),
    }
}

fn validate_k(k: Option<i32>, n: usize, opts: &Options) -> Result<()> {
    check_k(k)?;
    if n == 0 {
        return Err(SegError::new(ErrorKind::NoData, "no usable rows to segment")
            .hint("check the source table and the rows skipped (null user, time or amount)"));
    }
    match k {
        Some(k) if k as usize > n => Err(SegError::invalid(format!(
            "k ({k}) is larger than the number of users ({n})"
        ))
        .hint("pass a smaller k, or k => NULL to choose it automatically")),
        None if opts.algorithm == Algorithm::Kmeans && n < 3 => {
            Err(SegError::invalid(format!("choosing k automatically needs at least 3 users, not {n}"))
                .hint("pass k explicitly"))
        }
        None if opts.algorithm == Algorithm::Kmeans && opts.k_range.0 >= n => {
            Err(SegError::invalid(format!(
                "k_range starts at {} but there are only {n} users",
                opts.k_range.0
            ))
            .hint("pass a smaller k_range in options"))
        }
        _ => Ok(()),
    }
}

fn evaluate(
    e: ArrayView2<f64>,
    labels: &[Option<usize>],
    assignments: &[Option<(usize, f64)>],
    c: &Clustering,
    seed: u64,
) -> Metrics {
    let assigned = labels.iter().filter(|l| l.is_some()).count();
    let (silhouette, silhouette_sampled) = metrics::silhouette(e, labels, c.k(), seed);
    let total_distance: f64 = assignments.iter().flatten().map(|(_, d)| d).sum();
    Metrics {
        k: c.k(),
        users: labels.len(),
        assigned,
        coverage: assigned as f64 / labels.len().max(1) as f64,
        silhouette,
        silhouette_sampled,
        davies_bouldin: metrics::davies_bouldin(e, labels, &c.centroids),
        calinski_harabasz: metrics::calinski_harabasz(e, labels, &c.centroids),
        inertia: metrics::inertia(e, labels, &c.centroids),
        mean_distance: total_distance / assigned.max(1) as f64,
    }
}

/// Sizes, scaled-feature profiles and names of the segments.
fn describe(
    x: ArrayView2<f64>,
    weights: &[f64],
    columns: &[Vec<Option<f64>>],
    labels: &[Option<usize>],
    k: usize,
    names: &[String],
) -> Vec<Segment> {
    let (means, counts) = clustering::cluster_means(x, labels, k);
    let profiles: Vec<Vec<f64>> =
        (0..k).map(|c| means.row(c).iter().zip(weights).map(|(m, w)| m / w).collect()).collect();
    // One pass per feature column: (sum, count) per segment over the users that have it.
    let mut raw_means = vec![vec![f64::NAN; columns.len()]; k];
    for (j, col) in columns.iter().enumerate() {
        let mut acc = vec![(0.0, 0usize); k];
        for (v, l) in col.iter().zip(labels) {
            if let (Some(v), Some(c)) = (v, l) {
                if v.is_finite() {
                    acc[*c].0 += v;
                    acc[*c].1 += 1;
                }
            }
        }
        for (c, (sum, n)) in acc.into_iter().enumerate() {
            if n > 0 {
                raw_means[c][j] = sum / n as f64;
            }
        }
    }
    let views: Vec<Profile> = profiles.iter().map(|z| Profile { names, z }).collect();
    let seg_names = naming::name_segments(&views);
    profiles
        .into_iter()
        .zip(raw_means)
        .zip(seg_names)
        .zip(counts)
        .map(|(((profile, raw_means), name), users)| Segment { name, users, profile, raw_means })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::features::catalogue;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Three kinds of customer in raw feature space (no categories, no events).
    fn raw(n_per: usize) -> (Vec<FeatureDef>, Vec<Vec<Option<f64>>>, Vec<usize>) {
        let defs = catalogue(&[], false, false);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut cols = vec![Vec::new(); defs.len()];
        let mut truth = Vec::new();
        for kind in 0..3 {
            for _ in 0..n_per {
                let j = |rng: &mut ChaCha8Rng| rng.gen_range(0.8..1.2);
                let (rec, freq, aov) = match kind {
                    0 => (3.0, 40.0, 15.0),
                    1 => (400.0, 4.0, 60.0),
                    _ => (20.0, 10.0, 400.0),
                };
                let f = freq * j(&mut rng);
                let row = [
                    rec * j(&mut rng), f, f * aov, aov * j(&mut rng), 500.0 * j(&mut rng),
                    50.0 * j(&mut rng), 20.0, 1.0, 100.0, 0.3, 0.0, 0.0,
                ];
                for (c, v) in cols.iter_mut().zip(row) {
                    c.push(Some(v));
                }
                truth.push(kind);
            }
        }
        (defs, cols, truth)
    }

    #[test]
    fn finds_planted_groups_deterministically() {
        let (defs, cols, truth) = raw(150);
        let opts = Options { k_range: (2, 6), ..Options::default() };
        let mut notes = Vec::new();
        let mut log = |s: &str| notes.push(s.to_string());
        let r = fit(defs.clone(), &cols, None, &opts, &mut log).unwrap();
        assert_eq!(r.model.clustering.k(), 3, "{:?}", r.report.k_scores);
        let labels: Vec<usize> = r.assignments.iter().map(|a| a.unwrap().0).collect();
        assert!(metrics::adjusted_rand_index(&labels, &truth) > 0.99);
        assert_eq!(r.report.metrics.coverage, 1.0);
        assert!(notes.len() >= 4, "a notice per phase");
        let again = fit(defs, &cols, None, &opts, &mut |_: &str| {}).unwrap();
        assert_eq!(again.model, r.model);
        assert_eq!(again.assignments, r.assignments);
        let names: std::collections::HashSet<_> = r.segments.iter().map(|s| s.name.clone()).collect();
        assert_eq!(names.len(), 3, "unique names");
    }

    #[test]
    fn k_is_validated() {
        let (defs, cols, _) = raw(2);
        let o = Options::default();
        let e = fit(defs.clone(), &cols, Some(1), &o, &mut |_: &str| {}).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidParameter);
        let e = fit(defs.clone(), &cols, Some(7), &o, &mut |_: &str| {}).err().unwrap();
        assert!(e.message.contains("larger than the number of users"));
        let e = fit(defs, &[vec![]], None, &o, &mut |_: &str| {}).err().unwrap();
        assert_eq!(e.kind, ErrorKind::NoData);
    }

    #[test]
    fn dims_above_feature_count_is_an_error() {
        let (defs, cols, _) = raw(5);
        let o = Options { dims: Some(40), ..Options::default() };
        let e = fit(defs, &cols, Some(2), &o, &mut |_: &str| {}).err().unwrap();
        assert!(e.message.starts_with("dims must be at most"));
    }
}
