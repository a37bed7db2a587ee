//! `directions` over a store: per concept, class and partition, and the
//! cosines between them (concepts on one partition, layers of one series,
//! the two towers' embeds).

use mmprobe_store::{Site, Store};
use ndarray::Axis;

use super::{GroupBy, check_concepts, classes_of, in_partition, load, per_partition};
use crate::directions::{self, Method, cosine};
use crate::error::{AnalysisError, Result};
use crate::logistic::CheckedLogistic;
use crate::select::Filters;
use crate::tables::directions::DirectionKey;
use crate::tables::{CosineKind, CosineRow, DirectionRow};

/// What a directions sweep found, and the (concept, partition) pairs it
/// skipped, with why (one class there, say).
pub struct DirectionsOutcome {
    pub rows: Vec<DirectionRow>,
    pub cosines: Vec<CosineRow>,
    pub skipped: Vec<String>,
}

pub fn directions_store(
    store: &Store,
    concepts: &[String],
    filters: &Filters,
    methods: &[Method],
    logistic: &CheckedLogistic,
    group_by: &GroupBy,
    progress: &(dyn Fn() + Sync),
) -> Result<DirectionsOutcome> {
    check_concepts(store, concepts)?;
    group_by.check(store)?;
    let partitions = filters.matching(store)?;
    let cols: Vec<&str> = concepts.iter().map(String::as_str).collect();
    let rows: Vec<(Vec<DirectionRow>, Vec<String>)> = per_partition(&partitions, |p| {
        let run = || -> Result<_> {
            let l = load(store, p, &cols)?;
            let groups = group_by.groups(store, &l)?;
            let (mut out, mut skipped) = (Vec::new(), Vec::new());
            for c in concepts {
                let concept = match l.concept(c) {
                    Ok(concept) => concept,
                    Err(AnalysisError::Concept { message, .. }) => {
                        skipped.push(format!("{c} on {p}: {message}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let (y, names) = classes_of(&concept)?;
                let x = l.x.select(Axis(0), &concept.rows);
                for &m in methods {
                    let dirs = match m {
                        Method::DiffMeans => directions::diff_means(x.view(), y, names.len()),
                        Method::Lda => directions::lda(x.view(), y, names.len())?,
                        Method::Probe => {
                            let g = groups.subset(&concept.rows);
                            directions::probe(x.view(), y, names.len(), &g, logistic)?
                        }
                    };
                    for d in dirs {
                        out.push(DirectionRow {
                            concept: c.clone(),
                            class: names[d.class].clone(),
                            partition: p,
                            method: m,
                            direction: d.unit.iter().map(|&v| v as f32).collect(),
                            norm: d.norm,
                        });
                    }
                }
            }
            progress();
            Ok((out, skipped))
        };
        run().map_err(in_partition(p))
    })?;
    let (rows, skipped): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    let rows: Vec<DirectionRow> = rows.into_iter().flatten().collect();
    let cosines = direction_cosines(&rows);
    Ok(DirectionsOutcome { rows, cosines, skipped: skipped.into_iter().flatten().collect() })
}

/// What two direction rows have in common, if it is worth a cosine.
fn cosine_kind(a: &DirectionRow, b: &DirectionRow) -> Option<CosineKind> {
    if a.method != b.method || a.direction.len() != b.direction.len() {
        return None;
    }
    let (pa, pb) = (a.partition, b.partition);
    let same_class = a.concept == b.concept && a.class == b.class;
    if pa == pb && !same_class {
        Some(CosineKind::Concepts)
    } else if same_class && pa.tower == pb.tower && pa.site == pb.site && pa.selector == pb.selector {
        Some(CosineKind::Layers)
    } else if same_class && pa.site == Site::Embeds && pb.site == Site::Embeds && pa.tower != pb.tower {
        Some(CosineKind::Towers)
    } else {
        None
    }
}

/// Cosines between concepts (same partition), between layers (same concept,
/// class, tower, site, selector) and between the towers' embeds directions.
fn direction_cosines(rows: &[DirectionRow]) -> Vec<CosineRow> {
    let vecs: Vec<ndarray::Array1<f64>> =
        rows.iter().map(|r| r.direction.iter().map(|&v| f64::from(v)).collect()).collect();
    let mut out = Vec::new();
    for (i, a) in rows.iter().enumerate() {
        for (j, b) in rows.iter().enumerate().skip(i + 1) {
            if let Some(kind) = cosine_kind(a, b) {
                out.push(CosineRow {
                    kind,
                    method: a.method,
                    a: DirectionKey::of(a),
                    b: DirectionKey::of(b),
                    cosine: cosine(vecs[i].view(), vecs[j].view()),
                });
            }
        }
    }
    out
}
