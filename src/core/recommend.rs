//! Per-segment category recommendations: what a user's segment buys more than the population
//! (lift), leaving out what the user already buys a lot.

/// A user's own share of a category at or above this counts as "already buys a lot".
pub const OWN_SHARE_LIMIT: f64 = 0.25;

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub category: String,
    pub score: f64,
    pub reason: String,
}

/// The population's mix: the users-weighted mean of the segments' mixes.
pub fn population_mix(segments: &[(f64, Vec<(String, f64)>)]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for (users, mix) in segments {
        for (c, share) in mix {
            match out.iter_mut().find(|(n, _, _)| n == c) {
                Some(e) => {
                    e.1 += users * share;
                    e.2 += users;
                }
                None => out.push((c.clone(), users * share, *users)),
            }
        }
    }
    out.into_iter().filter(|(_, _, n)| *n > 0.0).map(|(c, s, n)| (c, s / n)).collect()
}

/// Up to `n` categories for a user. `segment` is the segment's name and mix when the user has
/// one that may be reported on; otherwise (a new user, a suppressed segment) the population's
/// most popular categories are returned. `own` is the user's own category shares.
pub fn recommend(
    segment: Option<(&str, &[(String, f64)])>,
    population: &[(String, f64)],
    own: &[(String, f64)],
    n: usize,
) -> Vec<Recommendation> {
    let buys_a_lot = |c: &str| own.iter().any(|(o, s)| o == c && *s >= OWN_SHARE_LIMIT);
    let mut out: Vec<Recommendation> = population
        .iter()
        .filter(|(c, p)| c != "other" && *p > 0.0 && !buys_a_lot(c))
        .map(|(c, p)| match segment {
            Some((name, mix)) => {
                let s = mix.iter().find(|(m, _)| m == c).map_or(0.0, |(_, s)| *s);
                let lift = s / p;
                Recommendation {
                    category: c.clone(),
                    score: lift,
                    reason: format!("{lift:.2}x as popular in segment \"{name}\" as with all customers"),
                }
            }
            None => Recommendation {
                category: c.clone(),
                score: *p,
                reason: format!("popular with all customers ({:.0}% of their purchases)", p * 100.0),
            },
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.category.cmp(&b.category)));
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(c, s)| (c.to_string(), *s)).collect()
    }

    #[test]
    fn lift_ranks_what_the_segment_buys_more_than_everyone() {
        let seg = mix(&[("books", 0.5), ("toys", 0.1), ("home", 0.4)]);
        let pop = mix(&[("books", 0.25), ("toys", 0.25), ("home", 0.5)]);
        let r = recommend(Some(("Readers", &seg)), &pop, &[], 10);
        assert_eq!(r.iter().map(|r| r.category.as_str()).collect::<Vec<_>>(), ["books", "home", "toys"]);
        assert!((r[0].score - 2.0).abs() < 1e-12);
        assert!(r[0].reason.contains("Readers"));
    }

    #[test]
    fn what_the_user_already_buys_is_left_out() {
        let seg = mix(&[("books", 0.5), ("toys", 0.1)]);
        let pop = mix(&[("books", 0.25), ("toys", 0.25), ("other", 0.5)]);
        let r = recommend(Some(("Readers", &seg)), &pop, &mix(&[("books", 0.8)]), 10);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].category, "toys");
    }

    #[test]
    fn without_a_segment_the_population_favourites_come_first() {
        let pop = mix(&[("books", 0.2), ("toys", 0.3)]);
        let r = recommend(None, &pop, &[], 1);
        assert_eq!(r[0].category, "toys");
        assert!(r[0].reason.contains("all customers"));
    }

    #[test]
    fn population_mix_weighs_segments_by_size() {
        let p = population_mix(&[(30.0, mix(&[("a", 1.0)])), (10.0, mix(&[("a", 0.0), ("b", 1.0)]))]);
        assert_eq!(p, mix(&[("a", 0.75), ("b", 1.0)]));
    }
}
