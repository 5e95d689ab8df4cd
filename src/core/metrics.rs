//! Cluster quality metrics (silhouette, Davies–Bouldin, Calinski–Harabasz, inertia) and the
//! adjusted Rand index used to check segments against ground truth. Noise points (`None`) are
//! left out of every metric except coverage.

use ndarray::{Array2, ArrayView1, ArrayView2};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

#[inline]
pub fn sq_dist(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    match (a.as_slice(), b.as_slice()) {
        (Some(a), Some(b)) => sq_dist_slice(a, b),
        _ => a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum(),
    }
}

/// Squared Euclidean distance of two equally long slices, in four running sums (which the
/// compiler keeps in vector registers: the hot loop of k-means and every assignment).
#[inline]
pub fn sq_dist_slice(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            let t = x[i] - y[i];
            acc[i] += t * t;
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Exact silhouette up to this many points; above it, a seeded sample of this size.
pub const SILHOUETTE_EXACT_MAX: usize = 10_000;

/// Mean silhouette over the points that have a cluster. Returns (value, sampled?).
pub fn silhouette(x: ArrayView2<f64>, labels: &[Option<usize>], k: usize, seed: u64) -> (f64, bool) {
    let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i].is_some()).collect();
    let sampled = members.len() > SILHOUETTE_EXACT_MAX;
    if sampled {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let picks = sample(&mut rng, members.len(), SILHOUETTE_EXACT_MAX).into_vec();
        let mut chosen: Vec<usize> = picks.into_iter().map(|p| members[p]).collect();
        chosen.sort_unstable();
        members = chosen;
    }
    let mut counts = vec![0usize; k];
    for &i in &members {
        counts[labels[i].expect("member has a label")] += 1;
    }
    if counts.iter().filter(|&&c| c > 0).count() < 2 {
        return (0.0, sampled);
    }
    let scores: Vec<f64> = super::parallel::install(|| members
        .par_iter()
        .map(|&i| {
            let ci = labels[i].expect("member has a label");
            if counts[ci] <= 1 {
                return 0.0;
            }
            let mut sums = vec![0.0; k];
            for &j in &members {
                if j != i {
                    sums[labels[j].expect("member has a label")] += sq_dist(x.row(i), x.row(j)).sqrt();
                }
            }
            let a = sums[ci] / (counts[ci] - 1) as f64;
            let b = (0..k)
                .filter(|&c| c != ci && counts[c] > 0)
                .map(|c| sums[c] / counts[c] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 { (b - a) / m } else { 0.0 }
        })
        .collect());
    (scores.iter().sum::<f64>() / scores.len() as f64, sampled)
}

/// Sum of squared distances of every clustered point to its centroid.
pub fn inertia(x: ArrayView2<f64>, labels: &[Option<usize>], centroids: &Array2<f64>) -> f64 {
    labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|c| sq_dist(x.row(i), centroids.row(c))))
        .sum()
}

/// Davies–Bouldin index (lower is better). Empty clusters are ignored.
pub fn davies_bouldin(x: ArrayView2<f64>, labels: &[Option<usize>], centroids: &Array2<f64>) -> f64 {
    let k = centroids.nrows();
    let mut scatter = vec![0.0; k];
    let mut counts = vec![0usize; k];
    for (i, l) in labels.iter().enumerate() {
        if let Some(c) = *l {
            scatter[c] += sq_dist(x.row(i), centroids.row(c)).sqrt();
            counts[c] += 1;
        }
    }
    let live: Vec<usize> = (0..k).filter(|&c| counts[c] > 0).collect();
    if live.len() < 2 {
        return 0.0;
    }
    for &c in &live {
        scatter[c] /= counts[c] as f64;
    }
    let total: f64 = live
        .iter()
        .map(|&i| {
            live.iter()
                .filter(|&&j| j != i)
                .map(|&j| {
                    let d = sq_dist(centroids.row(i), centroids.row(j)).sqrt();
                    if d > 0.0 { (scatter[i] + scatter[j]) / d } else { f64::INFINITY }
                })
                .fold(0.0, f64::max)
        })
        .sum();
    total / live.len() as f64
}

/// Calinski–Harabasz index (higher is better).
pub fn calinski_harabasz(x: ArrayView2<f64>, labels: &[Option<usize>], centroids: &Array2<f64>) -> f64 {
    let k = centroids.nrows();
    let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i].is_some()).collect();
    let n = idx.len();
    let mut counts = vec![0usize; k];
    for &i in &idx {
        counts[labels[i].expect("filtered")] += 1;
    }
    let live = counts.iter().filter(|&&c| c > 0).count();
    if live < 2 || n <= live {
        return 0.0;
    }
    let mut mean = ndarray::Array1::<f64>::zeros(x.ncols());
    for &i in &idx {
        mean += &x.row(i);
    }
    mean /= n as f64;
    let between: f64 = (0..k)
        .filter(|&c| counts[c] > 0)
        .map(|c| counts[c] as f64 * sq_dist(centroids.row(c), mean.view()))
        .sum();
    let within = inertia(x, labels, centroids);
    if within <= 0.0 {
        return f64::INFINITY;
    }
    (between / (live - 1) as f64) / (within / (n - live) as f64)
}

/// Adjusted Rand index between two labelings of the same points (noise counts as its own label).
pub fn adjusted_rand_index<A: Eq + std::hash::Hash, B: Eq + std::hash::Hash>(a: &[A], b: &[B]) -> f64 {
    use std::collections::HashMap;
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let mut table: HashMap<(&A, &B), f64> = HashMap::new();
    let mut rows: HashMap<&A, f64> = HashMap::new();
    let mut cols: HashMap<&B, f64> = HashMap::new();
    for (x, y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1.0;
        *rows.entry(x).or_default() += 1.0;
        *cols.entry(y).or_default() += 1.0;
    }
    let index: f64 = table.values().map(|&v| c2(v)).sum();
    let sa: f64 = rows.values().map(|&v| c2(v)).sum();
    let sb: f64 = cols.values().map(|&v| c2(v)).sum();
    let expected = sa * sb / c2(n);
    let max = (sa + sb) / 2.0;
    if (max - expected).abs() < 1e-12 {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    fn two_blobs() -> (Array2<f64>, Vec<Option<usize>>, Array2<f64>) {
        let x = arr2(&[[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]]);
        let labels = vec![Some(0), Some(0), Some(1), Some(1)];
        let c = arr2(&[[0.0, 0.5], [10.0, 0.5]]);
        (x, labels, c)
    }

    #[test]
    fn metrics_on_separated_blobs() {
        let (x, l, c) = two_blobs();
        let (s, sampled) = silhouette(x.view(), &l, 2, 0);
        assert!(!sampled);
        // a = 1, b = mean(10, sqrt(101)) for every point
        let b = (10.0 + 101f64.sqrt()) / 2.0;
        assert!((s - (b - 1.0) / b).abs() < 1e-12);
        assert!((inertia(x.view(), &l, &c) - 1.0).abs() < 1e-12);
        assert!((davies_bouldin(x.view(), &l, &c) - 0.1).abs() < 1e-12);
        assert!(calinski_harabasz(x.view(), &l, &c) > 100.0);
    }

    #[test]
    fn noise_is_ignored() {
        let (x, mut l, c) = two_blobs();
        l[3] = None;
        assert!((inertia(x.view(), &l, &c) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn ari_is_permutation_invariant() {
        let a = [0, 0, 1, 1, 2, 2];
        let b = [5, 5, 3, 3, 9, 9];
        assert!((adjusted_rand_index(&a, &b) - 1.0).abs() < 1e-12);
        let c = [0, 1, 0, 1, 0, 1];
        assert!(adjusted_rand_index(&a, &c) < 0.1);
    }
}
