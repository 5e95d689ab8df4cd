//! Lookalike search by embedding distance without scanning every user.
//!
//! Every user row stores its distance to its segment's centroid, and the users table is
//! indexed on (segment_id, distance). By the triangle inequality a user `x` of segment `s` is at
//! least `|d(x, c_s) - d(q, c_s)|` from the query `q`, so once `n` candidates are known with the
//! n-th best distance `r`, only users with `d(x, c_s)` within `d(q, c_s) ± r` can be closer: an
//! index range scan per segment (iDistance). Segments whose ball (centroid, largest member
//! distance) is farther than `r` are skipped entirely.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

/// Slack for the bounds: embeddings are stored as `real`, the distances were computed in
/// double precision before rounding.
pub const SLACK: f64 = 1e-4;

pub fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

#[derive(Debug, PartialEq)]
struct Candidate {
    distance: f64,
    key: String,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance).then_with(|| self.key.cmp(&other.key))
    }
}

/// The `n` nearest users seen so far (ties broken by key, so results are deterministic).
pub struct Nearest {
    n: usize,
    heap: BinaryHeap<Candidate>,
    seen: HashSet<String>,
    /// How many rows were examined (for the measurements in BENCHMARKS.md).
    pub examined: usize,
}

impl Nearest {
    pub fn new(n: usize) -> Self {
        Nearest { n, heap: BinaryHeap::new(), seen: HashSet::new(), examined: 0 }
    }

    pub fn offer(&mut self, key: String, distance: f64) {
        self.examined += 1;
        if self.n == 0 || !self.seen.insert(key.clone()) {
            return;
        }
        let c = Candidate { distance, key };
        if self.heap.len() < self.n {
            self.heap.push(c);
        } else if self.heap.peek().is_some_and(|worst| c < *worst) {
            self.heap.pop();
            self.heap.push(c);
        }
    }

    pub fn is_full(&self) -> bool {
        self.heap.len() >= self.n
    }

    /// The distance a new candidate must beat (infinite until `n` are known).
    pub fn bound(&self) -> f64 {
        if self.is_full() {
            self.heap.peek().map_or(f64::INFINITY, |c| c.distance)
        } else {
            f64::INFINITY
        }
    }

    pub fn into_sorted(self) -> Vec<(String, f64)> {
        self.heap.into_sorted_vec().into_iter().map(|c| (c.key, c.distance)).collect()
    }
}

/// A segment as the search sees it: the query's distance to its centroid and the largest
/// distance of a member to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ball {
    pub segment_id: i32,
    pub to_query: f64,
    pub radius: f64,
}

impl Ball {
    /// No member can be nearer than this.
    pub fn lower_bound(&self) -> f64 {
        (self.to_query - self.radius).max(0.0)
    }

    /// The range of member-to-centroid distances that can hold a user within `bound` of the
    /// query, or `None` when the segment cannot.
    pub fn band(&self, bound: f64) -> Option<(f64, f64)> {
        if self.lower_bound() > bound + SLACK {
            return None;
        }
        Some(((self.to_query - bound - SLACK).max(0.0), (self.to_query + bound + SLACK).min(self.radius + SLACK)))
    }
}

/// The order in which segments are searched: nearest possible member first.
pub fn search_order(mut balls: Vec<Ball>) -> Vec<Ball> {
    balls.sort_by(|a, b| a.lower_bound().total_cmp(&b.lower_bound()).then(a.segment_id.cmp(&b.segment_id)));
    balls
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn nearest_keeps_the_best_n_once_each() {
        let mut n = Nearest::new(2);
        n.offer("a".into(), 3.0);
        assert_eq!(n.bound(), f64::INFINITY);
        n.offer("b".into(), 1.0);
        n.offer("c".into(), 2.0);
        n.offer("b".into(), 1.0);
        assert_eq!(n.bound(), 2.0);
        assert_eq!(n.into_sorted(), vec![("b".to_string(), 1.0), ("c".to_string(), 2.0)]);
    }

    /// The banded search over synthetic clusters finds exactly what a brute-force scan finds.
    #[test]
    fn banded_search_equals_brute_force() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let dims = 6;
        let centroids: Vec<Vec<f32>> = (0..4).map(|_| (0..dims).map(|_| rng.gen_range(-3.0..3.0)).collect()).collect();
        let users: Vec<(String, usize, Vec<f32>)> = (0..2000)
            .map(|i| {
                let s = i % 4;
                let e = centroids[s].iter().map(|c| c + rng.gen_range(-1.0f32..1.0)).collect();
                (format!("u{i}"), s, e)
            })
            .collect();
        let to_centroid: Vec<f64> = users.iter().map(|(_, s, e)| distance(e, &centroids[*s])).collect();
        for q in [0usize, 17, 999] {
            let query = &users[q].2;
            let mut brute: Vec<(String, f64)> = users
                .iter()
                .filter(|(k, _, _)| *k != users[q].0)
                .map(|(k, _, e)| (k.clone(), distance(query, e)))
                .collect();
            brute.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            brute.truncate(10);

            let balls = search_order(
                (0..4)
                    .map(|s| Ball {
                        segment_id: s as i32,
                        to_query: distance(query, &centroids[s]),
                        radius: (0..users.len()).filter(|&i| users[i].1 == s).map(|i| to_centroid[i]).fold(0.0, f64::max),
                    })
                    .collect(),
            );
            let mut best = Nearest::new(10);
            for b in &balls {
                let Some((lo, hi)) = b.band(best.bound()) else { continue };
                for (i, (k, s, e)) in users.iter().enumerate() {
                    if *s as i32 == b.segment_id && to_centroid[i] >= lo && to_centroid[i] <= hi && i != q {
                        best.offer(k.clone(), distance(query, e));
                    }
                }
            }
            assert!(best.examined < users.len(), "the bands prune");
            assert_eq!(best.into_sorted(), brute);
        }
    }
}
