//! `erase` over a store: LEACE per partition, and a probe before and after
//! (the eraser of the "after" probe fit on training folds only; folds over groups).

use mmprobe_store::Store;
use ndarray::Axis;

use super::{GroupBy, check_concepts, classes_of, in_partition, load, per_partition};
use crate::error::{AnalysisError, Result};
use crate::leace::Leace;
use crate::probe::{self, CheckedProbe};
use crate::select::Filters;
use crate::tables::EraseRow;

pub fn erase_store(
    store: &Store,
    concept: &str,
    filters: &Filters,
    params: &CheckedProbe,
    group_by: &GroupBy,
    progress: &(dyn Fn() + Sync),
) -> Result<(Vec<EraseRow>, Vec<String>)> {
    check_concepts(store, &[concept.to_string()])?;
    group_by.check(store)?;
    let partitions = filters.matching(store)?;
    let quick = params.quick();
    let rows: Vec<std::result::Result<EraseRow, String>> = per_partition(&partitions, |p| {
        let run = || -> Result<_> {
            let l = load(store, p, &[concept])?;
            let c = l.concept(concept)?;
            c.check_folds(params.folds)?;
            let (y, names) = classes_of(&c)?;
            let x = l.x.select(Axis(0), &c.rows);
            let groups = group_by.groups(store, &l)?.subset(&c.rows);
            let k = names.len();
            let eraser = Leace::fit(x.view(), y, k)?;
            let before = probe::probe_classes(x.view(), y, k, &groups, None, &quick)?;
            let after = probe::erased_accuracy(x.view(), y, k, &groups, &quick)?;
            let mut counts = vec![0usize; k];
            for &v in y {
                counts[v] += 1;
            }
            progress();
            Ok(EraseRow {
                concept: concept.to_string(),
                partition: p,
                n: y.len(),
                rank: eraser.rank(),
                accuracy_before: before.accuracy,
                accuracy_after: after,
                chance: *counts.iter().max().unwrap_or(&0) as f64 / y.len() as f64,
                group_by: group_by.name().to_string(),
            })
        };
        match run() {
            Ok(row) => Ok(Ok(row)),
            // One class here, or too few rows for the folds: skipped, and said.
            Err(AnalysisError::Concept { message, .. } | AnalysisError::TooSmall(message)) => {
                Ok(Err(format!("{concept} on {p}: {message}")))
            }
            Err(e) => Err(in_partition(p)(e)),
        }
    })?;
    let (ok, skipped): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.is_ok());
    Ok((ok.into_iter().flatten().collect(), skipped.into_iter().filter_map(|r| r.err()).collect()))
}
