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

/// A user's nearest segment (its index) and the distance to it; None when the user is not assigned
/// (DBSCAN noise, or no finite embedding).
pub type Assignment = Option<(usize, f64)>;

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
        let (_, e, by_index, cells) = self.place(columns);
        let assigned = by_index.into_iter().map(|a| a.map(|(c, d)| (self.segment_id(c), d))).collect();
        Placement { embedding: e, assigned, cells }
    }

    /// Scaled features, embedding, (centroid index, distance) and cell of each user of a batch.
    #[allow(clippy::type_complexity)]
    fn place(&self, columns: &[Vec<Option<f64>>]) -> (Array2<f64>, Array2<f64>, Vec<Assignment>, Vec<Option<i32>>) {
        let x = self.scaler.transform(columns);
        let e = self.encoder.encode(x.view());
        let assigned = self.clustering.assign(e.view());
        let cells = cells::assign(&self.cells, e.view(), &clustering::labels_of(&assigned));
        (x, e, assigned, cells)
    }

    pub fn segment_id(&self, index: usize) -> i32 {
        self.segment_ids.get(index).copied().unwrap_or(index as i32 + 1)
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
    pub assignments: Vec<Assignment>,
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

/// Fits a model on `columns` (every user in memory): [`train`] on the training sample, then
/// [`Placer`] over every user in one batch. The glue layer uses the two steps itself to stream
/// large populations through in batches; both ways give the same result.
pub fn fit(
    features: Vec<FeatureDef>,
    columns: &[Vec<Option<f64>>],
    k: Option<i32>,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<FitResult> {
    let n = columns.first().map_or(0, Vec::len);
    validate_k(k, n, opts)?;
    let sample = training_sample(n, opts);
    let training: Vec<Vec<Option<f64>>> = columns.iter().map(|c| sample.iter().map(|&i| c[i]).collect()).collect();
    let trained = train(features, &training, n, k, opts, progress)?;
    let mut placer = Placer::new(&trained.model, n);
    placer.add(&trained.model, &(0..n).collect::<Vec<_>>(), columns);
    Ok(placer.finish(trained, opts.seed, progress))
}

/// The users (row numbers from 0) the model is trained on: a seeded sample of `opts.sample`.
pub fn training_sample(n: usize, opts: &Options) -> Vec<usize> {
    clustering::sample_rows(n, opts.sample, opts.seed)
}

/// A model trained on a sample, before every user is placed.
pub struct Trained {
    pub model: Model,
    pub report: FitReport,
    started: Instant,
}

/// Learns everything from the training users' raw features (`training`, column-major): scaler,
/// encoder, clusters (ordered by size) and cells (as many as `population` users need).
pub fn train(
    features: Vec<FeatureDef>,
    training: &[Vec<Option<f64>>],
    population: usize,
    k: Option<i32>,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<Trained> {
    let n = training.first().map_or(0, Vec::len);
    let started = Instant::now();
    let say = |progress: &mut dyn Progress, what: String| {
        progress.phase(&format!("{what} ({:.1} s into training)", started.elapsed().as_secs_f64()))
    };
    validate_k(k, n, opts)?;

    let scaler = Scaler::fit(&features, training);
    let x = scaler.transform(training);
    say(progress, format!("scaled {} features of {n} training users", features.len()));

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
    let ae_rows = clustering::sample_rows(n, AUTOENCODER_MAX_ROWS, opts.seed ^ 1);
    let ae_train = x.select(Axis(0), &ae_rows);
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

    let (clusters, k_scores, eps, min_points) = match opts.algorithm {
        Algorithm::Kmeans => {
            let (k, scores) = match k {
                Some(k) => (k as usize, Vec::new()),
                None => clustering::choose_k(e.view(), opts.k_range, opts.seed)?,
            };
            // The scoring run's centroids for this k are one more start for the final fit.
            let warm = scores.iter().find(|s| s.k == k).and_then(|s| s.centroids.as_ref());
            let centroids = clustering::kmeans_from(e.view(), k, clustering::FINAL_RUNS, opts.seed, warm)?;
            (Clustering { centroids, radii: None }, scores, None, None)
        }
        Algorithm::Dbscan => {
            let idx = clustering::sample_rows(e.nrows(), DBSCAN_MAX_ROWS, opts.seed ^ 2);
            let s = e.select(Axis(0), &idx);
            let min_points = opts.min_points.unwrap_or(2 * encoder.dims()).max(2);
            let eps = opts.eps.unwrap_or_else(|| clustering::estimate_eps(s.view(), min_points, opts.seed));
            (clustering::dbscan(s.view(), eps, min_points)?, Vec::new(), Some(eps), Some(min_points))
        }
    };
    let clusters = clustering::order_by_size(clusters, e.view());
    say(progress, format!("clustered: {} segments from {n} training users", clusters.k()));

    let labels = clustering::labels_of(&clusters.assign(e.view()));
    let cell_centres = cells::fit(e.view(), &labels, clusters.k(), population as f64 / n.max(1) as f64, opts.seed);
    let report = FitReport {
        algorithm: opts.algorithm,
        embedding: emb_report,
        k_requested: k.map(|k| k as usize),
        k_scores,
        eps,
        min_points,
        training_rows: n,
        metrics: Metrics::default(),
    };
    Ok(Trained {
        model: Model {
            features,
            scaler,
            encoder,
            segment_ids: (1..=clusters.k() as i32).collect(),
            clustering: clusters,
            cells: cell_centres,
        },
        report,
        started,
    })
}

/// Places users under a trained model, batch by batch (in any order: each batch says which
/// rows it holds), keeping per user only the segment, distance, cell and embedding, and per
/// segment the sums its description needs. Memory: about `8 × (dims + 3)` bytes per user plus
/// one batch.
pub struct Placer {
    assignments: Vec<Assignment>,
    cells: Vec<Option<i32>>,
    embeddings: Array2<f64>,
    sums: SegmentSums,
}

impl Placer {
    pub fn new(model: &Model, population: usize) -> Placer {
        let k = model.clustering.k();
        Placer {
            assignments: vec![None; population],
            cells: vec![None; population],
            embeddings: Array2::zeros((population, model.encoder.dims())),
            sums: SegmentSums::new(k, model.features.len()),
        }
    }

    /// Places the users at `rows` (row numbers from 0) whose raw features are `columns`.
    pub fn add(&mut self, model: &Model, rows: &[usize], columns: &[Vec<Option<f64>>]) {
        let (x, e, assigned, cells) = model.place(columns);
        self.sums.add(x.view(), columns, &clustering::labels_of(&assigned));
        for (i, &row) in rows.iter().enumerate() {
            self.assignments[row] = assigned[i];
            self.cells[row] = cells[i];
            self.embeddings.row_mut(row).assign(&e.row(i));
        }
    }

    /// Per user: (segment index, distance), cell and embedding.
    pub fn into_parts(self) -> (Vec<Assignment>, Vec<Option<i32>>, Array2<f64>) {
        (self.assignments, self.cells, self.embeddings)
    }

    /// Evaluates and describes the segments over everyone placed.
    pub fn finish(self, trained: Trained, seed: u64, progress: &mut dyn Progress) -> FitResult {
        let Trained { model, mut report, started } = trained;
        let labels = clustering::labels_of(&self.assignments);
        report.metrics = evaluate(self.embeddings.view(), &labels, &self.assignments, &model.clustering, seed);
        progress.phase(&format!(
            "evaluated: silhouette {:.3}, davies-bouldin {:.3}, coverage {:.3} ({:.1} s into training)",
            report.metrics.silhouette,
            report.metrics.davies_bouldin,
            report.metrics.coverage,
            started.elapsed().as_secs_f64()
        ));
        let names: Vec<String> = model.features.iter().map(|f| f.name.clone()).collect();
        let weights: Vec<f64> = model.scaler.features.iter().map(|f| f.weight).collect();
        let segments = self.sums.describe(&weights, &names);
        FitResult { model, report, segments, assignments: self.assignments, cells: self.cells, embeddings: self.embeddings }
    }
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

/// The checks on `k` against the number of users `n`.
pub fn validate_k(k: Option<i32>, n: usize, opts: &Options) -> Result<()> {
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

/// Per segment: the sums behind its description (scaled-feature means for the profile, raw
/// means over the members that have each feature), added batch by batch.
struct SegmentSums {
    counts: Vec<usize>,
    scaled: Array2<f64>,
    /// (sum, count) per segment and feature.
    raw: Vec<Vec<(f64, usize)>>,
}

impl SegmentSums {
    fn new(k: usize, features: usize) -> SegmentSums {
        SegmentSums { counts: vec![0; k], scaled: Array2::zeros((k, features)), raw: vec![vec![(0.0, 0); features]; k] }
    }

    fn add(&mut self, x: ArrayView2<f64>, columns: &[Vec<Option<f64>>], labels: &[Option<usize>]) {
        for (i, l) in labels.iter().enumerate() {
            if let Some(c) = *l {
                let mut row = self.scaled.row_mut(c);
                row += &x.row(i);
                self.counts[c] += 1;
            }
        }
        for (j, col) in columns.iter().enumerate() {
            for (v, l) in col.iter().zip(labels) {
                if let (Some(v), Some(c)) = (v, l) {
                    if v.is_finite() {
                        self.raw[*c][j].0 += v;
                        self.raw[*c][j].1 += 1;
                    }
                }
            }
        }
    }

    /// Sizes, scaled-feature profiles and names of the segments.
    fn describe(self, weights: &[f64], names: &[String]) -> Vec<Segment> {
        let profiles: Vec<Vec<f64>> = (0..self.counts.len())
            .map(|c| {
                let n = self.counts[c].max(1) as f64;
                self.scaled.row(c).iter().zip(weights).map(|(s, w)| if self.counts[c] > 0 { s / n / w } else { 0.0 }).collect()
            })
            .collect();
        let raw_means: Vec<Vec<f64>> = self
            .raw
            .iter()
            .map(|per| per.iter().map(|&(sum, n)| if n > 0 { sum / n as f64 } else { f64::NAN }).collect())
            .collect();
        let views: Vec<Profile> = profiles.iter().map(|z| Profile { names, z }).collect();
        let seg_names = naming::name_segments(&views);
        profiles
            .into_iter()
            .zip(raw_means)
            .zip(seg_names)
            .zip(self.counts)
            .map(|(((profile, raw_means), name), users)| Segment { name, users, profile, raw_means })
            .collect()
    }
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
    fn placing_in_batches_in_any_order_equals_one_batch() {
        let (defs, cols, _) = raw(100);
        let opts = Options::default();
        let whole = fit(defs.clone(), &cols, Some(3), &opts, &mut |_: &str| {}).unwrap();
        let n = cols[0].len();
        let trained = train(defs, &cols, n, Some(3), &opts, &mut |_: &str| {}).unwrap();
        assert_eq!(trained.model, whole.model);
        let mut placer = Placer::new(&trained.model, n);
        let order: Vec<usize> = (0..n).rev().collect();
        for rows in order.chunks(7) {
            let batch: Vec<Vec<Option<f64>>> = cols.iter().map(|c| rows.iter().map(|&i| c[i]).collect()).collect();
            placer.add(&trained.model, rows, &batch);
        }
        let streamed = placer.finish(trained, opts.seed, &mut |_: &str| {});
        assert_eq!(streamed.assignments, whole.assignments);
        assert_eq!(streamed.cells, whole.cells);
        let diff = (&streamed.embeddings - &whole.embeddings).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        assert!(diff < 1e-12, "embeddings differ by {diff}");
        for (a, b) in streamed.segments.iter().zip(&whole.segments) {
            assert_eq!((a.users, &a.name), (b.users, &b.name));
            assert!(a.profile.iter().zip(&b.profile).all(|(x, y)| (x - y).abs() < 1e-9));
        }
        let (a, b) = (streamed.report.metrics.inertia, whole.report.metrics.inertia);
        assert!((a - b).abs() <= 1e-9 * b.abs());
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
