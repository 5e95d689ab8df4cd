//! Cells: a second level of Voronoi regions inside each segment, for exact lookalike search.
//!
//! Each segment is split into up to [`MAX_CELLS`] cells of about [`CELL_USERS`] users around
//! centres fitted on a sample (seeded members, then Lloyd iterations); every user belongs to the
//! cell whose centre is nearest among their segment's cells. Because both levels are Voronoi
//! regions (a user is nearer to their segment's centroid than to any other centroid, and nearer
//! to their cell's centre than to the segment's other centres), the distance from a query to any
//! member of a region has a lower bound that needs no data (see `neighbors::plan`).

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::metrics::sq_dist;
use super::parallel;

/// Users per cell aimed at.
pub const CELL_USERS: usize = 500;
/// Cells per segment, at most.
pub const MAX_CELLS: usize = 256;
/// Sample points per cell used to place the centres.
const SAMPLE_PER_CELL: usize = 40;
const LLOYD_ITERATIONS: usize = 3;

/// Index of the nearest row of `centres`.
pub fn nearest(centres: &Array2<f64>, x: ArrayView1<f64>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centres.rows().into_iter().enumerate() {
        let d = sq_dist(x, c);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// Cell centres for each of the `k` segments (`labels` by row of `e`; `None` is noise). `e` may
/// be a sample of the population: `scale` (population / rows of `e`) sizes the cells for the
/// whole population.
pub fn fit(e: ArrayView2<f64>, labels: &[Option<usize>], k: usize, scale: f64, seed: u64) -> Vec<Array2<f64>> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, l) in labels.iter().enumerate() {
        if let Some(c) = l {
            members[*c].push(i);
        }
    }
    parallel::install(|| members
        .par_iter()
        .enumerate()
        .map(|(s, rows)| {
            let members = (rows.len() as f64 * scale.max(1.0)).round() as usize;
            let cells = members.div_ceil(CELL_USERS).clamp(1, MAX_CELLS);
            if rows.is_empty() {
                return Array2::zeros((0, e.ncols()));
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let take = (cells * SAMPLE_PER_CELL).min(rows.len());
            let picked: Vec<usize> = sample(&mut rng, rows.len(), take).into_iter().map(|i| rows[i]).collect();
            let pts = e.select(Axis(0), &picked);
            let mut centres = pts.select(Axis(0), &(0..cells.min(pts.nrows())).collect::<Vec<_>>());
            for _ in 0..LLOYD_ITERATIONS {
                let mut sums = Array2::<f64>::zeros(centres.raw_dim());
                let mut counts = vec![0usize; centres.nrows()];
                for p in pts.rows() {
                    let c = nearest(&centres, p);
                    sums.row_mut(c).scaled_add(1.0, &p);
                    counts[c] += 1;
                }
                for (c, n) in counts.iter().enumerate() {
                    if *n > 0 {
                        let mean = sums.row(c).mapv(|v| v / *n as f64);
                        centres.row_mut(c).assign(&mean);
                    }
                }
            }
            centres
        })
        .collect())
}

/// The cell of each row: the nearest centre of its segment (`None` for noise).
pub fn assign(cells: &[Array2<f64>], e: ArrayView2<f64>, labels: &[Option<usize>]) -> Vec<Option<i32>> {
    let one = |i: usize| labels[i].and_then(|s| cells.get(s)).filter(|c| c.nrows() > 0).map(|c| nearest(c, e.row(i)) as i32);
    if e.nrows() < 4096 {
        return (0..e.nrows()).map(one).collect();
    }
    parallel::install(|| (0..e.nrows()).into_par_iter().map(one).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn every_member_is_in_its_nearest_cell_and_cells_are_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let e = Array2::from_shape_fn((3000, 3), |_| rng.gen_range(-1.0..1.0));
        let labels: Vec<Option<usize>> = (0..3000).map(|i| if i % 10 == 0 { None } else { Some(i % 2) }).collect();
        let cells = fit(e.view(), &labels, 2, 1.0, 1);
        assert_eq!(cells.len(), 2);
        assert!(cells.iter().all(|c| c.nrows() == 3 && c.ncols() == 3), "1350 users a segment: 3 cells");
        let assigned = assign(&cells, e.view(), &labels);
        for (i, a) in assigned.iter().enumerate() {
            match labels[i] {
                None => assert!(a.is_none()),
                Some(s) => assert_eq!(a.unwrap() as usize, nearest(&cells[s], e.row(i))),
            }
        }
        // deterministic
        assert_eq!(fit(e.view(), &labels, 2, 1.0, 1), cells);
    }
}
