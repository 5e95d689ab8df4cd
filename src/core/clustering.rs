//! Clustering glue: K-means (our own, see `kmeans`) with k-means++ (several inits, best
//! inertia), DBSCAN (linfa-clustering) with an eps read off the k-distance curve, automatic k by silhouette with
//! Davies–Bouldin as tie-breaker, and the nearest-centroid rule every later assignment uses.

use linfa::prelude::*;
use linfa_clustering::Dbscan;
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::error::{ErrorKind, Result, SegError};
use super::metrics::{davies_bouldin, silhouette, sq_dist};
use super::parallel;

/// A fitted clustering in embedding space. DBSCAN models keep a radius per cluster: a user
/// farther than it from every centroid is noise (no segment).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Clustering {
    pub centroids: Array2<f64>,
    pub radii: Option<Vec<f64>>,
}

impl Clustering {
    pub fn k(&self) -> usize {
        self.centroids.nrows()
    }

    /// Nearest centroid and its distance, or `None` for DBSCAN noise.
    pub fn assign_one(&self, e: ArrayView1<f64>) -> Option<(usize, f64)> {
        let (c, d2) = self
            .centroids
            .rows()
            .into_iter()
            .map(|row| sq_dist(e, row))
            .enumerate()
            .fold((0, f64::INFINITY), |best, (c, d)| if d < best.1 { (c, d) } else { best });
        let d = d2.sqrt();
        match &self.radii {
            Some(r) if d > r[c] => None,
            _ => Some((c, d)),
        }
    }

    /// Assigns every row (in parallel for large batches: pure computation only; waking the
    /// thread pool costs more than a live update's handful of users).
    pub fn assign(&self, x: ArrayView2<f64>) -> Vec<Option<(usize, f64)>> {
        if x.nrows() < 4096 {
            return (0..x.nrows()).map(|i| self.assign_one(x.row(i))).collect();
        }
        parallel::install(|| (0..x.nrows()).into_par_iter().map(|i| self.assign_one(x.row(i))).collect())
    }
}

/// The nearest of `k` centroids stored row-major in `centroids` (`dims` each) and its squared
/// distance: the assignment step of k-means, for callers holding plain slices.
pub fn nearest_row(centroids: &[f64], dims: usize, x: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (c, row) in centroids.chunks_exact(dims.max(1)).enumerate() {
        let d: f64 = row.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// Mean of the rows of each cluster (zeros for an empty one) and the cluster sizes.
pub fn cluster_means(x: ArrayView2<f64>, labels: &[Option<usize>], k: usize) -> (Array2<f64>, Vec<usize>) {
    let mut means = Array2::<f64>::zeros((k, x.ncols()));
    let mut counts = vec![0usize; k];
    for (i, l) in labels.iter().enumerate() {
        if let Some(c) = *l {
            let mut row = means.row_mut(c);
            row += &x.row(i);
            counts[c] += 1;
        }
    }
    for (c, &n) in counts.iter().enumerate() {
        if n > 0 {
            means.row_mut(c).mapv_inplace(|v| v / n as f64);
        }
    }
    (means, counts)
}

pub fn labels_of(assigned: &[Option<(usize, f64)>]) -> Vec<Option<usize>> {
    assigned.iter().map(|a| a.map(|(c, _)| c)).collect()
}

/// A seeded sample of at most `max` row indices, in ascending order (all rows if fewer).
pub fn sample_rows(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut idx = sample(&mut ChaCha8Rng::seed_from_u64(seed), n, max).into_vec();
    idx.sort_unstable();
    idx
}

/// Relative tolerance of the fits (see `kmeans`): tighter than scikit-learn's default 1e-4,
/// which only the benchmark uses; Hamerly's bounds make the extra iterations cheap.
const TOLERANCE: f64 = 1e-6;

/// One k-means run (k-means++ seeding, at most `max_iter` iterations, scikit-learn's default
/// tolerance) and its inertia: what `make bench` compares with scikit-learn's
/// `KMeans(n_init=1)` on the same matrix.
pub fn kmeans_single(x: ArrayView2<f64>, k: usize, max_iter: usize, seed: u64) -> Result<(Array2<f64>, f64)> {
    let fit = super::kmeans::single(x, k, max_iter, 1e-4, seed)?;
    Ok((fit.centroids, fit.inertia))
}

/// K-means with k-means++ seeding; the best of `runs` initialisations by inertia.
pub fn kmeans(x: ArrayView2<f64>, k: usize, runs: usize, seed: u64) -> Result<Array2<f64>> {
    kmeans_from(x, k, runs, seed, None)
}

/// K-means that also tries `warm` (previous centroids) as one start, keeping whichever start
/// ends with the lowest inertia on `x`.
pub fn kmeans_from(
    x: ArrayView2<f64>,
    k: usize,
    runs: usize,
    seed: u64,
    warm: Option<&Array2<f64>>,
) -> Result<Array2<f64>> {
    Ok(super::kmeans::best_of(x, k, runs, 300, TOLERANCE, seed, warm)?.centroids)
}

/// Orders clusters by size (largest first, ties by centroid coordinates) so segment ids are
/// stable for the same data and seed. Returns the reordered clustering.
pub fn order_by_size(c: Clustering, x: ArrayView2<f64>) -> Clustering {
    let labels = labels_of(&c.assign(x));
    let mut sizes = vec![0usize; c.k()];
    for l in labels.into_iter().flatten() {
        sizes[l] += 1;
    }
    let mut order: Vec<usize> = (0..c.k()).collect();
    order.sort_by(|&a, &b| {
        sizes[b].cmp(&sizes[a]).then_with(|| {
            let (ra, rb) = (c.centroids.row(a), c.centroids.row(b));
            ra.iter().zip(rb.iter()).map(|(p, q)| p.total_cmp(q)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    Clustering {
        centroids: c.centroids.select(Axis(0), &order),
        radii: c.radii.map(|r| order.iter().map(|&i| r[i]).collect()),
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KScore {
    pub k: usize,
    #[serde(skip)]
    pub centroids: Option<Array2<f64>>,
    pub silhouette: f64,
    pub davies_bouldin: f64,
    pub inertia: f64,
}

/// Points used to score each k.
pub const AUTO_K_SAMPLE: usize = 4_000;
/// k-means++ starts per k when scoring: a k scored on a poor local optimum would be passed
/// over, so scoring uses many (cheap, on the small sample) starts.
pub const AUTO_K_RUNS: usize = 10;
/// k-means++ starts of the final fit (plus the scoring run's centroids as a warm start).
pub const FINAL_RUNS: usize = 8;

/// Tries every k in `range` on a sample; picks the best silhouette, Davies–Bouldin breaking
/// near-ties (within 0.01). Returns the chosen k and every score.
pub fn choose_k(x: ArrayView2<f64>, range: (usize, usize), seed: u64) -> Result<(usize, Vec<KScore>)> {
    let idx = sample_rows(x.nrows(), AUTO_K_SAMPLE, seed);
    let s = x.select(Axis(0), &idx);
    let hi = range.1.min(s.nrows().saturating_sub(1));
    let mut scores = Vec::new();
    for k in range.0..=hi {
        let centroids = kmeans(s.view(), k, AUTO_K_RUNS, seed.wrapping_add(k as u64))?;
        let c = Clustering { centroids, radii: None };
        let labels = labels_of(&c.assign(s.view()));
        let (sil, _) = silhouette(s.view(), &labels, k, seed);
        scores.push(KScore {
            k,
            centroids: Some(c.centroids.clone()),
            silhouette: sil,
            davies_bouldin: davies_bouldin(s.view(), &labels, &c.centroids),
            inertia: super::metrics::inertia(s.view(), &labels, &c.centroids),
        });
    }
    let best = scores.iter().map(|s| s.silhouette).fold(f64::NEG_INFINITY, f64::max);
    let chosen = scores
        .iter()
        .filter(|s| s.silhouette >= best - 0.01)
        .min_by(|a, b| a.davies_bouldin.total_cmp(&b.davies_bouldin).then(a.k.cmp(&b.k)))
        .map(|s| s.k)
        .ok_or_else(|| {
            SegError::invalid("not enough users to choose k")
                .detail(format!("{} users, k_range [{}, {}]", x.nrows(), range.0, range.1))
        })?;
    Ok((chosen, scores))
}

/// eps from the k-distance curve: the distance to the `min_points`-th neighbour, sorted, at the
/// knee (the point farthest from the chord between the curve's ends).
pub fn estimate_eps(x: ArrayView2<f64>, min_points: usize, seed: u64) -> f64 {
    let probe = sample_rows(x.nrows(), 2_000, seed);
    let kth = min_points.min(x.nrows().saturating_sub(1)).max(1);
    let mut kd: Vec<f64> = parallel::install(|| probe
        .par_iter()
        .map(|&i| {
            let mut d: Vec<f64> = (0..x.nrows()).filter(|&j| j != i).map(|j| sq_dist(x.row(i), x.row(j))).collect();
            let kth = kth.min(d.len()).max(1) - 1;
            d.select_nth_unstable_by(kth, f64::total_cmp);
            d[kth].sqrt()
        })
        .collect());
    kd.sort_by(f64::total_cmp);
    let n = kd.len();
    if n < 3 {
        return kd.last().copied().unwrap_or(1.0).max(1e-6);
    }
    let (x0, y0, x1, y1) = (0.0, kd[0], (n - 1) as f64, kd[n - 1]);
    let (dx, dy) = (x1 - x0, y1 - y0);
    let norm = (dx * dx + dy * dy).sqrt().max(1e-300);
    let knee = (0..n)
        .max_by(|&a, &b| {
            let da = (dy * a as f64 - dx * (kd[a] - y0)).abs() / norm;
            let db = (dy * b as f64 - dx * (kd[b] - y0)).abs() / norm;
            da.total_cmp(&db)
        })
        .unwrap_or(n - 1);
    kd[knee].max(1e-6)
}

/// DBSCAN on `x`; clusters become centroids with a radius (the farthest member).
pub fn dbscan(x: ArrayView2<f64>, eps: f64, min_points: usize) -> Result<Clustering> {
    let labels = Dbscan::params(min_points).tolerance(eps).transform(&x.to_owned()).map_err(|e| {
        SegError::invalid("invalid dbscan parameters").detail(e.to_string())
    })?;
    let k = labels.iter().flatten().map(|&c| c + 1).max().unwrap_or(0);
    if k == 0 {
        return Err(SegError::new(ErrorKind::TrainingFailed, "dbscan found no clusters")
            .detail(format!("eps {eps:.4}, min_points {min_points}: every user is noise"))
            .hint("pass a larger \"eps\" or a smaller \"min_points\" in options"));
    }
    let labels: Vec<Option<usize>> = labels.to_vec();
    let (centroids, _) = cluster_means(x, &labels, k);
    let mut radii = vec![0.0f64; k];
    for (i, l) in labels.iter().enumerate() {
        if let Some(c) = *l {
            radii[c] = radii[c].max(sq_dist(x.row(i), centroids.row(c)).sqrt());
        }
    }
    Ok(Clustering { centroids, radii: Some(radii) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::adjusted_rand_index;
    use rand::Rng;

    /// `k` Gaussian-ish blobs of `per` points in 3-D, far apart.
    fn blobs(k: usize, per: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Array2::zeros((k * per, 3));
        let mut truth = Vec::new();
        for c in 0..k {
            for p in 0..per {
                for d in 0..3 {
                    let center = if d == c % 3 { 10.0 * (1 + c / 3) as f64 } else { 0.0 };
                    x[[c * per + p, d]] = center + rng.gen_range(-1.0..1.0);
                }
                truth.push(c);
            }
        }
        (x, truth)
    }

    #[test]
    fn kmeans_finds_blobs_and_auto_k_counts_them() {
        let (x, truth) = blobs(5, 100, 1);
        let (k, scores) = choose_k(x.view(), (2, 8), 7).unwrap();
        assert_eq!(k, 5, "{scores:?}");
        assert_eq!(scores.len(), 7);
        let c = Clustering { centroids: kmeans(x.view(), 5, 3, 7).unwrap(), radii: None };
        let labels: Vec<usize> = labels_of(&c.assign(x.view())).into_iter().map(|l| l.unwrap()).collect();
        assert!((adjusted_rand_index(&labels, &truth) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn kmeans_is_deterministic() {
        let (x, _) = blobs(4, 50, 2);
        assert_eq!(kmeans(x.view(), 4, 3, 11).unwrap(), kmeans(x.view(), 4, 3, 11).unwrap());
    }

    #[test]
    fn dbscan_marks_far_points_as_noise() {
        let (mut x, _) = blobs(3, 60, 3);
        x.row_mut(0).assign(&ndarray::arr1(&[500.0, 500.0, 500.0]));
        let eps = estimate_eps(x.view(), 6, 1);
        assert!(eps > 0.1 && eps < 10.0, "eps {eps}");
        let c = dbscan(x.view(), eps, 6).unwrap();
        assert_eq!(c.k(), 3);
        assert!(c.assign_one(x.row(0)).is_none(), "outlier is noise");
        assert!(c.assign_one(x.row(5)).is_some());
    }

    #[test]
    fn order_by_size_puts_largest_first() {
        let (x, _) = blobs(3, 10, 4);
        let small = x.slice(ndarray::s![..25, ..]).to_owned(); // blob sizes 10, 10, 5
        let c = Clustering { centroids: kmeans(small.view(), 3, 3, 1).unwrap(), radii: None };
        let c = order_by_size(c, small.view());
        let labels = labels_of(&c.assign(small.view()));
        let last = labels.iter().filter(|l| **l == Some(2)).count();
        assert_eq!(last, 5);
    }
}
