//! The order features of one user from their usable orders, as the `_segment_order_features`
//! aggregate computes them.
//!
//! The aggregate collects each user's orders (in parallel workers too: partial states combine by
//! concatenation), then this module sorts them by (time, amount, category) and computes every
//! order feature in one pass, with the same definitions as the SQL they replace: intervals are
//! the gaps between consecutive orders, an order identical to the previous one (same time,
//! amount and category) is a duplicate, and with `dedupe` duplicates are left out of every
//! feature (their gaps too).

use std::f64::consts::PI;

/// Category slots: the top categories (at most 8, see `features::source_summary_sql`) and "other".
pub const MAX_CATEGORY_SLOTS: usize = 16;

const MICROS_PER_DAY: f64 = 86_400.0 * 1_000_000.0;

/// One usable order. Plain data without implicit padding (the aggregate ships it between
/// parallel workers as bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct OrderRow {
    /// Microseconds (PostgreSQL's timestamptz representation).
    pub t: i64,
    pub amount: f64,
    /// Hash of the category text, to recognise duplicates (see `flags`).
    category_hash: i64,
    /// 1-based position in the top categories, 0 for any other (or NULL) category.
    pub slot: u16,
    /// Hour of day (0-23) in the model's time zone (computed by SQL).
    pub hour: u8,
    /// Bit 0: a weekend order; bit 1: the category is not NULL.
    flags: u8,
    _pad: u32,
}

impl OrderRow {
    pub fn new(t: i64, amount: f64, category_hash: Option<i64>, slot: u16, hour: u8, weekend: bool) -> OrderRow {
        let flags = weekend as u8 | (category_hash.is_some() as u8) << 1;
        OrderRow { t, amount, category_hash: category_hash.unwrap_or(0), slot, hour, flags, _pad: 0 }
    }

    pub fn weekend(&self) -> bool {
        self.flags & 1 != 0
    }

    pub fn category(&self) -> Option<i64> {
        (self.flags & 2 != 0).then_some(self.category_hash)
    }
}

/// Hour of day (0-23) and whether it is a Saturday or Sunday, of a local time given as
/// PostgreSQL's `timestamp` (microseconds since 2000-01-01 00:00, a Saturday), as
/// `extract(hour ...)` and `extract(isodow ...) >= 6` give them, without their per-row cost.
pub fn hour_and_weekend(local: i64) -> (u8, bool) {
    let day = local.div_euclid(MICROS_PER_DAY as i64);
    let hour = local.rem_euclid(MICROS_PER_DAY as i64) / 3_600_000_000;
    // ISO day of week: Monday 1 .. Sunday 7; day 0 is a Saturday (6)
    let isodow = (day + 5).rem_euclid(7) + 1;
    (hour as u8, isodow >= 6)
}

/// What is the same for every order of a statement (plain data, shipped like the rows).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Params {
    pub as_of: i64,
    /// `as_of - interval '30 days'` and `- '90 days'`, as PostgreSQL computes them in the
    /// session time zone.
    pub cut30: i64,
    pub cut90: i64,
    /// 1 to leave duplicates out of the features.
    pub dedupe: u64,
    /// Prior shares of the top categories then "other" (0 slots when there is no category).
    pub slots: u64,
    pub priors: [f64; MAX_CATEGORY_SLOTS],
}

/// The additive smoothing of category shares (see `features::CATEGORY_PRIOR_ORDERS`).
const PRIOR_ORDERS: f64 = super::features::CATEGORY_PRIOR_ORDERS;

/// Memory the aggregate's states need for `rows` orders of `users` customers, in bytes: one
/// `OrderRow` each, in arrays grown by doubling (three quarters full on average), plus each
/// group's state (with its copy of the parameters) and hash table entry. With `users` 0, a lower
/// bound.
pub fn state_bytes(rows: u64, users: u64) -> u64 {
    let row = std::mem::size_of::<OrderRow>() as u64;
    rows * row * 4 / 3 + users * (std::mem::size_of::<Params>() as u64 + 64)
}

/// Sorts orders by (time, amount, category): the order [`compute`] reads them in.
pub fn sort_rows(rows: &mut [OrderRow]) {
    rows.sort_by(|x, y| x.t.cmp(&y.t).then(x.amount.total_cmp(&y.amount)).then(x.category().cmp(&y.category())));
}

/// The number of duplicate orders, then the order features in catalogue order: recency, frequency,
/// monetary, average order value, tenure, interval mean and std, orders in 30 days, money in 90
/// days, weekend share, hour sin and cos, then one share per category slot (top categories,
/// "other"). `rows` must not be empty (the aggregate is only finalized for users with orders).
pub fn compute(rows: &mut [OrderRow], p: &Params) -> (f64, Vec<f64>) {
    sort_rows(rows);
    let days = |from: i64, to: i64| (to as f64 - from as f64) / MICROS_PER_DAY;
    let (mut n, mut sum, mut t_min, mut t_max) = (0.0, 0.0, i64::MAX, i64::MIN);
    let mut gaps: Vec<f64> = Vec::with_capacity(rows.len());
    let (mut n30, mut sum90, mut weekend, mut hsin, mut hcos) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut duplicates = 0.0;
    let mut per_slot = [0.0; MAX_CATEGORY_SLOTS];
    let mut previous: Option<&OrderRow> = None;
    for r in rows.iter() {
        let dup = previous.is_some_and(|q| q.t == r.t && q.amount == r.amount && q.category() == r.category());
        let gap = previous.map(|q| days(q.t, r.t));
        previous = Some(r);
        if dup {
            duplicates += 1.0;
            if p.dedupe != 0 {
                continue;
            }
        }
        n += 1.0;
        sum += r.amount;
        t_min = t_min.min(r.t);
        t_max = t_max.max(r.t);
        gaps.extend(gap);
        if r.t > p.cut30 {
            n30 += 1.0;
        }
        if r.t > p.cut90 {
            sum90 += r.amount;
        }
        if r.weekend() {
            weekend += 1.0;
        }
        let angle = 2.0 * PI * r.hour as f64 / 24.0;
        hsin += angle.sin();
        hcos += angle.cos();
        let slots = p.slots as usize;
        if slots > 0 {
            let slot =
                if (r.slot as usize) >= 1 && (r.slot as usize) < slots { r.slot as usize - 1 } else { slots - 1 };
            per_slot[slot] += 1.0;
        }
    }
    let tenure = days(t_min, p.as_of).max(0.0);
    let (interval_mean, interval_std) = if !gaps.is_empty() {
        // two passes: a sum of squares minus the squared mean would lose the small spread of
        // regular buyers to rounding
        let k = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / k;
        (mean, (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / k).sqrt())
    } else {
        (tenure, 0.0)
    };
    let mut out = vec![
        days(t_max, p.as_of).max(0.0),
        n,
        sum,
        sum / n,
        tenure,
        interval_mean,
        interval_std,
        n30,
        sum90,
        weekend / n,
        hsin / n,
        hcos / n,
    ];
    out.extend((0..p.slots as usize).map(|s| (per_slot[s] + PRIOR_ORDERS * p.priors[s]) / (n + PRIOR_ORDERS)));
    (duplicates, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_estimate_grows_with_rows_and_users() {
        assert_eq!(std::mem::size_of::<OrderRow>(), 32);
        let one_user = state_bytes(17, 1);
        assert!(one_user > 17 * 32 && one_user < 17 * 32 * 2 + 1024, "{one_user}");
        assert!(state_bytes(17_000_000, 1_000_000) > 700_000_000);
        assert_eq!(state_bytes(0, 0), 0);
    }

    const DAY: i64 = 86_400_000_000;

    fn params(dedupe: bool, slots: usize) -> Params {
        let mut priors = [0.0; MAX_CATEGORY_SLOTS];
        priors[..3].copy_from_slice(&[0.5, 0.3, 0.2]);
        Params {
            as_of: 100 * DAY,
            cut30: 70 * DAY,
            cut90: 10 * DAY,
            dedupe: dedupe as u64,
            slots: slots as u64,
            priors,
        }
    }

    fn row(day: i64, amount: f64, slot: u16) -> OrderRow {
        OrderRow::new(day * DAY, amount, Some(slot as i64), slot, 6, day % 7 == 0)
    }

    #[test]
    fn hour_and_weekday_of_local_times() {
        let hour = 3_600_000_000;
        assert_eq!(hour_and_weekend(0), (0, true), "2000-01-01 was a Saturday");
        assert_eq!(hour_and_weekend(DAY + 23 * hour), (23, true), "Sunday 23:00");
        assert_eq!(hour_and_weekend(2 * DAY + 5 * hour), (5, false), "Monday 05:00");
        assert_eq!(hour_and_weekend(-1), (23, false), "Friday 1999-12-31 23:59:59.999999");
        assert_eq!(hour_and_weekend(-DAY), (0, false), "Friday 1999-12-31");
        // 2026-12-05 14:30, a Saturday: 9835 days after 2000-01-01
        assert_eq!(hour_and_weekend(9835 * DAY + 14 * hour + hour / 2), (14, true));
        assert_eq!(hour_and_weekend(9837 * DAY), (0, false), "Monday 2026-12-07");
    }

    #[test]
    fn features_of_three_orders() {
        let mut rows = vec![row(90, 30.0, 1), row(20, 10.0, 2), row(80, 20.0, 1)];
        let (dups, f) = compute(&mut rows, &params(false, 3));
        assert_eq!(dups, 0.0);
        assert_eq!(&f[..5], &[10.0, 3.0, 60.0, 20.0, 80.0]);
        // gaps 60 and 10 days
        assert!((f[5] - 35.0).abs() < 1e-12 && (f[6] - 25.0).abs() < 1e-12);
        assert_eq!(f[7], 2.0, "orders after day 70");
        assert_eq!(f[8], 60.0, "all after day 10");
        assert!((f[10] - 1.0).abs() < 1e-12 && f[11].abs() < 1e-12, "6 o'clock: sin 1, cos 0");
        assert!((f[12] - (2.0 + 2.0 * 0.5) / 5.0).abs() < 1e-12);
        assert!((f[13] - (1.0 + 2.0 * 0.3) / 5.0).abs() < 1e-12);
        assert!((f[14] - (0.0 + 2.0 * 0.2) / 5.0).abs() < 1e-12, "other");
    }

    #[test]
    fn a_single_order_has_a_censored_interval() {
        let (_, f) = compute(&mut [row(40, 5.0, 0)], &params(false, 0));
        assert_eq!(f.len(), 12);
        assert_eq!((f[5], f[6]), (60.0, 0.0));
    }

    #[test]
    fn duplicates_are_counted_and_left_out_with_dedupe() {
        let base = vec![row(50, 10.0, 1), row(50, 10.0, 1), row(50, 10.0, 2), row(60, 10.0, 1)];
        let (dups, kept) = compute(&mut base.clone(), &params(false, 3));
        assert_eq!(dups, 1.0);
        assert_eq!(kept[1], 4.0);
        let (dups, deduped) = compute(&mut base.clone(), &params(true, 3));
        assert_eq!(dups, 1.0);
        assert_eq!(deduped[1], 3.0);
        assert_eq!(deduped[2], 30.0);
        // gaps of the kept rows: 0 (same time, other category) and 10
        assert!((deduped[5] - 5.0).abs() < 1e-12);
        // a NULL category equals a NULL category
        let mut nulls = vec![OrderRow::new(5 * DAY, 1.0, None, 0, 6, false); 2];
        assert_eq!(compute(&mut nulls, &params(false, 0)).0, 1.0);
    }

    #[test]
    fn order_of_arrival_does_not_matter() {
        let rows: Vec<OrderRow> = (0..40).map(|i| row((i * 37) % 97, (i % 5) as f64 * 3.5, (i % 4) as u16)).collect();
        let mut reversed: Vec<OrderRow> = rows.iter().rev().copied().collect();
        assert_eq!(compute(&mut rows.clone(), &params(true, 3)), compute(&mut reversed, &params(true, 3)));
    }
}
