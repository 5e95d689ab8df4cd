//! `segment_plot`: reads what a picture needs from the model tables and hands it to
//! `core::plot`.

use ndarray::Array2;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::core::error::{Result, SegError};
use crate::core::features::{quote_ident, Transform, RFM_COLUMNS};
use crate::core::plot::{self, SegmentInfo};
use crate::pg::catalog::{self, Current};
use crate::pg::error::{from_spi, OrRaise};
use crate::pg::live;

/// Users drawn on the map, at most (a repeatable Bernoulli sample).
const MAP_USERS: f64 = 2_000.0;

fn segments(model: &str, version: i32) -> Result<Vec<SegmentInfo>> {
    Spi::connect(|c| {
        let args: [DatumWithOid; 2] = [model.into(), version.into()];
        let t = c
            .select("SELECT segment_id, name FROM segment.centroids WHERE model = $1 AND version = $2 ORDER BY segment_id", None, &args)
            .map_err(from_spi)?;
        let mut out = Vec::new();
        for r in t {
            out.push(SegmentInfo {
                id: r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0),
                name: r.get::<String>(2).map_err(from_spi)?.unwrap_or_default(),
            });
        }
        Ok(out)
    })
}

fn map(model: &str, cur: &Current, segs: &[SegmentInfo]) -> Result<String> {
    let live = live::load(model)?;
    let users: i64 = Spi::get_one(&format!("SELECT count(*) FROM segment.{}", quote_ident(&cur.users_table)))
        .map_err(from_spi)?
        .unwrap_or(0);
    let percent = (MAP_USERS / users.max(1) as f64 * 100.0).min(100.0);
    let (labels, flat, dims) = Spi::connect(|c| {
        let t = c
            .select(
                &format!(
                    "SELECT segment_id, embedding FROM segment.{} TABLESAMPLE BERNOULLI ({percent}) REPEATABLE (42)",
                    quote_ident(&cur.users_table)
                ),
                None,
                &[],
            )
            .map_err(from_spi)?;
        let (mut labels, mut flat, mut dims) = (Vec::new(), Vec::new(), 0);
        for r in t {
            let e = r.get::<Vec<f32>>(2).map_err(from_spi)?.unwrap_or_default();
            dims = e.len();
            labels.push(r.get::<i32>(1).map_err(from_spi)?);
            flat.extend(e.into_iter().map(f64::from));
        }
        Ok::<_, SegError>((labels, flat, dims))
    })?;
    let embeddings = Array2::from_shape_vec((labels.len(), dims), flat).unwrap_or_else(|_| Array2::zeros((0, 0)));
    // centroid rows in segment-id order, as `segs` lists them
    let c = &live.fitted.clustering.centroids;
    let order: Vec<usize> = segs
        .iter()
        .filter_map(|s| (0..c.nrows()).find(|&i| live.fitted.segment_id(i) == s.id))
        .collect();
    let centroids = c.select(ndarray::Axis(0), &order);
    Ok(plot::map(&embeddings, &labels, &centroids, segs))
}

fn sizes(model: &str, segs: &[SegmentInfo]) -> Result<String> {
    let view = quote_ident(&format!("{model}_sizes_daily"));
    let rows: Vec<(String, i32, f64)> = Spi::connect(|c| {
        let t = c
            .select(&format!("SELECT day::text, segment_id, users::float8 FROM segment.{view} ORDER BY day, segment_id"), None, &[])
            .map_err(from_spi)?;
        let mut out = Vec::new();
        for r in t {
            out.push((
                r.get::<String>(1).map_err(from_spi)?.unwrap_or_default(),
                r.get::<i32>(2).map_err(from_spi)?.unwrap_or(0),
                r.get::<f64>(3).map_err(from_spi)?.unwrap_or(0.0),
            ));
        }
        Ok::<_, SegError>(out)
    })?;
    let mut days: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    days.dedup();
    // the view has a row only on days a segment changed: carry sizes forward
    let series: Vec<Vec<f64>> = segs
        .iter()
        .map(|s| {
            let mut size = 0.0;
            days.iter()
                .map(|d| {
                    if let Some(r) = rows.iter().find(|r| &r.0 == d && r.1 == s.id) {
                        size = r.2;
                    }
                    size
                })
                .collect()
        })
        .collect();
    Ok(plot::sizes(&days, &series, segs))
}

fn profile(model: &str, cur: &Current, segs: &[SegmentInfo]) -> Result<String> {
    let live = live::load(model)?;
    let scales: Vec<_> = RFM_COLUMNS
        .iter()
        .filter_map(|n| live.fitted.scaler.features.iter().find(|f| f.name == *n))
        .collect();
    let exprs: Vec<String> = scales
        .iter()
        .map(|f| match f.transform {
            Transform::Log => format!("avg(sign({c}) * ln(1 + abs({c})))", c = quote_ident(&f.name)),
            Transform::Linear => format!("avg({})", quote_ident(&f.name)),
        })
        .collect();
    let means: Vec<(i32, Vec<Option<f64>>)> = Spi::connect(|c| {
        let t = c
            .select(
                &format!(
                    "SELECT segment_id, ARRAY[{}] FROM segment.{} WHERE segment_id IS NOT NULL GROUP BY 1",
                    exprs.join(", "),
                    quote_ident(&cur.users_table)
                ),
                None,
                &[],
            )
            .map_err(from_spi)?;
        let mut out = Vec::new();
        for r in t {
            out.push((r.get::<i32>(1).map_err(from_spi)?.unwrap_or(0), r.get::<Vec<Option<f64>>>(2).map_err(from_spi)?.unwrap_or_default()));
        }
        Ok::<_, SegError>(out)
    })?;
    let values: Vec<Vec<f64>> = segs
        .iter()
        .map(|s| {
            let m = means.iter().find(|m| m.0 == s.id).map(|m| m.1.clone()).unwrap_or_default();
            scales
                .iter()
                .enumerate()
                .map(|(j, f)| m.get(j).copied().flatten().map_or(0.0, |v| (v - f.center) / f.scale))
                .collect()
        })
        .collect();
    let names: Vec<String> = scales.iter().map(|f| f.name.clone()).collect();
    Ok(plot::profile(&names, &values, segs))
}

pub fn render(model: &str, kind: &str) -> Result<String> {
    catalog::check_model_name(model)?;
    let cur = catalog::current(model)?;
    let segs = segments(model, cur.version)?;
    match kind {
        "map" => map(model, &cur, &segs),
        "sizes" => sizes(model, &segs),
        "profile" => profile(model, &cur, &segs),
        _ => Err(SegError::invalid(format!("unknown plot kind \"{kind}\""))
            .hint("use 'map' (users by segment), 'sizes' (segment sizes over time) or 'profile' (RFM profiles)")),
    }
}

/// A self-contained SVG picture of a model: `map`, `sizes` or `profile`.
#[pg_extern(stable, parallel_safe)]
fn segment_plot(model: default!(&str, "'default'"), kind: default!(&str, "'map'")) -> String {
    render(model, kind).or_raise()
}
