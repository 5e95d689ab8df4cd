//! Human segment names, RFM style (Champions, Loyal, Big spenders, New customers, At risk,
//! Hibernating...), read off each segment's profile: the mean of its robust-scaled features,
//! i.e. how many IQRs it sits above or below the population's median.

/// A segment's profile: scaled feature means, in catalogue order.
pub struct Profile<'a> {
    pub names: &'a [String],
    pub z: &'a [f64],
}

impl Profile<'_> {
    fn get(&self, name: &str) -> Option<f64> {
        self.names.iter().position(|n| n == name).map(|i| self.z[i])
    }

    fn z(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }

    /// The category this segment buys distinctly more than the population, if any.
    pub fn dominant_category(&self) -> Option<String> {
        self.names
            .iter()
            .zip(self.z)
            .filter(|(n, z)| n.starts_with("category:") && n.as_str() != "category:other" && **z > 0.5)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(n, _)| n["category:".len()..].to_string())
    }
}

/// The base name for one profile.
pub fn base_name(p: &Profile) -> &'static str {
    let recent = -p.z("recency_days");
    let (f, m, aov, tenure) = (p.z("frequency"), p.z("monetary"), p.z("avg_order_value"), p.z("tenure_days"));
    let browsing = p.get("views").map(|v| v > 0.5 && f < -0.25).unwrap_or(false);
    if browsing {
        "Window shoppers"
    } else if recent < -0.75 {
        if f > 0.0 || m > 0.0 { "At risk" } else { "Hibernating" }
    } else if tenure < -0.75 && f <= 0.0 {
        "New customers"
    } else if f > 0.5 && m > 0.5 && aov > 0.5 {
        "Champions"
    } else if aov > 0.75 {
        "Big spenders"
    } else if f > 0.5 && aov < -0.25 {
        "Frequent small buyers"
    } else if f > 0.5 {
        "Loyal"
    } else if aov < -0.5 {
        "Bargain hunters"
    } else if p.z("weekend_share") > 0.5 {
        "Weekend shoppers"
    } else if recent > 0.3 {
        "Promising"
    } else {
        "Needs attention"
    }
}

/// Names for every segment, unique within the model: a repeated base name gets the segment's
/// dominant category, then a number.
pub fn name_segments(profiles: &[Profile]) -> Vec<String> {
    let base: Vec<&str> = profiles.iter().map(base_name).collect();
    let mut names: Vec<String> = base
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let repeated = base.iter().filter(|x| *x == b).count() > 1;
            match (repeated, profiles[i].dominant_category()) {
                (true, Some(cat)) => format!("{b} · {cat}"),
                _ => b.to_string(),
            }
        })
        .collect();
    for i in 0..names.len() {
        let mut n = 2;
        while names[..i].contains(&names[i]) {
            let candidate = format!("{} {n}", names[i]);
            if !names.contains(&candidate) {
                names[i] = candidate;
            }
            n += 1;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["recency_days", "frequency", "monetary", "avg_order_value", "tenure_days", "category:books", "category:toys"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn classic_rfm_names() {
        let n = names();
        let p = |z: [f64; 7]| base_name(&Profile { names: &n, z: &z }).to_string();
        assert_eq!(p([-1.0, 1.5, 2.0, 1.0, 0.5, 0.0, 0.0]), "Champions");
        assert_eq!(p([2.0, 0.5, 0.5, 0.0, 0.5, 0.0, 0.0]), "At risk");
        assert_eq!(p([2.0, -0.5, -0.5, 0.0, 0.5, 0.0, 0.0]), "Hibernating");
        assert_eq!(p([-1.0, -0.8, -0.5, 0.0, -1.5, 0.0, 0.0]), "New customers");
        assert_eq!(p([0.0, 0.0, 0.5, 1.5, 0.0, 0.0, 0.0]), "Big spenders");
        assert_eq!(p([-0.5, 1.0, 0.2, -1.0, 0.0, 0.0, 0.0]), "Frequent small buyers");
    }

    #[test]
    fn names_are_unique() {
        let n = names();
        let a = [0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0];
        let b = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let c = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let d = [0.0; 7];
        let ps = [&a, &b, &c, &d].map(|z| Profile { names: &n, z });
        let out = name_segments(&ps);
        assert_eq!(out[0], "Needs attention · books");
        assert_eq!(out[1], "Needs attention · toys");
        assert_eq!(out[2], "Needs attention");
        assert_eq!(out[3], "Needs attention 2");
    }
}
