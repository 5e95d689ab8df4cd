//! What sync live mode keeps per customer so that an INSERT does not re-read the customer's
//! history: their usable orders (as the order features aggregate collects them) and a tally of
//! their events. The features computed from this state are those of the batch statement for the
//! same rows, by construction: the orders go through the very function the aggregate finalizes
//! with, and the event features repeat the statement's few lines of SQL arithmetic.
//!
//! A state is only trusted when its tag matches the model (time zone and category slots decide
//! how an order row was encoded) and, for events, when it was not tallied at a later time than
//! the one asked for; otherwise the caller rebuilds it from the source.

use super::order_features::{self, OrderRow, Params};

/// Bumped when the encoding of a state changes: older states are then rebuilt, never misread.
const FORMAT: u64 = 1;

/// The tag of states encoded for a model with this time zone, these category slots (in slot
/// order; None is "other") and with or without an events source. FNV-1a: stable across Rust
/// versions and runs, unlike `std`'s hasher.
pub fn tag(timezone: &str, slots: &[Option<&str>], events: bool) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&FORMAT.to_le_bytes());
    eat(timezone.as_bytes());
    for s in slots {
        match s {
            Some(name) => {
                eat(&[1]);
                eat(&(name.len() as u64).to_le_bytes());
                eat(name.as_bytes());
            }
            None => eat(&[0]),
        }
    }
    eat(&[events as u8]);
    h as i64
}

const ROW: usize = std::mem::size_of::<OrderRow>();

/// Orders as stored: the rows' bytes (plain `repr(C)` data, like the aggregate's serialized
/// states; a state never leaves the server that wrote it except in a dump of the same platform).
pub fn encode_rows(rows: &[OrderRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * ROW);
    for r in rows {
        // SAFETY: OrderRow is repr(C) plain data without implicit padding.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts((r as *const OrderRow).cast::<u8>(), ROW) });
    }
    out
}

/// The rows of [`encode_rows`]; None when the bytes cannot be rows.
pub fn decode_rows(bytes: &[u8]) -> Option<Vec<OrderRow>> {
    if !bytes.len().is_multiple_of(ROW) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(ROW)
            // SAFETY: ROW bytes, read unaligned, of a repr(C) plain-data type.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<OrderRow>()) })
            .collect(),
    )
}

/// `stored` plus `new`, in the aggregate's order.
pub fn merge_rows(mut stored: Vec<OrderRow>, new: &[OrderRow]) -> Vec<OrderRow> {
    stored.extend_from_slice(new);
    order_features::sort_rows(&mut stored);
    stored
}

/// What an event counts as (the funnel features' type lists, matched by SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other = 0,
    View = 1,
    Cart = 2,
    Search = 3,
}

impl Kind {
    pub fn from_code(code: i32) -> Kind {
        match code {
            1 => Kind::View,
            2 => Kind::Cart,
            3 => Kind::Search,
            _ => Kind::Other,
        }
    }
}

/// A customer's usable events as of `as_of` (microseconds, PostgreSQL's epoch): counts and the
/// latest time of those at or before it, and each later ("pending") event on its own, to be
/// counted once the clock passes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    pub as_of: i64,
    pub events: i64,
    pub views: i64,
    pub carts: i64,
    pub searches: i64,
    pub last: Option<i64>,
    pub pending: Vec<(i64, Kind)>,
}

impl Tally {
    fn count(&mut self, t: i64, kind: Kind) {
        self.events += 1;
        match kind {
            Kind::View => self.views += 1,
            Kind::Cart => self.carts += 1,
            Kind::Search => self.searches += 1,
            Kind::Other => {}
        }
        self.last = Some(self.last.map_or(t, |l| l.max(t)));
    }

    /// The same events tallied as of a later (or the same) time; None for an earlier one, which
    /// the counts cannot be taken back to.
    pub fn at(&self, as_of: i64) -> Option<Tally> {
        if as_of < self.as_of {
            return None;
        }
        let mut out = Tally { as_of, pending: Vec::new(), ..self.clone() };
        for &(t, kind) in &self.pending {
            if t <= as_of {
                out.count(t, kind);
            } else {
                out.pending.push((t, kind));
            }
        }
        Some(out)
    }

    /// Both tallies' events, as of the later of their times.
    pub fn merge(&self, other: &Tally) -> Tally {
        let as_of = self.as_of.max(other.as_of);
        let (mut out, b) = (self.at(as_of).unwrap_or_default(), other.at(as_of).unwrap_or_default());
        out.as_of = as_of;
        out.events += b.events;
        out.views += b.views;
        out.carts += b.carts;
        out.searches += b.searches;
        out.last = match (out.last, b.last) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        out.pending.extend(b.pending);
        out
    }

    /// Little-endian fields, then the pending events.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 * 8 + 1 + self.pending.len() * 9);
        for v in [self.as_of, self.events, self.views, self.carts, self.searches, self.last.unwrap_or(0)] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(self.last.is_some() as u8);
        for (t, kind) in &self.pending {
            out.extend_from_slice(&t.to_le_bytes());
            out.push(*kind as u8);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Tally> {
        if bytes.len() < 49 || !(bytes.len() - 49).is_multiple_of(9) {
            return None;
        }
        let int = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let pending = bytes[49..].chunks_exact(9).map(|c| (int_of(c), Kind::from_code(c[8] as i32))).collect();
        Some(Tally {
            as_of: int(0),
            events: int(8),
            views: int(16),
            carts: int(24),
            searches: int(32),
            last: (bytes[48] != 0).then(|| int(40)),
            pending,
        })
    }
}

fn int_of(c: &[u8]) -> i64 {
    i64::from_le_bytes(c[..8].try_into().expect("8 bytes"))
}

/// A tally of events `(time, kind)` as of `as_of`.
pub fn tally(as_of: i64, events: impl IntoIterator<Item = (i64, Kind)>) -> Tally {
    let mut out = Tally { as_of, ..Tally::default() };
    for (t, kind) in events {
        if t <= as_of {
            out.count(t, kind);
        } else {
            out.pending.push((t, kind));
        }
    }
    out
}

const MICROS_PER_DAY: f64 = 86_400.0 * 1_000_000.0;

/// Positions, in `order_features::compute`'s output, of the features that are 0 rather than
/// unknown for a customer known only from events (`features::ZERO_WITHOUT_ORDERS`).
const ZERO_WITHOUT_ORDERS: [usize; 4] = [1, 2, 7, 8];
const FREQUENCY: usize = 1;

/// The feature vector (catalogue order) of a customer with these orders (`rows`, any order,
/// future ones included) and, when the model has an events source, this tally (already taken to
/// `p.as_of`, see [`Tally::at`]). None when nothing of theirs is usable as of `p.as_of`: the
/// batch statement would have no row for them.
pub fn features(rows: &[OrderRow], events: Option<&Tally>, with_events: bool, p: &Params) -> Option<Vec<Option<f64>>> {
    let mut usable: Vec<OrderRow> = rows.iter().filter(|r| r.t <= p.as_of).copied().collect();
    let counted = events.filter(|e| e.events > 0);
    if usable.is_empty() && counted.is_none() {
        return None;
    }
    let n_orders = 12 + p.slots as usize;
    let orders: Vec<Option<f64>> = if usable.is_empty() {
        (0..n_orders).map(|i| (with_events && ZERO_WITHOUT_ORDERS.contains(&i)).then_some(0.0)).collect()
    } else {
        order_features::compute(&mut usable, p).1.into_iter().map(Some).collect()
    };
    if !with_events {
        return Some(orders);
    }
    // The statement's arithmetic: `e` is a row only for customers with usable events.
    let frequency = orders[FREQUENCY].unwrap_or(0.0);
    let mut out = orders;
    match counted {
        Some(e) => {
            let (views, carts) = (e.views as f64, e.carts as f64);
            let denominator = views.max(carts);
            out.extend([
                Some(e.events as f64),
                Some(views),
                Some(carts),
                Some(e.searches as f64),
                (views != 0.0).then(|| carts / views),
                // least(1, x) is 1 when x is NULL (a zero denominator)
                Some(if denominator == 0.0 { 1.0 } else { (frequency / denominator).min(1.0) }),
                e.last.map(|l| ((p.as_of - l) as f64 / MICROS_PER_DAY).max(0.0)),
            ]);
        }
        // no `e` row: its columns are NULL, and least(1, NULL) is 1
        None => out.extend([None, None, None, None, None, Some(1.0), None]),
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::order_features::MAX_CATEGORY_SLOTS;

    const DAY: i64 = 86_400_000_000;

    fn params(as_of_day: i64, slots: usize) -> Params {
        let mut priors = [0.0; MAX_CATEGORY_SLOTS];
        priors[..slots].fill(1.0 / slots.max(1) as f64);
        Params {
            as_of: as_of_day * DAY,
            cut30: (as_of_day - 30) * DAY,
            cut90: (as_of_day - 90) * DAY,
            dedupe: 0,
            slots: slots as u64,
            priors,
        }
    }

    fn order(day: i64, amount: f64) -> OrderRow {
        OrderRow::new(day * DAY, amount, Some(day % 3), (day % 3) as u16, 12, false)
    }

    #[test]
    fn tags_tell_models_apart() {
        let base = tag("UTC", &[Some("books"), None], true);
        assert_eq!(base, tag("UTC", &[Some("books"), None], true));
        assert_ne!(base, tag("Europe/Paris", &[Some("books"), None], true));
        assert_ne!(base, tag("UTC", &[Some("toys"), None], true));
        assert_ne!(base, tag("UTC", &[None, Some("books")], true));
        assert_ne!(base, tag("UTC", &[Some("books"), None], false));
        assert_ne!(tag("UTC", &[Some("ab"), Some("c")], false), tag("UTC", &[Some("a"), Some("bc")], false));
    }

    #[test]
    fn rows_round_trip_and_merge_in_the_aggregates_order() {
        let rows = vec![order(5, 10.0), order(1, 3.5)];
        let bytes = encode_rows(&rows);
        assert_eq!(bytes.len(), 64);
        assert_eq!(decode_rows(&bytes).unwrap(), rows);
        assert!(decode_rows(&bytes[1..]).is_none());
        let merged = merge_rows(decode_rows(&bytes).unwrap(), &[order(3, 1.0)]);
        assert_eq!(merged.iter().map(|r| r.t / DAY).collect::<Vec<_>>(), vec![1, 3, 5]);
    }

    #[test]
    fn incremental_orders_give_the_features_of_all_orders_at_once() {
        let all: Vec<OrderRow> = (0..30).map(|i| order((i * 17) % 101, 1.0 + (i % 7) as f64)).collect();
        let p = params(120, 3);
        let mut state = Vec::new();
        for chunk in all.chunks(4) {
            state = merge_rows(decode_rows(&encode_rows(&state)).unwrap(), chunk);
        }
        let mut batch = all.clone();
        let expected: Vec<Option<f64>> = order_features::compute(&mut batch, &p).1.into_iter().map(Some).collect();
        assert_eq!(features(&state, None, false, &p), Some(expected));
    }

    #[test]
    fn future_orders_wait_for_their_time() {
        let rows = vec![order(10, 5.0), order(50, 7.0)];
        let early = features(&rows, None, false, &params(20, 0)).unwrap();
        assert_eq!(early[1], Some(1.0), "one usable order on day 20");
        let late = features(&rows, None, false, &params(60, 0)).unwrap();
        assert_eq!(late[1], Some(2.0));
        assert_eq!(features(&rows, None, false, &params(5, 0)), None, "nothing usable yet");
    }

    #[test]
    fn tallies_roll_forward_merge_and_round_trip() {
        let t = tally(
            10 * DAY,
            [(2 * DAY, Kind::View), (9 * DAY, Kind::Cart), (15 * DAY, Kind::Search), (3 * DAY, Kind::Other)],
        );
        assert_eq!((t.events, t.views, t.carts, t.searches, t.last), (3, 1, 1, 0, Some(9 * DAY)));
        assert_eq!(t.pending, vec![(15 * DAY, Kind::Search)]);
        assert_eq!(Tally::decode(&t.encode()), Some(t.clone()));
        assert!(Tally::decode(&t.encode()[1..]).is_none());
        assert!(t.at(9 * DAY).is_none(), "counts cannot go back in time");
        let later = t.at(20 * DAY).unwrap();
        assert_eq!((later.events, later.searches, later.last), (4, 1, Some(15 * DAY)));
        assert!(later.pending.is_empty());
        // merging equals tallying everything at once
        let more = tally(12 * DAY, [(11 * DAY, Kind::View), (30 * DAY, Kind::Cart)]);
        let all = tally(
            12 * DAY,
            [
                (2 * DAY, Kind::View),
                (9 * DAY, Kind::Cart),
                (15 * DAY, Kind::Search),
                (3 * DAY, Kind::Other),
                (11 * DAY, Kind::View),
                (30 * DAY, Kind::Cart),
            ],
        );
        let mut merged = t.merge(&more);
        merged.pending.sort_by_key(|p| p.0);
        assert_eq!(merged, all);
        let empty = Tally::decode(&Tally::default().encode()).unwrap();
        assert_eq!(empty.last, None);
    }

    #[test]
    fn event_features_follow_the_statements_arithmetic() {
        let p = params(100, 0);
        let rows = vec![order(90, 10.0), order(95, 20.0)];
        let e = tally(
            100 * DAY,
            [(98 * DAY, Kind::View), (99 * DAY, Kind::View), (99 * DAY, Kind::Cart), (50 * DAY, Kind::Other)],
        );
        let f = features(&rows, Some(&e), true, &p).unwrap();
        assert_eq!(f.len(), 12 + 7);
        assert_eq!(&f[12..16], &[Some(4.0), Some(2.0), Some(1.0), Some(0.0)]);
        assert_eq!(f[16], Some(0.5), "carts per view");
        assert_eq!(f[17], Some(1.0), "2 orders over max(2 views, 1 cart), at most 1");
        assert_eq!(f[18], Some(1.0), "a day since the last event");
        // orders but no events: NULL event columns, purchase rate 1 (least ignores NULL)
        let f = features(&rows, None, true, &p).unwrap();
        assert_eq!(&f[12..], &[None, None, None, None, None, Some(1.0), None]);
        // events but no orders: the zero-without-orders features are 0, the others unknown
        let f = features(&[], Some(&e), true, &p).unwrap();
        assert_eq!((f[0], f[1], f[2], f[7], f[8], f[4]), (None, Some(0.0), Some(0.0), Some(0.0), Some(0.0), None));
        assert_eq!(f[17], Some(0.0));
        // only views of zero: no cart rate; no views or carts: purchase rate 1
        let only_other = tally(100 * DAY, [(99 * DAY, Kind::Other)]);
        let f = features(&rows, Some(&only_other), true, &p).unwrap();
        assert_eq!((f[16], f[17]), (None, Some(1.0)));
        assert_eq!(features(&[], Some(&Tally::default()), true, &p), None, "no usable events, no orders");
    }
}
