//! Cleaning and scaling: imputation, log transform of heavy tails, clipping at stored
//! quantiles and robust scaling. Every parameter is kept so that a later user (a live update,
//! a refresh) is transformed exactly as the training population was.

use ndarray::Array2;

use super::features::{FeatureDef, Impute, Transform};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureScale {
    pub name: String,
    pub transform: Transform,
    /// Value (after the transform) that replaces a missing one.
    pub impute: f64,
    /// Clip bounds (after the transform): the 1st and 99th percentiles.
    pub lo: f64,
    pub hi: f64,
    /// Robust centre (median) and scale (IQR floored by 1.349σ of the clipped values, else 1).
    pub center: f64,
    pub scale: f64,
    /// Group weight applied after scaling (see `FeatureDef::weight`).
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scaler {
    pub features: Vec<FeatureScale>,
}

pub fn apply_transform(t: Transform, x: f64) -> f64 {
    match t {
        Transform::Linear => x,
        Transform::Log => x.signum() * x.abs().ln_1p(),
    }
}

/// The raw value whose transform is `y`.
pub fn inverse_transform(t: Transform, y: f64) -> f64 {
    match t {
        Transform::Linear => y,
        Transform::Log => y.signum() * y.abs().exp_m1(),
    }
}

/// Linear-interpolated quantile of sorted data (`q` in 0..=1).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    if i + 1 < sorted.len() {
        sorted[i] * (1.0 - frac) + sorted[i + 1] * frac
    } else {
        sorted[i]
    }
}

impl FeatureScale {
    fn fit(def: &FeatureDef, raw: &[Option<f64>]) -> FeatureScale {
        let mut v: Vec<f64> = raw
            .iter()
            .flatten()
            .filter(|x| x.is_finite())
            .map(|&x| apply_transform(def.transform, x))
            .collect();
        v.sort_by(f64::total_cmp);
        let q = |p| quantile_sorted(&v, p);
        let (lo, hi) = (q(0.01), q(0.99));
        let center = q(0.5);
        // The IQR, floored by the clipped standard deviation (in IQR units, 1.349σ for a normal):
        // a rare category's share has an IQR near zero, and dividing by it alone would let
        // the few users who buy it dominate every distance.
        let iqr = q(0.75) - q(0.25);
        let n = v.len().max(1) as f64;
        let mean = v.iter().map(|x| x.clamp(lo, hi)).sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x.clamp(lo, hi) - mean).powi(2)).sum::<f64>() / n).sqrt();
        let scale = iqr.max(1.349 * sd);
        let scale = if scale > 1e-9 { scale } else { 1.0 };
        let impute = match def.impute {
            Impute::Zero => apply_transform(def.transform, 0.0),
            Impute::Median => center,
            Impute::High => hi,
        };
        FeatureScale {
            name: def.name.clone(),
            transform: def.transform,
            impute,
            lo,
            hi,
            center,
            scale,
            weight: def.weight,
        }
    }

    #[inline]
    pub fn apply(&self, raw: Option<f64>) -> f64 {
        let x = match raw {
            Some(x) if x.is_finite() => apply_transform(self.transform, x),
            _ => self.impute,
        };
        self.weight * (x.clamp(self.lo, self.hi) - self.center) / self.scale
    }
}

impl Scaler {
    /// Fits one [`FeatureScale`] per feature; `columns[j][i]` is feature j of user i.
    pub fn fit(defs: &[FeatureDef], columns: &[Vec<Option<f64>>]) -> Scaler {
        Scaler {
            features: defs.iter().zip(columns).map(|(d, c)| FeatureScale::fit(d, c)).collect(),
        }
    }

    pub fn dims(&self) -> usize {
        self.features.len()
    }

    /// Scales the column-major raw features into a users × features matrix.
    pub fn transform(&self, columns: &[Vec<Option<f64>>]) -> Array2<f64> {
        let n = columns.first().map_or(0, Vec::len);
        let mut x = Array2::zeros((n, self.dims()));
        for (j, (fs, col)) in self.features.iter().zip(columns).enumerate() {
            for (i, raw) in col.iter().enumerate() {
                x[[i, j]] = fs.apply(*raw);
            }
        }
        x
    }

    /// Scales one user's raw feature vector.
    pub fn transform_row(&self, raw: &[Option<f64>]) -> Vec<f64> {
        self.features.iter().zip(raw).map(|(fs, r)| fs.apply(*r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, t: Transform, i: Impute) -> FeatureDef {
        FeatureDef { name: name.into(), transform: t, impute: i, weight: 1.0, sql: String::new(), from_events: false, category: None }
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [0.0, 10.0];
        assert_eq!(quantile_sorted(&v, 0.5), 5.0);
        assert_eq!(quantile_sorted(&[], 0.5), 0.0);
    }

    #[test]
    fn robust_scaling_clips_outliers_and_imputes() {
        let mut col: Vec<Option<f64>> = (0..1000).map(|i| Some(i as f64)).collect();
        col.push(Some(1e12)); // an outlier
        col.push(None);
        col.push(Some(f64::NAN));
        let s = Scaler::fit(&[def("x", Transform::Linear, Impute::Median)], &[col.clone()]);
        let x = s.transform(&[col]);
        assert!(x.iter().all(|v| v.is_finite()));
        let max = x.column(0).iter().cloned().fold(f64::MIN, f64::max);
        assert!(max < 1.0, "outlier is clipped: {max}");
        assert!(x[[1001, 0]].abs() < 1e-2, "missing → median → ~0 after centring");
    }

    #[test]
    fn rare_feature_does_not_explode() {
        // 2% of users have a share of 1, everybody else ~0: the IQR is 0
        let col: Vec<Option<f64>> = (0..1000).map(|i| Some(if i % 50 == 0 { 1.0 } else { 0.01 })).collect();
        let s = Scaler::fit(&[def("rare", Transform::Linear, Impute::Zero)], &[col.clone()]);
        let x = s.transform(&[col]);
        let max = x.column(0).iter().cloned().fold(f64::MIN, f64::max);
        assert!(max < 10.0, "{max}");
    }

    #[test]
    fn zero_variance_feature_is_finite() {
        let col = vec![Some(3.0); 50];
        let s = Scaler::fit(&[def("c", Transform::Log, Impute::Zero)], &[col.clone()]);
        assert_eq!(s.features[0].scale, 1.0);
        assert!(s.transform(&[col]).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn transform_row_matches_matrix() {
        let cols = vec![
            (0..100).map(|i| Some(i as f64 * 3.0)).collect::<Vec<_>>(),
            (0..100).map(|i| if i % 3 == 0 { None } else { Some(i as f64) }).collect(),
        ];
        let defs = [def("a", Transform::Log, Impute::Zero), def("b", Transform::Linear, Impute::High)];
        let s = Scaler::fit(&defs, &cols);
        let m = s.transform(&cols);
        for i in [0, 7, 99] {
            let row = s.transform_row(&[cols[0][i], cols[1][i]]);
            assert_eq!(row, m.row(i).to_vec());
        }
    }
}
