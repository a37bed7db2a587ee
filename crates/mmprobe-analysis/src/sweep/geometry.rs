//! `geometry` over a store: modality gap, cone, retrieval and cross-modal
//! transfer on the paired embeds; CKA between partitions and separability,
//! streamed one partition at a time so memory does not grow with the number
//! of layers (each partition leaves only its CKA Gram matrix behind).

use std::collections::{BTreeMap, BTreeSet};

use mmprobe_store::part::partition_samples;
use mmprobe_store::{Partition, Selector, Site, Store, Tower};
use ndarray::{Array2, ArrayView2, Axis};
use polars::prelude::*;
use rayon::prelude::*;

use super::{Loaded, check_concepts, classes_of, in_partition, load, per_partition};
use crate::cka::{CkaInput, linear_cka};
use crate::error::{AnalysisError, Result};
use crate::folds::{self, Groups};
use crate::geometry;
use crate::labels::Concept;
use crate::logistic::{self, CheckedLogistic};
use crate::metrics::argmax_rows;
use crate::rng::Rng;
use crate::scale::Standardizer;
use crate::select::Filters;
use crate::tables::{CkaRow, GeometryReport, SeparabilityRow};

#[derive(Debug, Clone)]
pub struct GeometryParams {
    /// Samples (seeded subsample) for CKA.
    pub cka_rows: usize,
    /// Samples (seeded subsample) for the silhouette.
    pub silhouette_rows: usize,
    pub seed: u64,
    /// Concepts for separability and cross-modal transfer.
    pub concepts: Vec<String>,
    /// Folds (over samples) of the cross-modal transfer.
    pub folds: usize,
}

impl Default for GeometryParams {
    fn default() -> Self {
        GeometryParams { cka_rows: 1000, silhouette_rows: 2000, seed: 0, concepts: Vec::new(), folds: 5 }
    }
}

/// Validated geometry parameters.
#[derive(Debug, Clone)]
pub struct CheckedGeometry(GeometryParams);

impl GeometryParams {
    pub fn check(self) -> Result<CheckedGeometry> {
        let bad = |m: String| Err(AnalysisError::Params(m));
        if self.cka_rows < 3 {
            return bad(format!(
                "--cka-rows must be at least 3, got {} (the CKA of two centred rows is always 1)",
                self.cka_rows
            ));
        }
        if self.silhouette_rows < 3 {
            return bad(format!("--silhouette-rows must be at least 3, got {}", self.silhouette_rows));
        }
        if self.folds < 2 {
            return bad(format!("--folds must be at least 2, got {}", self.folds));
        }
        Ok(CheckedGeometry(self))
    }
}

impl CheckedGeometry {
    pub fn params(&self) -> &GeometryParams {
        &self.0
    }
}

fn embeds(tower: Tower) -> Partition {
    Partition { tower, site: Site::Embeds, layer: 0, selector: Selector::Pooled }
}

/// Rows of `a` and `b` that belong to the same samples, in `a`'s order.
pub fn paired(a: &Loaded, b: &Loaded) -> (Vec<usize>, Vec<usize>) {
    let index: BTreeMap<u32, usize> = b.sample.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    a.sample.iter().enumerate().filter_map(|(i, s)| index.get(s).map(|&j| (i, j))).unzip()
}

/// Seeded subsample of at most `cap` indices of 0..n, sorted (all when fewer).
pub fn subsample(n: usize, cap: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if n > cap {
        Rng::new(seed).shuffle(&mut idx);
        idx.truncate(cap);
        idx.sort_unstable();
    }
    idx
}

/// The vision and text embeds of the samples that have both, row i of each
/// the same sample, with `columns` of samples.parquet for those samples.
pub struct PairedEmbeds {
    pub sample: Vec<u32>,
    pub image: Array2<f64>,
    pub text: Array2<f64>,
    pub labels: DataFrame,
}

/// The store's paired embeds, or `None` when it lacks either tower's.
pub fn paired_embeds(store: &Store, columns: &[&str]) -> Result<Option<PairedEmbeds>> {
    let all = store.partitions()?;
    if !(all.contains(&embeds(Tower::Vision)) && all.contains(&embeds(Tower::Text))) {
        return Ok(None);
    }
    let (img, txt) = (load(store, embeds(Tower::Vision), columns)?, load(store, embeds(Tower::Text), columns)?);
    let (ia, ta) = paired(&img, &txt);
    let take = IdxCa::from_vec("i".into(), ia.iter().map(|&i| i as IdxSize).collect());
    Ok(Some(PairedEmbeds {
        sample: ia.iter().map(|&i| img.sample[i]).collect(),
        image: img.x.select(Axis(0), &ia),
        text: txt.x.select(Axis(0), &ta),
        labels: img.labels.take(&take).map_err(|e| AnalysisError::Input(e.to_string()))?,
    }))
}

/// Cross-validated transfer: a probe fit on `train`'s rows of the training
/// folds (standardised with that modality's scaler) scores `test`'s rows of
/// the held-out fold. Row i of both is one sample; folds never share one.
pub fn transfer(
    train: ArrayView2<f64>,
    test: ArrayView2<f64>,
    y: &[usize],
    k: usize,
    n_folds: usize,
    seed: u64,
    p: &CheckedLogistic,
) -> Result<f64> {
    let groups = Groups::singletons(y.len());
    let fold = folds::stratified(y, &groups, k, n_folds, seed)?;
    let correct: Vec<usize> = (0..n_folds)
        .into_par_iter()
        .map(|f| {
            let (tr, te) = folds::split(&fold, f);
            let xt = train.select(Axis(0), &tr);
            let yt: Vec<usize> = tr.iter().map(|&i| y[i]).collect();
            let s = Standardizer::fit(xt.view());
            let xs = s.transform(xt.view());
            let c = logistic::choose_c(xs.view(), &yt, &groups.subset(&tr), k, p)?;
            let m = logistic::fit(xs.view(), &yt, k, c, p)?;
            let pred = argmax_rows(m.predict_proba(s.transform(test.select(Axis(0), &te).view()).view()).view());
            Ok(te.iter().zip(pred).filter(|(i, p)| y[**i] == *p).count())
        })
        .collect::<Result<_>>()?;
    Ok(correct.iter().sum::<usize>() as f64 / y.len() as f64)
}

/// Gap, cones, retrieval and transfer on the paired embeds.
fn embeds_geometry(
    store: &Store,
    g: &GeometryParams,
    logistic: &CheckedLogistic,
    report: &mut GeometryReport,
) -> Result<()> {
    let cols: Vec<&str> = g.concepts.iter().map(String::as_str).collect();
    let Some(pe) = paired_embeds(store, &cols)? else { return Ok(()) };
    let (xi, xt) = (pe.image.view(), pe.text.view());
    report.pairs = pe.sample.len();
    report.modality_gap = Some(geometry::modality_gap(xi, xt));
    report.cone_image = Some(geometry::cone(xi));
    report.cone_text = Some(geometry::cone(xt));
    let i2t = geometry::recall_at(xi, xt, &[1, 5]);
    let t2i = geometry::recall_at(xt, xi, &[1, 5]);
    (report.retrieval_i2t_r1, report.retrieval_i2t_r5) = (Some(i2t[0]), Some(i2t[1]));
    (report.retrieval_t2i_r1, report.retrieval_t2i_r5) = (Some(t2i[0]), Some(t2i[1]));
    for c in &g.concepts {
        let col = pe.labels.column(c).map_err(|e| AnalysisError::Input(e.to_string()))?;
        let concept = Concept::from_column(c, col)?;
        let Ok((y, names)) = classes_of(&concept) else { continue };
        let (a, b) = (xi.select(Axis(0), &concept.rows), xt.select(Axis(0), &concept.rows));
        let run = |train: ArrayView2<f64>, test: ArrayView2<f64>| {
            transfer(train, test, y, names.len(), g.folds, g.seed, logistic)
        };
        match (run(b.view(), a.view()), run(a.view(), b.view())) {
            (Ok(t2i), Ok(i2t)) => {
                let t = BTreeMap::from([("text_to_image".to_string(), t2i), ("image_to_text".to_string(), i2t)]);
                report.transfer.insert(c.clone(), t);
            }
            // Too few pairs of a class for the folds: no transfer number for it.
            (Err(AnalysisError::TooSmall(_)), _) | (_, Err(AnalysisError::TooSmall(_))) => {}
            (Err(e), _) | (_, Err(e)) => return Err(e),
        }
    }
    Ok(())
}

/// What one partition leaves behind: its CKA Gram matrix and separability rows.
struct PartitionSummary {
    cka: CkaInput,
    separability: Vec<SeparabilityRow>,
}

fn summarise(store: &Store, p: Partition, keep: &[u32], g: &GeometryParams) -> Result<PartitionSummary> {
    let cols: Vec<&str> = g.concepts.iter().map(String::as_str).collect();
    let l = load(store, p, &cols)?;
    let pos: BTreeMap<u32, usize> = l.sample.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let rows: Vec<usize> = keep.iter().map(|s| pos[s]).collect();
    let cka = CkaInput::new(l.x.select(Axis(0), &rows).view());
    let mut separability = Vec::new();
    for c in &g.concepts {
        // A concept that is a number, or has one class here, has no separability here.
        let Ok(concept) = l.concept(c) else { continue };
        let Ok((y, names)) = classes_of(&concept) else { continue };
        let x = l.x.select(Axis(0), &concept.rows);
        let sub = subsample(y.len(), g.silhouette_rows, g.seed);
        let ys: Vec<usize> = sub.iter().map(|&i| y[i]).collect();
        separability.push(SeparabilityRow {
            concept: c.clone(),
            partition: p,
            fisher_ratio: geometry::fisher_ratio(x.view(), y, names.len())?,
            silhouette: geometry::silhouette(x.select(Axis(0), &sub).view(), &ys, names.len())?,
        });
    }
    Ok(PartitionSummary { cka, separability })
}

pub fn geometry_store(
    store: &Store,
    filters: &Filters,
    params: &CheckedGeometry,
    logistic: &CheckedLogistic,
    progress: &(dyn Fn() + Sync),
) -> Result<(GeometryReport, Vec<CkaRow>, Vec<SeparabilityRow>)> {
    let g = params.params();
    if !g.concepts.is_empty() {
        check_concepts(store, &g.concepts)?;
    }
    let mut report = GeometryReport::default();
    embeds_geometry(store, g, logistic, &mut report)?;

    // CKA between every pair of one-row-per-sample partitions, on the samples all share.
    let parts: Vec<Partition> = filters.matching(store)?.into_iter().filter(|p| p.selector != Selector::All).collect();
    let mut common: Option<BTreeSet<u32>> = None;
    for &p in &parts {
        let s: BTreeSet<u32> = partition_samples(&store.root, p)?.into_iter().collect();
        common = Some(match common {
            None => s,
            Some(c) => c.intersection(&s).copied().collect(),
        });
    }
    let common: Vec<u32> = common.unwrap_or_default().into_iter().collect();
    if !parts.is_empty() && common.len() < 3 {
        return Err(AnalysisError::Input(format!(
            "the {} partitions share {} samples: CKA needs at least 3",
            parts.len(),
            common.len()
        )));
    }
    let keep: Vec<u32> = subsample(common.len(), g.cka_rows, g.seed).into_iter().map(|i| common[i]).collect();
    report.cka_rows = keep.len();
    let summaries: Vec<PartitionSummary> = per_partition(&parts, |p| {
        let s = summarise(store, p, &keep, g).map_err(in_partition(p));
        progress();
        s
    })?;
    let pairs: Vec<(usize, usize)> = (0..parts.len()).flat_map(|i| (i..parts.len()).map(move |j| (i, j))).collect();
    let cka: Vec<CkaRow> = pairs
        .par_iter()
        .map(|&(i, j)| CkaRow { a: parts[i], b: parts[j], cka: linear_cka(&summaries[i].cka, &summaries[j].cka) })
        .collect();
    let mut sep: Vec<SeparabilityRow> = summaries.into_iter().flat_map(|s| s.separability).collect();
    sep.sort_by(|a, b| (&a.concept, a.partition).cmp(&(&b.concept, b.partition)));
    Ok((report, cka, sep))
}
