//! Exact lookalike search by embedding distance without scanning every user.
//!
//! Users live in regions: their segment (the Voronoi region of its centroid among all
//! centroids: a user is assigned to the nearest one) and, inside it, their cell (the Voronoi
//! region of the nearest cell centre among the segment's cells, see `core::cells`). A point of
//! the Voronoi region of `c` against `c'` lies in the half-space of points nearer to `c`, whose
//! distance from a query `q` is at least `(d(q, c)^2 - d(q, c')^2) / (2 d(c, c'))`. So every
//! region has a lower bound on the distance from the query to any member, known before reading
//! it: the search reads regions in order of that bound (one index scan on `(segment_id, cell)`
//! each) and stops when the next bound exceeds the n-th best distance found.

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

/// A region to read: a segment's cell (or the whole segment for a model without cells) and
/// the lower bound on the distance from the query to its members.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub segment_id: i32,
    pub cell: Option<i32>,
    pub bound: f64,
}

fn euclid(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}

/// Distance from `q` to the half-space of points nearer to `c` than to `near` (0 when `q` is
/// in it), from `d(q, near)`, `d(q, c)` and `d(near, c)`.
fn bisector_bound(to_near: f64, to_c: f64, between: f64) -> f64 {
    if between <= 0.0 {
        return 0.0;
    }
    ((to_c * to_c - to_near * to_near) / (2.0 * between)).max(0.0)
}

/// Lower bounds of the query's distance to each member of one level's regions (`centres`).
fn level_bounds(q: &[f64], centres: &[Vec<f64>]) -> Vec<f64> {
    let d: Vec<f64> = centres.iter().map(|c| euclid(q, c)).collect();
    let Some(near) = (0..d.len()).min_by(|&a, &b| d[a].total_cmp(&d[b])) else { return Vec::new() };
    (0..d.len()).map(|j| if j == near { 0.0 } else { bisector_bound(d[near], d[j], euclid(&centres[near], &centres[j])) }).collect()
}

/// Every region, nearest possible member first. `centroids` are (segment id, centroid) by
/// centroid index; `cells[i]` the cell centres of centroid `i` (empty: the segment is one region).
pub fn plan(query: &[f64], centroids: &[(i32, Vec<f64>)], cells: &[Vec<Vec<f64>>]) -> Vec<Region> {
    let centres: Vec<Vec<f64>> = centroids.iter().map(|(_, c)| c.clone()).collect();
    let segment_bounds = level_bounds(query, &centres);
    let mut out = Vec::new();
    for (i, (id, _)) in centroids.iter().enumerate() {
        let seg = segment_bounds[i];
        match cells.get(i).filter(|c| !c.is_empty()) {
            None => out.push(Region { segment_id: *id, cell: None, bound: (seg - SLACK).max(0.0) }),
            Some(cs) => {
                for (j, b) in level_bounds(query, cs).into_iter().enumerate() {
                    out.push(Region { segment_id: *id, cell: Some(j as i32), bound: (seg.max(b) - SLACK).max(0.0) });
                }
            }
        }
    }
    out.sort_by(|a, b| a.bound.total_cmp(&b.bound).then(a.segment_id.cmp(&b.segment_id)).then(a.cell.cmp(&b.cell)));
    out
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

    /// The region search over synthetic clusters finds exactly what a brute-force scan finds,
    /// and reads only part of the data.
    #[test]
    fn region_search_equals_brute_force() {
        use crate::core::cells;
        use ndarray::Array2;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let dims = 6;
        let centroids: Vec<Vec<f64>> = (0..4).map(|_| (0..dims).map(|_| rng.gen_range(-3.0..3.0)).collect()).collect();
        let n = 6000;
        let e = Array2::from_shape_fn((n, dims), |(i, j)| centroids[i % 4][j] + rng.gen_range(-1.5..1.5));
        // assignment to the nearest centroid, as the clustering does
        let labels: Vec<Option<usize>> = (0..n)
            .map(|i| {
                let row: Vec<f64> = e.row(i).to_vec();
                (0..4).min_by(|&a, &b| euclid(&row, &centroids[a]).total_cmp(&euclid(&row, &centroids[b])))
            })
            .collect();
        let cell_centres = cells::fit(e.view(), &labels, 4, 1.0, 3);
        let cell_of = cells::assign(&cell_centres, e.view(), &labels);
        let stored: Vec<Vec<f32>> = (0..n).map(|i| e.row(i).iter().map(|&v| v as f32).collect()).collect();
        let ids: Vec<(i32, Vec<f64>)> = centroids.iter().enumerate().map(|(i, c)| (i as i32 + 10, c.clone())).collect();
        let cell_lists: Vec<Vec<Vec<f64>>> =
            cell_centres.iter().map(|c| c.rows().into_iter().map(|r| r.to_vec()).collect()).collect();
        for q in [0usize, 17, 999, 4321] {
            let mut brute: Vec<(String, f64)> =
                (0..n).filter(|&i| i != q).map(|i| (format!("u{i}"), distance(&stored[q], &stored[i]))).collect();
            brute.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            brute.truncate(10);

            let query: Vec<f64> = stored[q].iter().map(|&v| v as f64).collect();
            let mut best = Nearest::new(10);
            for r in plan(&query, &ids, &cell_lists) {
                if r.bound > best.bound() {
                    break;
                }
                for i in (0..n).filter(|&i| i != q) {
                    if labels[i].map(|s| s as i32 + 10) == Some(r.segment_id) && cell_of[i] == r.cell {
                        best.offer(format!("u{i}"), distance(&stored[q], &stored[i]));
                    }
                }
            }
            assert!(best.examined < n / 2, "reads a part: {}", best.examined);
            assert_eq!(best.into_sorted(), brute, "query {q}");
        }
    }

    #[test]
    fn the_bisector_bound_is_a_lower_bound() {
        let near = [0.0, 0.0];
        let c = [4.0, 0.0];
        // the half-space nearer to c starts at x = 2: a query at (-1, 0) is 3 away from it
        let q = [-1.0, 0.0];
        assert!((bisector_bound(euclid(&q, &near), euclid(&q, &c), 4.0) - 3.0).abs() < 1e-12);
        assert_eq!(bisector_bound(1.0, 0.5, 4.0), 0.0);
    }
}
