//! Privacy of published aggregates: small segments are merged before anything about them is
//! reported (no report can single out a person), and optional differential privacy adds
//! Laplace noise to counts and sums.
//!
//! The mechanism (documented in the README): each user contributes to one segment row, so
//! segments compose in parallel; within a row the budget `epsilon` is split evenly between the
//! count and each published sum. Sums are of values clipped to `[0, bound]`, so one user changes
//! a sum by at most `bound` (its sensitivity) and a count by 1. Means are noisy sum / noisy
//! count (post-processing, no extra cost).

use rand::Rng;

/// One segment's exact aggregates before publication.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentAggregate {
    /// `None` for the merged row of small segments.
    pub segment_id: Option<i32>,
    pub name: String,
    pub users: f64,
    /// Per published measure: (sum of clipped values, how many users have the value).
    pub sums: Vec<(f64, f64)>,
}

impl SegmentAggregate {
    pub fn mean(&self, j: usize) -> Option<f64> {
        let (s, n) = self.sums[j];
        (n >= 1.0).then(|| s / n)
    }
}

/// Name of the row that stands for the merged small segments.
pub const MERGED_NAME: &str = "(small segments merged)";

/// Merges every segment with fewer than `min_size` users into one row, and drops that row too
/// when the merged group is still smaller than `min_size`. Order is kept; the merged row is last.
pub fn merge_small(rows: Vec<SegmentAggregate>, min_size: f64) -> Vec<SegmentAggregate> {
    let measures = rows.first().map_or(0, |r| r.sums.len());
    let mut merged = SegmentAggregate {
        segment_id: None,
        name: MERGED_NAME.to_string(),
        users: 0.0,
        sums: vec![(0.0, 0.0); measures],
    };
    let mut kept = Vec::with_capacity(rows.len() + 1);
    for r in rows {
        if r.users >= min_size {
            kept.push(r);
        } else {
            merged.users += r.users;
            for (m, s) in merged.sums.iter_mut().zip(&r.sums) {
                m.0 += s.0;
                m.1 += s.1;
            }
        }
    }
    if merged.users >= min_size {
        kept.push(merged);
    }
    kept
}

/// A draw from Laplace(0, scale), by inverting its CDF.
pub fn laplace<R: Rng + ?Sized>(rng: &mut R, scale: f64) -> f64 {
    let u: f64 = rng.gen_range(-0.5..0.5);
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln()
}

/// Adds Laplace noise for `epsilon`-differential privacy to each row's count and sums, given the
/// sensitivity (`bounds`) of each sum. Noisy counts are floored at 0.
pub fn add_noise<R: Rng + ?Sized>(rows: &mut [SegmentAggregate], epsilon: f64, bounds: &[f64], rng: &mut R) {
    let parts = 1.0 + bounds.len() as f64;
    let eps = epsilon / parts;
    for r in rows.iter_mut() {
        r.users = (r.users + laplace(rng, 1.0 / eps)).max(0.0);
        for ((sum, n), b) in r.sums.iter_mut().zip(bounds) {
            *sum += laplace(rng, b / eps);
            // the count of users with the value is released too (as the mean's denominator)
            *n = (*n + laplace(rng, 1.0 / eps)).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn row(id: i32, users: f64) -> SegmentAggregate {
        SegmentAggregate { segment_id: Some(id), name: format!("s{id}"), users, sums: vec![(users * 2.0, users)] }
    }

    #[test]
    fn small_segments_are_merged_and_a_small_remainder_dropped() {
        let out = merge_small(vec![row(1, 50.0), row(2, 4.0), row(3, 7.0)], 10.0);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].segment_id, None);
        assert_eq!(out[1].users, 11.0);
        assert_eq!(out[1].mean(0), Some(2.0));
        let out = merge_small(vec![row(1, 50.0), row(2, 4.0)], 10.0);
        assert_eq!(out.len(), 1, "a merged group of 4 would single people out");
        assert_eq!(merge_small(vec![row(1, 50.0), row(2, 4.0)], 1.0).len(), 2);
    }

    #[test]
    fn laplace_has_the_right_spread() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| laplace(&mut rng, 2.0)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let mad = draws.iter().map(|x| x.abs()).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((mad - 2.0).abs() < 0.05, "E|X| = scale, got {mad}");
    }

    #[test]
    fn noise_shrinks_as_epsilon_grows() {
        let err = |eps: f64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let mut total = 0.0;
            for _ in 0..200 {
                let mut rows = vec![row(1, 100.0)];
                add_noise(&mut rows, eps, &[10.0], &mut rng);
                total += (rows[0].users - 100.0).abs();
            }
            total / 200.0
        };
        let (loose, tight) = (err(0.1), err(100.0));
        assert!(loose > 10.0 && tight < 0.1, "noise at eps 0.1: {loose}, at eps 100: {tight}");
    }
}
