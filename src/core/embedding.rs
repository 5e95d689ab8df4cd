//! Deep feature extraction: an MLP autoencoder trained by backprop (Adam, early stopping on a
//! held-out split) and PCA at the same width, so the two can be compared on held-out
//! reconstruction error. Pure ndarray; seeded, so the same seed and data give the same model.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fitted encoder from scaled features to the embedding space.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoder {
    /// The scaled features themselves (`embedding => 'none'`).
    None { dims: usize },
    Pca(Pca),
    Autoencoder(Autoencoder),
}

impl Encoder {
    pub fn dims(&self) -> usize {
        match self {
            Encoder::None { dims } => *dims,
            Encoder::Pca(p) => p.components.nrows(),
            Encoder::Autoencoder(a) => a.layers[a.bottleneck].b.len(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Encoder::None { .. } => "none",
            Encoder::Pca(_) => "pca",
            Encoder::Autoencoder(_) => "autoencoder",
        }
    }

    /// Embeds a batch of scaled feature rows.
    pub fn encode(&self, x: ArrayView2<f64>) -> Array2<f64> {
        match self {
            Encoder::None { .. } => x.to_owned(),
            Encoder::Pca(p) => p.encode(x),
            Encoder::Autoencoder(a) => a.encode(x),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PCA

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pca {
    pub mean: Array1<f64>,
    /// dims × features, rows are unit principal axes in order of explained variance.
    pub components: Array2<f64>,
    pub explained_variance: Vec<f64>,
}

impl Pca {
    pub fn fit(x: ArrayView2<f64>, dims: usize) -> Pca {
        let n = x.nrows().max(1) as f64;
        let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()));
        let centered = &x - &mean;
        let cov = centered.t().dot(&centered) / n;
        let (values, vectors) = symmetric_eigen(cov);
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        let dims = dims.min(values.len());
        let mut components = Array2::zeros((dims, x.ncols()));
        for (r, &i) in order.iter().take(dims).enumerate() {
            let mut v = vectors.column(i).to_owned();
            // sign convention: largest-magnitude entry positive, so runs agree exactly
            let (imax, _) = v.iter().enumerate().fold((0, 0.0f64), |best, (j, &e)| {
                if e.abs() > best.1 { (j, e.abs()) } else { best }
            });
            if v[imax] < 0.0 {
                v.mapv_inplace(|e| -e);
            }
            components.row_mut(r).assign(&v);
        }
        let explained_variance = order.iter().take(dims).map(|&i| values[i].max(0.0)).collect();
        Pca { mean, components, explained_variance }
    }

    pub fn encode(&self, x: ArrayView2<f64>) -> Array2<f64> {
        (&x - &self.mean).dot(&self.components.t())
    }

    pub fn reconstruct(&self, x: ArrayView2<f64>) -> Array2<f64> {
        self.encode(x).dot(&self.components) + &self.mean
    }
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations.
/// Returns (eigenvalues, eigenvectors as columns).
pub fn symmetric_eigen(mut a: Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = a.nrows();
    let mut v = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]] * a[[i, j]])
            .sum();
        let total: f64 = a.iter().map(|e| e * e).sum();
        if off <= 1e-22 * total.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in (p + 1)..n {
                let apq = a[[p, q]];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[[k, p]];
                    let akq = a[[k, q]];
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[[p, k]];
                    let aqk = a[[q, k]];
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[[k, p]];
                    let vkq = v[[k, q]];
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[[i, i]]).collect(), v)
}

// ---------------------------------------------------------------------------------------------
// Autoencoder

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dense {
    /// inputs × outputs
    pub w: Array2<f64>,
    pub b: Array1<f64>,
    pub relu: bool,
}

impl Dense {
    fn new(rng: &mut ChaCha8Rng, inputs: usize, outputs: usize, relu: bool) -> Dense {
        // He-uniform for ReLU layers, Glorot-uniform for linear ones
        let limit = if relu {
            (6.0 / inputs as f64).sqrt()
        } else {
            (6.0 / (inputs + outputs) as f64).sqrt()
        };
        let w = Array2::from_shape_fn((inputs, outputs), |_| rng.gen_range(-limit..limit));
        Dense { w, b: Array1::zeros(outputs), relu }
    }

    fn forward(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.dot(&self.w) + &self.b;
        if self.relu {
            z.mapv_inplace(|v| v.max(0.0));
        }
        z
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Autoencoder {
    pub layers: Vec<Dense>,
    /// Index of the (linear) bottleneck layer: the encoder is `layers[..=bottleneck]`.
    pub bottleneck: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct TrainConfig {
    pub hidden: usize,
    pub dims: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub patience: usize,
    pub seed: u64,
}

impl TrainConfig {
    pub fn for_shape(features: usize, dims: usize, seed: u64) -> TrainConfig {
        TrainConfig {
            hidden: (2 * features).clamp(16, 64),
            dims,
            epochs: 60,
            batch: 128,
            learning_rate: 3e-3,
            patience: 6,
            seed,
        }
    }
}

/// What training did, for the model record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    pub epochs: usize,
    pub best_epoch: usize,
    pub train_mse: f64,
    pub holdout_mse: f64,
}

struct Adam {
    m: Vec<(Array2<f64>, Array1<f64>)>,
    v: Vec<(Array2<f64>, Array1<f64>)>,
    t: i32,
    lr: f64,
}

impl Adam {
    fn new(layers: &[Dense], lr: f64) -> Adam {
        let zeros: Vec<_> = layers
            .iter()
            .map(|l| (Array2::zeros(l.w.raw_dim()), Array1::zeros(l.b.len())))
            .collect();
        Adam { m: zeros.clone(), v: zeros, t: 0, lr }
    }

    fn step(&mut self, layers: &mut [Dense], grads: &[(Array2<f64>, Array1<f64>)]) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        const EPS: f64 = 1e-8;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        for (((layer, (gw, gb)), (mw, mb)), (vw, vb)) in
            layers.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v)
        {
            ndarray::Zip::from(&mut layer.w).and(gw).and(mw).and(vw).for_each(|p, &g, m, v| {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *p -= self.lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
            });
            ndarray::Zip::from(&mut layer.b).and(gb).and(mb).and(vb).for_each(|p, &g, m, v| {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *p -= self.lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
            });
        }
    }
}

impl Autoencoder {
    pub fn new(features: usize, cfg: &TrainConfig, rng: &mut ChaCha8Rng) -> Autoencoder {
        let layers = vec![
            Dense::new(rng, features, cfg.hidden, true),
            Dense::new(rng, cfg.hidden, cfg.dims, false),
            Dense::new(rng, cfg.dims, cfg.hidden, true),
            Dense::new(rng, cfg.hidden, features, false),
        ];
        Autoencoder { layers, bottleneck: 1 }
    }

    pub fn encode(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut a = x.to_owned();
        for l in &self.layers[..=self.bottleneck] {
            a = l.forward(&a);
        }
        a
    }

    pub fn reconstruct(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut a = x.to_owned();
        for l in &self.layers {
            a = l.forward(&a);
        }
        a
    }

    /// One forward/backward pass on a batch; returns the gradients of the mean squared error.
    fn gradients(&self, x: &Array2<f64>) -> Vec<(Array2<f64>, Array1<f64>)> {
        let mut acts = vec![x.clone()];
        for l in &self.layers {
            let next = l.forward(acts.last().expect("input is there"));
            acts.push(next);
        }
        let out = acts.last().expect("output is there");
        let scale = 2.0 / (x.len() as f64);
        let mut delta = (out - x) * scale;
        let mut grads = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate().rev() {
            if l.relu {
                // ReLU'(z) is 1 where the activation is positive
                ndarray::Zip::from(&mut delta).and(&acts[i + 1]).for_each(|d, &a| {
                    if a <= 0.0 {
                        *d = 0.0
                    }
                });
            }
            let gw = acts[i].t().dot(&delta);
            let gb = delta.sum_axis(Axis(0));
            if i > 0 {
                delta = delta.dot(&l.w.t());
            }
            grads.push((gw, gb));
        }
        grads.reverse();
        grads
    }

    /// Trains on `train`, early-stopping on `holdout`; keeps the best weights seen.
    pub fn train(
        train: ArrayView2<f64>,
        holdout: ArrayView2<f64>,
        cfg: &TrainConfig,
    ) -> (Autoencoder, TrainReport) {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut model = Autoencoder::new(train.ncols(), cfg, &mut rng);
        let mut adam = Adam::new(&model.layers, cfg.learning_rate);
        let mut order: Vec<usize> = (0..train.nrows()).collect();
        let mut best = (f64::INFINITY, model.clone(), 0);
        let mut since_best = 0;
        let mut epochs = 0;
        for epoch in 0..cfg.epochs {
            epochs = epoch + 1;
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.batch.max(1)) {
                let batch = train.select(Axis(0), chunk);
                let grads = model.gradients(&batch);
                adam.step(&mut model.layers, &grads);
            }
            let err = mse(&model.reconstruct(holdout), holdout);
            if err < best.0 - 1e-6 {
                best = (err, model.clone(), epochs);
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= cfg.patience {
                    break;
                }
            }
        }
        let (holdout_mse, model, best_epoch) = best;
        let train_mse = mse(&model.reconstruct(train), train);
        (model, TrainReport { epochs, best_epoch, train_mse, holdout_mse })
    }
}

/// Mean squared error per element.
pub fn mse(a: &Array2<f64>, b: ArrayView2<f64>) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    (a - &b).mapv(|e| e * e).mean().unwrap_or(0.0)
}

/// A seeded split of row indices into (train, holdout); the holdout is ~10% (at least one row
/// when there are two or more).
pub fn split_rows(n: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed));
    let hold = if n >= 2 { (n / 10).max(1) } else { 0 };
    let holdout = idx[..hold].to_vec();
    let mut train = idx[hold..].to_vec();
    train.sort_unstable();
    (train, holdout)
}

/// The comparison `embedding => 'auto'` makes, kept in the model record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EmbeddingReport {
    pub chosen: String,
    pub dims: usize,
    pub autoencoder_holdout_mse: Option<f64>,
    pub pca_holdout_mse: Option<f64>,
    pub autoencoder: Option<TrainReport>,
    pub training_rows: usize,
}

/// Fits the requested encoder(s) on `x` (already a training sample) and returns the chosen one.
pub fn fit_encoder(
    x: ArrayView2<f64>,
    choice: super::options::EmbeddingChoice,
    dims: usize,
    seed: u64,
) -> (Encoder, EmbeddingReport) {
    use super::options::EmbeddingChoice as C;
    let mut report = EmbeddingReport {
        chosen: String::new(),
        dims,
        autoencoder_holdout_mse: None,
        pca_holdout_mse: None,
        autoencoder: None,
        training_rows: x.nrows(),
    };
    if choice == C::None {
        report.chosen = "none".into();
        report.dims = x.ncols();
        return (Encoder::None { dims: x.ncols() }, report);
    }
    let (train_idx, hold_idx) = split_rows(x.nrows(), seed);
    let train = x.select(Axis(0), &train_idx);
    let holdout = x.select(Axis(0), &hold_idx);

    let pca = matches!(choice, C::Auto | C::Pca).then(|| {
        let p = Pca::fit(train.view(), dims);
        report.pca_holdout_mse = Some(mse(&p.reconstruct(holdout.view()), holdout.view()));
        p
    });
    let ae = matches!(choice, C::Auto | C::Autoencoder).then(|| {
        let cfg = TrainConfig::for_shape(x.ncols(), dims, seed);
        let (a, r) = Autoencoder::train(train.view(), holdout.view(), &cfg);
        report.autoencoder_holdout_mse = Some(r.holdout_mse);
        report.autoencoder = Some(r);
        a
    });
    let encoder = match (pca, ae) {
        (Some(p), Some(a)) => {
            if report.autoencoder_holdout_mse < report.pca_holdout_mse {
                Encoder::Autoencoder(a)
            } else {
                Encoder::Pca(p)
            }
        }
        (Some(p), None) => Encoder::Pca(p),
        (None, Some(a)) => Encoder::Autoencoder(a),
        (None, None) => unreachable!("choice None returned above"),
    };
    report.chosen = encoder.kind().into();
    (encoder, report)
}

/// Default embedding width for a feature count.
pub fn default_dims(features: usize) -> usize {
    (features / 2).clamp(2, 8).min(features.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::options::EmbeddingChoice;

    /// Points on a 2-D plane embedded in 6-D, with a little noise.
    fn plane(n: usize) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        Array2::from_shape_fn((n, 6), |_| 0.0).rows().into_iter().map(|_| {
            let (a, b): (f64, f64) = (rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0));
            let e = |rng: &mut ChaCha8Rng| rng.gen_range(-0.01..0.01);
            vec![a + e(&mut rng), b, a + b, a - b, 2.0 * a, -b + e(&mut rng)]
        }).fold(Array2::zeros((0, 6)), |mut m, r| {
            m.push_row(ndarray::ArrayView1::from(&r)).unwrap();
            m
        })
    }

    #[test]
    fn jacobi_recovers_eigenvalues() {
        let a = ndarray::arr2(&[[2.0, 1.0], [1.0, 2.0]]);
        let (mut vals, _) = symmetric_eigen(a);
        vals.sort_by(f64::total_cmp);
        assert!((vals[0] - 1.0).abs() < 1e-12 && (vals[1] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn pca_reconstructs_a_plane() {
        let x = plane(500);
        let p = Pca::fit(x.view(), 2);
        assert!(mse(&p.reconstruct(x.view()), x.view()) < 1e-3);
        assert_eq!(p.encode(x.view()).ncols(), 2);
    }

    #[test]
    fn autoencoder_learns_and_is_deterministic() {
        let x = plane(600);
        let (train, hold) = split_rows(x.nrows(), 3);
        let (tr, ho) = (x.select(Axis(0), &train), x.select(Axis(0), &hold));
        let cfg = TrainConfig { epochs: 40, ..TrainConfig::for_shape(6, 2, 9) };
        let (a1, r1) = Autoencoder::train(tr.view(), ho.view(), &cfg);
        let (a2, r2) = Autoencoder::train(tr.view(), ho.view(), &cfg);
        assert_eq!(a1, a2, "same seed, same weights");
        assert_eq!(r1, r2);
        // the untrained network is far worse than the trained one
        let untrained = Autoencoder::new(6, &cfg, &mut ChaCha8Rng::seed_from_u64(9));
        let before = mse(&untrained.reconstruct(ho.view()), ho.view());
        assert!(r1.holdout_mse < before / 5.0, "{} vs {before}", r1.holdout_mse);
        assert_eq!(a1.encode(x.view()).ncols(), 2);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = plane(20);
        let cfg = TrainConfig::for_shape(6, 2, 5);
        let mut ae = Autoencoder::new(6, &cfg, &mut ChaCha8Rng::seed_from_u64(5));
        let grads = ae.gradients(&x);
        let loss = |ae: &Autoencoder| mse(&ae.reconstruct(x.view()), x.view());
        for (layer, (r, c)) in [(0, (1, 3)), (1, (2, 1)), (3, (4, 5))] {
            let h = 1e-6;
            ae.layers[layer].w[[r, c]] += h;
            let up = loss(&ae);
            ae.layers[layer].w[[r, c]] -= 2.0 * h;
            let down = loss(&ae);
            ae.layers[layer].w[[r, c]] += h;
            let numeric = (up - down) / (2.0 * h);
            let analytic = grads[layer].0[[r, c]];
            assert!((numeric - analytic).abs() < 1e-6 * (1.0 + numeric.abs()), "{numeric} vs {analytic}");
        }
    }

    #[test]
    fn auto_records_both_errors() {
        let x = plane(300);
        let (enc, rep) = fit_encoder(x.view(), EmbeddingChoice::Auto, 2, 1);
        assert!(rep.pca_holdout_mse.is_some() && rep.autoencoder_holdout_mse.is_some());
        assert_eq!(rep.chosen, enc.kind());
        assert_eq!(enc.dims(), 2);
        let (enc, _) = fit_encoder(x.view(), EmbeddingChoice::None, 2, 1);
        assert_eq!(enc.dims(), 6);
    }
}
