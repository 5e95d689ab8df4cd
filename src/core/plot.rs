//! Self-contained SVG pictures of a model: the user map (2-D PCA of the embeddings), segment
//! sizes over time, and the segments' profiles side by side. Plain text generation: no fonts,
//! scripts or external references, so a picture renders the same anywhere.

use std::fmt::Write;

use ndarray::Array2;

use super::embedding::Pca;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 500.0;
const MARGIN: f64 = 60.0;

/// Colour-blind-safe palette (Okabe–Ito), repeated for more than eight segments.
const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
const NOISE: &str = "#BBBBBB";

pub fn colour(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// Escapes text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn open(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\
         <title>{t}</title>\
         <rect width=\"100%\" height=\"100%\" fill=\"#FFFFFF\"/>\
         <text x=\"{x}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">{t}</text>",
        t = escape(title),
        x = WIDTH / 2.0
    );
    s
}

fn close(mut s: String) -> String {
    s.push_str("</svg>\n");
    s
}

/// Maps data coordinates to the plot area.
struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn new(values: impl Iterator<Item = f64>, from: f64, to: f64) -> Scale {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        Scale { lo, hi, from, to }
    }

    fn at(&self, v: f64) -> f64 {
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }
}

fn legend(s: &mut String, entries: &[(String, &str)]) {
    for (i, (label, colour)) in entries.iter().enumerate() {
        let y = MARGIN + 18.0 * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{y0}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{l}</text>",
            x = WIDTH - 190.0,
            y0 = y - 9.0,
            tx = WIDTH - 175.0,
            ty = y,
            l = escape(label)
        );
    }
}

/// A segment as the pictures show it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub id: i32,
    pub name: String,
}

fn entries(segments: &[SegmentInfo]) -> Vec<(String, &'static str)> {
    segments.iter().enumerate().map(|(i, s)| (format!("{} {}", s.id, s.name), colour(i))).collect()
}

/// The user map: the embeddings of (a sample of) users and the centroids, projected on their
/// first two principal components, coloured by segment (noise grey), centroids labelled.
pub fn map(embeddings: &Array2<f64>, segment_of: &[Option<i32>], centroids: &Array2<f64>, segments: &[SegmentInfo]) -> String {
    let mut s = open("Customers by segment (embedding, first two principal components)");
    if embeddings.nrows() < 2 || embeddings.ncols() < 1 {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">not enough users to draw</text>", WIDTH / 2.0, HEIGHT / 2.0);
        return close(s);
    }
    let dims = embeddings.ncols().min(2);
    let pca = Pca::fit(embeddings.view(), dims);
    let project = |x: &Array2<f64>| {
        let p = pca.encode(x.view());
        (0..p.nrows()).map(|i| (p[[i, 0]], if dims > 1 { p[[i, 1]] } else { 0.0 })).collect::<Vec<_>>()
    };
    let points = project(embeddings);
    let centres = project(centroids);
    let all = points.iter().chain(&centres);
    let xs = Scale::new(all.clone().map(|p| p.0), MARGIN, WIDTH - 210.0);
    let ys = Scale::new(all.map(|p| p.1), HEIGHT - MARGIN, MARGIN);
    let index_of = |id: i32| segments.iter().position(|s| s.id == id);
    for ((x, y), seg) in points.iter().zip(segment_of) {
        let fill = seg.and_then(index_of).map_or(NOISE, colour);
        let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{fill}\" fill-opacity=\"0.55\"/>", xs.at(*x), ys.at(*y));
    }
    for (i, (x, y)) in centres.iter().enumerate() {
        let (cx, cy) = (xs.at(*x), ys.at(*y));
        let label = segments.get(i).map(|s| s.name.as_str()).unwrap_or("");
        let _ = write!(
            s,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"7\" fill=\"{c}\" stroke=\"#000000\" stroke-width=\"2\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" font-weight=\"bold\">{l}</text>",
            c = colour(i),
            tx = cx + 10.0,
            ty = cy - 8.0,
            l = escape(label)
        );
    }
    legend(&mut s, &entries(segments));
    close(s)
}

/// Segment sizes over time: one line per segment, `days` in order, `sizes[segment][day]`.
pub fn sizes(days: &[String], sizes: &[Vec<f64>], segments: &[SegmentInfo]) -> String {
    let mut s = open("Segment sizes over time");
    if days.is_empty() {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no history yet</text>", WIDTH / 2.0, HEIGHT / 2.0);
        return close(s);
    }
    let xs = Scale::new([0.0, (days.len().max(2) - 1) as f64].into_iter(), MARGIN, WIDTH - 210.0);
    let ys = Scale::new(sizes.iter().flatten().copied().chain([0.0]), HEIGHT - MARGIN, MARGIN + 10.0);
    axes(&mut s, &ys, &format!("{} … {}", days[0], days[days.len() - 1]));
    for (i, series) in sizes.iter().enumerate() {
        let pts: Vec<String> =
            series.iter().enumerate().map(|(d, v)| format!("{:.1},{:.1}", xs.at(d as f64), ys.at(*v))).collect();
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" points=\"{}\"/>", colour(i), pts.join(" "));
        if let Some((d, v)) = series.iter().enumerate().next_back() {
            let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"/>", xs.at(d as f64), ys.at(*v), colour(i));
        }
    }
    legend(&mut s, &entries(segments));
    close(s)
}

/// A y axis with three ticks and an x caption.
fn axes(s: &mut String, ys: &Scale, caption: &str) {
    let _ = write!(
        s,
        "<line x1=\"{m}\" y1=\"{top}\" x2=\"{m}\" y2=\"{bottom}\" stroke=\"#444444\"/>\
         <line x1=\"{m}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#444444\"/>\
         <text x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\">{c}</text>",
        m = MARGIN,
        top = MARGIN,
        bottom = HEIGHT - MARGIN,
        right = WIDTH - 210.0,
        cx = (MARGIN + WIDTH - 210.0) / 2.0,
        cy = HEIGHT - MARGIN + 30.0,
        c = escape(caption)
    );
    for t in 0..=2 {
        let v = ys.lo + (ys.hi - ys.lo) * t as f64 / 2.0;
        let _ = write!(
            s,
            "<text x=\"{x}\" y=\"{y:.1}\" text-anchor=\"end\">{v}</text>",
            x = MARGIN - 6.0,
            y = ys.at(v) + 4.0,
            v = format_number(v)
        );
    }
}

fn format_number(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The segments' profiles side by side: for each feature (rows), a bar per segment showing its
/// mean scaled value (IQRs from the population median; 0 = typical).
pub fn profile(features: &[String], values: &[Vec<f64>], segments: &[SegmentInfo]) -> String {
    let mut s = open("Segment profiles (scaled means: IQRs from the median customer)");
    let rows = features.len().max(1) as f64;
    let band = (HEIGHT - 2.0 * MARGIN) / rows;
    let bar = (band * 0.8 / segments.len().max(1) as f64).max(1.0);
    let left = MARGIN + 110.0;
    let xs = Scale::new(values.iter().flatten().copied().chain([0.0]).map(|v| v.clamp(-3.0, 3.0)), left, WIDTH - 210.0);
    let zero = xs.at(0.0);
    let _ = write!(s, "<line x1=\"{zero:.1}\" y1=\"{MARGIN}\" x2=\"{zero:.1}\" y2=\"{}\" stroke=\"#444444\"/>", HEIGHT - MARGIN);
    for (f, name) in features.iter().enumerate() {
        let y0 = MARGIN + band * f as f64;
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", left - 6.0, y0 + band / 2.0 + 4.0, escape(name));
        for (i, seg_values) in values.iter().enumerate() {
            let v = seg_values.get(f).copied().unwrap_or(0.0);
            let v = if v.is_finite() { v.clamp(-3.0, 3.0) } else { 0.0 };
            let (x, w) = if v >= 0.0 { (zero, xs.at(v) - zero) } else { (xs.at(v), zero - xs.at(v)) };
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                y0 + band * 0.1 + bar * i as f64,
                w.max(0.5),
                bar * 0.9,
                colour(i)
            );
        }
    }
    legend(&mut s, &entries(segments));
    close(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(n: usize) -> Vec<SegmentInfo> {
        (0..n).map(|i| SegmentInfo { id: i as i32 + 1, name: format!("S<{i}>") }).collect()
    }

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "no non-finite coordinates");
        // every element opened is closed: self-closing or with a matching end tag
        for tag in ["text", "title", "svg"] {
            assert_eq!(svg.matches(&format!("<{tag}")).count(), svg.matches(&format!("</{tag}>")).count(), "{tag}");
        }
    }

    #[test]
    fn map_draws_every_user_and_centroid_and_escapes_names() {
        let e = Array2::from_shape_fn((30, 4), |(i, j)| ((i % 3) * 5 + j) as f64 + (i as f64) * 0.01);
        let seg: Vec<Option<i32>> = (0..30).map(|i| if i == 0 { None } else { Some((i % 3) as i32 + 1) }).collect();
        let c = Array2::from_shape_fn((3, 4), |(i, j)| (i * 5 + j) as f64);
        let svg = map(&e, &seg, &c, &segs(3));
        well_formed(&svg);
        assert_eq!(svg.matches("<circle").count(), 33);
        assert!(svg.contains("S&lt;0&gt;") && !svg.contains("S<0>"));
        assert!(svg.contains(NOISE));
    }

    #[test]
    fn sizes_and_profile_are_well_formed_even_when_degenerate() {
        let days: Vec<String> = vec!["2026-01-01".into(), "2026-01-02".into()];
        well_formed(&sizes(&days, &[vec![10.0, 12.0], vec![5.0, 3.0]], &segs(2)));
        well_formed(&sizes(&[], &[], &segs(0)));
        well_formed(&sizes(&days[..1], &[vec![7.0]], &segs(1)));
        let p = profile(&["recency".into(), "frequency".into()], &[vec![1.0, -2.0], vec![f64::NAN, 9.0]], &segs(2));
        well_formed(&p);
        assert_eq!(p.matches("<rect").count(), 1 + 4 + 2, "background, bars, legend");
        well_formed(&map(&Array2::zeros((1, 2)), &[Some(1)], &Array2::zeros((1, 2)), &segs(1)));
    }
}
