//! K-means: greedy k-means++ seeding and Lloyd's algorithm with Hamerly's bounds, in parallel
//! over fixed chunks of rows.
//!
//! Hamerly's algorithm gives exactly Lloyd's result while skipping most distance computations:
//! each row keeps an upper bound on the distance to its centroid and a lower bound on the
//! distance to every other centroid; when centroids move, the bounds move by at most the shifts,
//! and a row is only looked at again when its bounds no longer prove its label. Seeding is
//! scikit-learn's greedy k-means++ (2 + ln k candidates per centre, the one lowering the
//! potential most wins). Convergence: no label changed, or the squared centroid shift summed
//! over centroids fell below `tol` times the mean per-column variance (scikit-learn's rule).
//!
//! Per-chunk partial sums are combined in chunk order, so the result is the same for any
//! number of threads (see `parallel`).

use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;
use rayon::prelude::*;

use super::error::{ErrorKind, Result, SegError};
use super::metrics::sq_dist_slice as d2;
use super::parallel;

/// Rows per unit of parallel work (and of the fixed summation order).
const CHUNK: usize = 4096;

/// A finished run.
#[derive(Debug, Clone)]
pub struct Run {
    pub centroids: Array2<f64>,
    /// Sum of squared distances of the rows to their centroids.
    pub inertia: f64,
    /// Lloyd iterations run (centroid updates).
    pub iterations: usize,
}

/// One row's label and Hamerly bounds (Euclidean distances, not squared).
#[derive(Clone, Copy)]
struct Bounds {
    label: u32,
    upper: f64,
    lower: f64,
}

/// Rows of `x` as one row-major slice (copied only if `x` is not laid out that way).
fn rows(x: ArrayView2<'_, f64>) -> std::borrow::Cow<'_, [f64]> {
    match x.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}

/// The nearest and second-nearest centroid: (index, squared distance, second squared distance).
#[inline]
fn nearest_two(c: &[f64], d: usize, p: &[f64]) -> (usize, f64, f64) {
    let (mut best, mut b1, mut b2) = (0, f64::INFINITY, f64::INFINITY);
    for (j, cj) in c.chunks_exact(d).enumerate() {
        let v = d2(p, cj);
        if v < b1 {
            b2 = b1;
            b1 = v;
            best = j;
        } else if v < b2 {
            b2 = v;
        }
    }
    (best, b1, b2)
}

/// Mean per-column variance: the scale `tol` is relative to.
fn mean_variance(x: &[f64], d: usize) -> f64 {
    let n = (x.len() / d).max(1) as f64;
    let sums = chunk_sums(x, d, |rows| {
        let mut acc = vec![0.0; 2 * d];
        for p in rows.chunks_exact(d) {
            for (j, v) in p.iter().enumerate() {
                acc[j] += v;
                acc[d + j] += v * v;
            }
        }
        acc
    });
    (0..d).map(|j| (sums[d + j] / n - (sums[j] / n).powi(2)).max(0.0)).sum::<f64>() / d as f64
}

/// Runs `f` on each chunk of rows in parallel and adds the returned vectors in chunk order.
fn chunk_sums(x: &[f64], d: usize, f: impl Fn(&[f64]) -> Vec<f64> + Sync) -> Vec<f64> {
    add_in_order(parallel::install(|| x.par_chunks(CHUNK * d).map(&f).collect()))
}

/// Element-wise sum of equally long vectors, in the order given (so it is reproducible).
fn add_in_order(parts: Vec<Vec<f64>>) -> Vec<f64> {
    let mut total = parts.first().map_or_else(Vec::new, |p| vec![0.0; p.len()]);
    for p in parts {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

/// Greedy k-means++: `k` centres (row-major) picked from the rows of `x`.
pub fn plus_plus(x: ArrayView2<f64>, k: usize, seed: u64) -> Array2<f64> {
    let d = x.ncols();
    let data = rows(x);
    let n = x.nrows();
    let mut rng = Xoshiro256Plus::seed_from_u64(seed);
    let trials = 2 + (k as f64).ln().floor() as usize;
    let row = |i: usize| &data[i * d..(i + 1) * d];

    let first = rng.gen_range(0..n);
    let mut centres: Vec<f64> = row(first).to_vec();
    let mut closest: Vec<f64> = parallel::install(|| data.par_chunks_exact(d).map(|p| d2(p, row(first))).collect());
    // squared distances summed per chunk (in order), for the potential and for sampling
    let chunk_pots = |closest: &[f64]| -> Vec<f64> { closest.chunks(CHUNK).map(|c| c.iter().sum()).collect() };
    let mut pots = chunk_pots(&closest);

    for _ in 1..k {
        let pot: f64 = pots.iter().sum();
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                if pot.is_nan() || pot <= 0.0 {
                    return rng.gen_range(0..n);
                }
                let mut r = rng.gen::<f64>() * pot;
                for (c, &p) in pots.iter().enumerate() {
                    if r < p || c == pots.len() - 1 {
                        let start = c * CHUNK;
                        for (i, &v) in closest[start..(start + CHUNK).min(n)].iter().enumerate() {
                            if r < v {
                                return start + i;
                            }
                            r -= v;
                        }
                        return (start + CHUNK).min(n) - 1;
                    }
                    r -= p;
                }
                n - 1
            })
            .collect();
        // the candidate that lowers the potential most: every candidate in one pass over the rows
        let per_candidate: Vec<f64> = {
            let (closest, candidates) = (&closest, &candidates);
            let parts: Vec<Vec<f64>> = parallel::install(|| {
                data.par_chunks(CHUNK * d)
                    .zip(closest.par_chunks(CHUNK))
                    .map(|(xs, cs)| {
                        let mut acc = vec![0.0; candidates.len()];
                        for (p, &c) in xs.chunks_exact(d).zip(cs) {
                            for (a, &cand) in acc.iter_mut().zip(candidates) {
                                *a += c.min(d2(p, row(cand)));
                            }
                        }
                        acc
                    })
                    .collect()
            });
            add_in_order(parts)
        };
        let best = candidates
            .iter()
            .zip(&per_candidate)
            .fold((candidates[0], f64::INFINITY), |b, (&c, &p)| if p < b.1 { (c, p) } else { b });
        let chosen = row(best.0);
        parallel::install(|| {
            data.par_chunks_exact(d).zip(closest.par_iter_mut()).for_each(|(p, c)| *c = c.min(d2(p, chosen)))
        });
        pots = chunk_pots(&closest);
        centres.extend_from_slice(chosen);
    }
    Array2::from_shape_vec((k, d), centres).expect("k rows of d values")
}

/// Lloyd's algorithm from `init` with Hamerly's bounds: at most `max_iter` centroid updates;
/// stops early as described in the module documentation. A centroid left without rows moves to
/// the row farthest from its own centroid.
pub fn lloyd(x: ArrayView2<f64>, init: &Array2<f64>, max_iter: usize, tol: f64) -> Run {
    let (n, d, k) = (x.nrows(), x.ncols(), init.nrows());
    let data = rows(x);
    let mut c: Vec<f64> = init.iter().copied().collect();
    let tol = tol * mean_variance(&data, d);

    // first assignment: every distance
    let mut state: Vec<Bounds> = parallel::install(|| {
        data.par_chunks_exact(d)
            .map(|p| {
                let (j, b1, b2) = nearest_two(&c, d, p);
                Bounds { label: j as u32, upper: b1.sqrt(), lower: b2.sqrt() }
            })
            .collect()
    });

    let mut iterations = 0;
    while iterations < max_iter {
        iterations += 1;
        // new centroids: the means of their rows
        let sums = {
            let state = &state;
            let parts: Vec<Vec<f64>> = parallel::install(|| {
                data.par_chunks(CHUNK * d)
                    .zip(state.par_chunks(CHUNK))
                    .map(|(xs, bs)| {
                        let mut acc = vec![0.0; k * (d + 1)];
                        for (p, b) in xs.chunks_exact(d).zip(bs) {
                            let j = b.label as usize;
                            acc[k * d + j] += 1.0;
                            acc[j * d..(j + 1) * d].iter_mut().zip(p).for_each(|(a, v)| *a += v);
                        }
                        acc
                    })
                    .collect()
            });
            add_in_order(parts)
        };
        let mut next = c.clone();
        let mut taken: Vec<usize> = Vec::new();
        for j in 0..k {
            let count = sums[k * d + j];
            if count > 0.0 {
                for (v, s) in next[j * d..(j + 1) * d].iter_mut().zip(&sums[j * d..(j + 1) * d]) {
                    *v = s / count;
                }
            } else {
                // an empty cluster restarts at the row worst served by its centroid
                let far = (0..n)
                    .filter(|i| !taken.contains(i))
                    .max_by(|&a, &b| state[a].upper.total_cmp(&state[b].upper).then(b.cmp(&a)))
                    .unwrap_or(0);
                taken.push(far);
                next[j * d..(j + 1) * d].copy_from_slice(&data[far * d..(far + 1) * d]);
            }
        }
        let shift: Vec<f64> = (0..k).map(|j| d2(&c[j * d..(j + 1) * d], &next[j * d..(j + 1) * d]).sqrt()).collect();
        let shift_total: f64 = shift.iter().map(|s| s * s).sum();
        c = next;

        // half the distance from each centroid to its nearest other centroid
        let half: Vec<f64> = (0..k)
            .map(|j| {
                (0..k)
                    .filter(|&o| o != j)
                    .map(|o| d2(&c[j * d..(j + 1) * d], &c[o * d..(o + 1) * d]))
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
                    / 2.0
            })
            .collect();
        let (mut max1, mut arg1, mut max2) = (0.0f64, 0usize, 0.0f64);
        for (j, &s) in shift.iter().enumerate() {
            if s > max1 {
                (max2, max1, arg1) = (max1, s, j);
            } else if s > max2 {
                max2 = s;
            }
        }
        let changed: usize = {
            let c = &c;
            parallel::install(|| {
                data.par_chunks(CHUNK * d)
                    .zip(state.par_chunks_mut(CHUNK))
                    .map(|(xs, bs)| {
                        let mut changed = 0;
                        for (p, b) in xs.chunks_exact(d).zip(bs.iter_mut()) {
                            let a = b.label as usize;
                            b.upper += shift[a];
                            b.lower -= if a == arg1 { max2 } else { max1 };
                            let bound = half[a].max(b.lower);
                            if b.upper <= bound {
                                continue;
                            }
                            b.upper = d2(p, &c[a * d..(a + 1) * d]).sqrt();
                            if b.upper <= bound {
                                continue;
                            }
                            let (j, b1, b2) = nearest_two(c, d, p);
                            if j != a {
                                changed += 1;
                            }
                            *b = Bounds { label: j as u32, upper: b1.sqrt(), lower: b2.sqrt() };
                        }
                        changed
                    })
                    .sum()
            })
        };
        if changed == 0 || shift_total <= tol {
            break;
        }
    }
    let parts: Vec<f64> = parallel::install(|| {
        data.par_chunks(CHUNK * d)
            .zip(state.par_chunks(CHUNK))
            .map(|(xs, bs)| xs.chunks_exact(d).zip(bs).map(|(p, b)| d2(p, &c[b.label as usize * d..][..d])).sum())
            .collect()
    });
    let inertia = parts.iter().sum();
    Run { centroids: Array2::from_shape_vec((k, d), c).expect("k rows of d values"), inertia, iterations }
}

/// Checks that `k` centroids can be fitted on `x`.
fn check(x: ArrayView2<f64>, k: usize) -> Result<()> {
    if k == 0 || x.nrows() < k {
        return Err(SegError::new(ErrorKind::TrainingFailed, "k-means failed")
            .detail(format!("{} rows cannot make {k} clusters", x.nrows())));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(SegError::new(ErrorKind::TrainingFailed, "k-means failed").detail("the input has non-finite values"));
    }
    Ok(())
}

/// One k-means++ start and Lloyd's iterations.
pub fn single(x: ArrayView2<f64>, k: usize, max_iter: usize, tol: f64, seed: u64) -> Result<Run> {
    check(x, k)?;
    Ok(lloyd(x, &plus_plus(x, k, seed), max_iter, tol))
}

/// The lowest-inertia result of `runs` k-means++ starts (seeds derived from `seed`) and, if
/// given and of the right shape, a start from `warm`.
pub fn best_of(x: ArrayView2<f64>, k: usize, runs: usize, max_iter: usize, tol: f64, seed: u64, warm: Option<&Array2<f64>>) -> Result<Run> {
    check(x, k)?;
    let mut best: Option<Run> = None;
    let mut keep = |f: Run| {
        if best.as_ref().is_none_or(|b| f.inertia < b.inertia) {
            best = Some(f);
        }
    };
    for r in 0..runs.max(1) {
        let s = seed.wrapping_add((r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        keep(lloyd(x, &plus_plus(x, k, s), max_iter, tol));
    }
    if let Some(w) = warm.filter(|w| w.nrows() == k && w.ncols() == x.ncols()) {
        keep(lloyd(x, w, max_iter, tol));
    }
    Ok(best.expect("at least one run"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::traits::Fit;
    use linfa::DatasetBase;
    use linfa_clustering::{KMeans, KMeansInit};
    use rand_chacha::ChaCha8Rng;

    /// `k` overlapping Gaussian-ish clouds in `d` dimensions.
    fn clouds(n: usize, d: usize, k: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres = Array2::from_shape_fn((k, d), |_| rng.gen_range(-3.0..3.0));
        Array2::from_shape_fn((n, d), |(i, j)| centres[[i % k, j]] + rng.gen_range(-1.5..1.5) + rng.gen_range(-1.5..1.5))
    }

    /// Plain Lloyd (every distance, every iteration) from the same start.
    fn naive(x: ArrayView2<f64>, init: &Array2<f64>, iters: usize) -> Array2<f64> {
        let (d, k) = (x.ncols(), init.nrows());
        let mut c = init.clone();
        for _ in 0..iters {
            let flat: Vec<f64> = c.iter().copied().collect();
            let mut sums = Array2::<f64>::zeros((k, d));
            let mut counts = vec![0.0; k];
            for p in x.rows() {
                let (j, _, _) = nearest_two(&flat, d, p.as_slice().unwrap());
                sums.row_mut(j).scaled_add(1.0, &p);
                counts[j] += 1.0;
            }
            for j in 0..k {
                if counts[j] > 0.0 {
                    let m = sums.row(j).mapv(|v| v / counts[j]);
                    c.row_mut(j).assign(&m);
                }
            }
        }
        c
    }

    #[test]
    fn hamerly_bounds_give_exactly_lloyds_centroids() {
        let x = clouds(5000, 5, 6, 1);
        let init = plus_plus(x.view(), 6, 3);
        // tol 0 and no label change needed: run a fixed number of iterations both ways
        for iters in [1, 2, 5, 20] {
            let fast = lloyd(x.view(), &init, iters, -1.0);
            let slow = naive(x.view(), &init, fast.iterations);
            let diff = (&fast.centroids - &slow).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
            assert!(diff < 1e-9, "{iters} iterations: max difference {diff}");
        }
    }

    #[test]
    fn same_result_with_one_thread_or_many() {
        let x = clouds(20_000, 4, 5, 2);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let a = one.install(|| single(x.view(), 5, 300, 1e-4, 7).unwrap());
        let b = four.install(|| single(x.view(), 5, 300, 1e-4, 7).unwrap());
        assert_eq!(a.centroids, b.centroids);
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
    }

    #[test]
    fn at_least_as_good_as_linfa_on_the_same_data() {
        let x = clouds(8000, 8, 8, 3);
        let ours = best_of(x.view(), 8, 4, 300, 1e-6, 11, None).unwrap();
        let data = DatasetBase::from(x.clone());
        let theirs = KMeans::params_with_rng(8, Xoshiro256Plus::seed_from_u64(11))
            .n_runs(4)
            .max_n_iterations(300)
            .tolerance(1e-6)
            .init_method(KMeansInit::KMeansPlusPlus)
            .fit(&data)
            .unwrap();
        let flat: Vec<f64> = theirs.centroids().iter().copied().collect();
        let theirs_inertia: f64 =
            x.rows().into_iter().map(|p| nearest_two(&flat, 8, p.as_slice().unwrap()).1).sum();
        assert!(ours.inertia <= theirs_inertia * 1.001, "ours {} linfa {theirs_inertia}", ours.inertia);
        // the reported inertia is the real one
        let flat: Vec<f64> = ours.centroids.iter().copied().collect();
        let real: f64 = x.rows().into_iter().map(|p| nearest_two(&flat, 8, p.as_slice().unwrap()).1).sum();
        assert!((real - ours.inertia).abs() <= 1e-9 * real, "{real} vs {}", ours.inertia);
    }

    #[test]
    fn empty_clusters_are_restarted_and_bad_input_is_refused() {
        // two far groups, four centroids of which two start far away from everything
        let mut x = Array2::zeros((40, 2));
        for i in 0..40 {
            x[[i, 0]] = if i < 20 { 0.0 } else { 10.0 } + (i % 5) as f64 * 0.1;
            x[[i, 1]] = (i % 7) as f64 * 0.1;
        }
        let init = ndarray::arr2(&[[0.0, 0.0], [10.0, 0.0], [100.0, 100.0], [-100.0, 100.0]]);
        let fit = lloyd(x.view(), &init, 50, 1e-9);
        assert!(fit.centroids.iter().all(|v| v.abs() < 20.0), "no centroid left stranded: {:?}", fit.centroids);
        assert!(single(x.view(), 41, 10, 1e-4, 1).is_err());
        x[[3, 1]] = f64::NAN;
        assert!(single(x.view(), 2, 10, 1e-4, 1).is_err());
    }

    #[test]
    fn plus_plus_picks_distinct_rows_of_the_data() {
        let x = clouds(1000, 3, 4, 5);
        let c = plus_plus(x.view(), 4, 9);
        for r in c.rows() {
            assert!(x.rows().into_iter().any(|p| p == r));
        }
        assert_eq!(plus_plus(x.view(), 4, 9), c, "deterministic");
    }
}


