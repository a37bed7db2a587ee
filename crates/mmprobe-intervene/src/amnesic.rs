//! Amnesic probing's read-out: a logistic probe, cross-validated on the
//! held-out samples' downstream rows, scored per sample (right or wrong out of fold).

use mmprobe_analysis::ProbeParams;
use mmprobe_analysis::folds::{Groups, stratified};
use mmprobe_analysis::probe::cross_val_proba;
use ndarray::{Array2, Axis};

use crate::error::Result;
use crate::fit::present_classes;

/// 1.0 / 0.0 per row for whether the out-of-fold prediction is its class;
/// `None` for rows without a class. `None` throughout when fewer than two
/// classes, or fewer rows per class than folds, are present.
pub fn out_of_fold_correct(
    x: &Array2<f64>,
    label: &[Option<usize>],
    folds: usize,
    seed: u64,
) -> Result<Vec<Option<f64>>> {
    let rows: Vec<usize> = (0..label.len()).filter(|&i| label[i].is_some()).collect();
    let classes: Vec<usize> = rows.iter().map(|&i| label[i].expect("kept")).collect();
    let (y, present) = present_classes(&classes);
    let k = present.len();
    let smallest = (0..k).map(|c| y.iter().filter(|&&v| v == c).count()).min().unwrap_or(0);
    let mut out = vec![None; label.len()];
    if k < 2 || smallest < folds {
        return Ok(out);
    }
    let x = x.select(Axis(0), &rows);
    let groups = Groups::singletons(rows.len());
    let fold = stratified(&y, &groups, k, folds, seed)?;
    let p = ProbeParams { folds, repeats: 1, seed, ..Default::default() }.check()?;
    let (proba, _) = cross_val_proba(x.view(), &y, &groups, k, &fold, folds, p.classifier(), None)?;
    for (r, &i) in rows.iter().enumerate() {
        let row = proba.row(r);
        let pred = (0..k).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
        out[i] = Some((pred == y[r]) as u8 as f64);
    }
    Ok(out)
}
