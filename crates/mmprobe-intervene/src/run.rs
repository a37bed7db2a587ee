//! One intervention run: split the samples, measure the model on the
//! held-out ones, then for each layer fit the edit on the fit samples' store
//! rows and measure again with it in the forward pass.

use std::collections::HashSet;
use std::path::Path;

use mmprobe_analysis::rng::Rng;
use mmprobe_analysis::tables::InterventionRow;
use mmprobe_extract::RunOptions;
use mmprobe_store::dataset::Dataset;
use mmprobe_store::{Partition, Site, Store, Tower};

use crate::amnesic::out_of_fold_correct;
use crate::bootstrap::paired;
use crate::error::{InterveneError, Result};
use crate::fit::{Fitted, fit};
use crate::measure::{EvalSet, Measures, PROBE, Plan, measure};
use crate::params::{CheckedIntervene, Method};
use crate::subject::{Intervention, Keep, Model, Subject};

/// Steering strengths when none are given, as multiples of the distance
/// between the target's mean and the others' along the direction.
pub const DEFAULT_ALPHA_SCALES: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

pub struct Outcome {
    pub rows: Vec<InterventionRow>,
    /// Things a user should know: samples fitted and measured, ranks, what was not measured.
    pub notes: Vec<String>,
}

/// The dataset rows fitted on and the held-out rows measured (at most `max`), disjoint.
pub fn split(n: usize, share: f64, max: usize, seed: u64) -> (HashSet<u32>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0x05ee_df17).shuffle(&mut order);
    let cut = ((n as f64 * share).round() as usize).clamp(1, n.saturating_sub(1));
    let fit = order[..cut].iter().map(|&r| r as u32).collect();
    let mut eval: Vec<usize> = order[cut..].iter().copied().take(max).collect();
    eval.sort_unstable();
    (fit, eval)
}

/// The residual layer downstream of every edit whose rows the amnesic probe
/// reads: the tower's last layer, or for a LLaVA vision tower the last layer
/// the decoder reads.
fn downstream_layer(subject: &Subject, tower: Tower, n: usize) -> Result<usize> {
    match (&subject.model, tower) {
        (Model::Llava(l), Tower::Vision) => {
            let layers = l.loaded.model.config.feature_layers().map_err(InterveneError::Input)?;
            Ok(layers.into_iter().max().unwrap_or(n))
        }
        _ => Ok(n),
    }
}

/// Runs the intervention `params` on `model` (CPU or CUDA, in `run`'s dtype:
/// its device, dtype, threads and allow_tf32 are used), fitted on `store_dir`'s
/// rows of `data`'s fit samples. `progress` hears each step.
pub fn intervene(
    model: &Path,
    data: &Path,
    store_dir: &Path,
    params: &CheckedIntervene,
    run: &RunOptions,
    progress: &dyn Fn(&str),
) -> Result<Outcome> {
    let p = params.params();
    let mut notes = Vec::new();
    let device = run.apply().map_err(mmprobe_extract::ExtractError::from)?;
    let subject = Subject::open(model, device, run.dtype, run.allow_tf32)?;
    let dataset = Dataset::open(data)?;
    let store = Store::open(store_dir)?;
    if let Some(m) = &store.manifest {
        if let Some(d) = &m.dataset
            && d.sha256 != dataset.sha256
        {
            return Err(InterveneError::Input(format!(
                "{} was extracted from {} (another file or version than {}): its samples would not be these rows",
                store_dir.display(),
                d.path,
                data.display()
            )));
        }
        if let Some(mp) = &m.model
            && mp.config_sha256 != subject.config_sha256
        {
            notes.push(format!(
                "the store was extracted from {} ({}), not {}: its {} rows must come from the same weights",
                mp.path,
                mp.family,
                model.display(),
                p.at.tower
            ));
        }
    }

    let tower = p.at.tower;
    let info = subject
        .info
        .tower(tower)
        .ok_or_else(|| InterveneError::Input(format!("{} has no {tower} tower", model.display())))?;
    let n_layers = info.layers;
    if p.positions == crate::params::Positions::Cls && !info.cls {
        return Err(InterveneError::Input(format!("the {tower} tower has no CLS token: use --positions all")));
    }
    let mut layers = p.at.layers.resolve(Site::Resid, n_layers, tower)?;
    let down_layer = downstream_layer(&subject, tower, n_layers)?;
    let why_not = |l: usize| -> Option<String> {
        if tower == Tower::Decoder && l == n_layers {
            Some(format!(
                "decoder layer {l} is stored after the final norm while the model goes on from before it: \
                 choose a layer below {n_layers}"
            ))
        } else if l > down_layer {
            Some(format!(
                "{tower} layer {l} comes after layer {down_layer}, the last the decoder reads: an edit there changes nothing"
            ))
        } else {
            None
        }
    };
    if p.at.layers == mmprobe_extract::LayerSpec::All {
        let dropped: Vec<String> = layers.iter().filter(|&&l| why_not(l).is_some()).map(|l| l.to_string()).collect();
        if !dropped.is_empty() {
            notes.push(format!("layers {} left out of 'all': an edit there cannot act", dropped.join(", ")));
        }
        layers.retain(|&l| why_not(l).is_none());
    } else if let Some(why) = layers.iter().find_map(|&l| why_not(l)) {
        return Err(InterveneError::Input(why));
    }
    if layers.is_empty() {
        return Err(InterveneError::Input("--at names no layer".into()));
    }
    let selector = p.positions.fit_selector(tower);
    let stored: HashSet<Partition> = store.partitions()?.into_iter().collect();
    for &layer in &layers {
        let part = Partition { tower, site: Site::Resid, layer, selector };
        if !stored.contains(&part) {
            return Err(InterveneError::Input(format!(
                "{} has no partition {part}: extract --towers {tower} --sites resid --select {selector} first",
                store_dir.display()
            )));
        }
    }

    if dataset.len() < 10 {
        return Err(InterveneError::Input(format!(
            "{} has {} rows: too few to fit on some and measure the others",
            data.display(),
            dataset.len()
        )));
    }
    let (fit_rows, eval_rows) = split(dataset.len(), p.fit_share, p.max_samples, p.seed);
    let (eval, skipped) = EvalSet::new(&dataset, eval_rows)?;
    if !skipped.is_empty() {
        notes.push(format!("not measured (not 2..=32 classes): {}", skipped.join(", ")));
    }
    let ci = eval.concept(&p.concept).ok_or_else(|| {
        InterveneError::Input(format!(
            "'{}' is not a class column of {} with 2..=32 classes",
            p.concept,
            data.display()
        ))
    })?;
    let target = match &p.target {
        Some(t) => Some((
            ci,
            eval.concepts[ci].classes.iter().position(|c| c == t).ok_or_else(|| {
                InterveneError::Input(format!(
                    "--target '{t}' is not a class of '{}' (classes: {})",
                    p.concept,
                    eval.concepts[ci].classes.join(", ")
                ))
            })?,
        )),
        None => None,
    };
    notes.push(format!(
        "fitted on {} samples, measured on {} held-out samples (none in both)",
        fit_rows.len(),
        eval.rows.len()
    ));
    // The decoder reads a LLaVA vision tower's patches, not its CLS: the
    // downstream probe reads what the decoder gets.
    let down_selector = match (&subject.model, tower) {
        (Model::Llava(_), Tower::Vision) => mmprobe_store::Selector::Mean,
        _ => selector,
    };
    let plan = Plan {
        keep: (tower, Keep { layer: down_layer, selector: down_selector }),
        target,
        template: p.template.clone(),
        batch_size: p.batch_size,
    };

    progress("measuring the model as it is");
    let before = measure(&subject, &eval, None, &plan)?;
    progress("probing every concept downstream (amnesic read-out)");
    let probe_before = probe_all(&eval, &before, p.probe_folds, p.seed)?;

    let mut rows = Vec::new();
    for &layer in &layers {
        let part = Partition { tower, site: Site::Resid, layer, selector };
        progress(&format!("fitting {} ({}) at {part}", p.method, p.direction));
        let f = fit(&store, &p.concept, part, &fit_rows, p.method, p.direction, p.target.as_deref())?;
        let runs: Vec<(f64, mmprobe_extract::EditKind)> = match f.fitted {
            Fitted::Erase { kind, rank } => {
                notes.push(format!("layer {layer}: erased {rank} dimension(s), fitted on {} rows", f.rows));
                vec![(0.0, kind)]
            }
            Fitted::Steer { u, gap } => {
                let alphas = p.alphas.clone().unwrap_or_else(|| DEFAULT_ALPHA_SCALES.iter().map(|s| s * gap).collect());
                notes.push(format!(
                    "layer {layer}: target mean {gap:.4} from the others' along the direction; alphas {}",
                    alphas.iter().map(|a| format!("{a:.4}")).collect::<Vec<_>>().join(", ")
                ));
                alphas
                    .into_iter()
                    .map(|alpha| (alpha, mmprobe_extract::EditKind::Steer { u: u.shallow_clone(), alpha }))
                    .collect()
            }
        };
        for (alpha, kind) in runs {
            progress(&format!(
                "measuring with the edit at layer {layer}{}",
                if p.method == Method::Steer { format!(", alpha {alpha:.4}") } else { String::new() }
            ));
            let iv = Intervention { tower, layer, positions: p.positions, kind };
            let after = measure(&subject, &eval, Some(&iv), &plan)?;
            progress("probing every concept downstream (amnesic read-out)");
            let probe_after = probe_all(&eval, &after, p.probe_folds, p.seed)?;
            let row = |metric: &str, measured: &str, b: &[Option<f64>], a: &[Option<f64>]| {
                let seed = p.seed ^ (rows_seed(metric, measured));
                paired(b, a, p.bootstrap, seed).map(|s| InterventionRow {
                    concept: p.concept.clone(),
                    partition: part,
                    positions: p.positions.to_string(),
                    method: p.method.to_string(),
                    direction: p.direction.to_string(),
                    target: p.target.clone().unwrap_or_default(),
                    alpha,
                    metric: metric.to_string(),
                    measured_concept: measured.to_string(),
                    n: s.n,
                    before: s.before,
                    after: s.after,
                    ci_low: s.ci_low,
                    ci_high: s.ci_high,
                })
            };
            for ((metric, measured), b) in &before.values {
                let Some(a) = after.values.get(&(metric.clone(), measured.clone())) else { continue };
                rows.extend(row(metric, measured, b, a));
            }
            for (c, (b, a)) in eval.concepts.iter().zip(probe_before.iter().zip(&probe_after)) {
                rows.extend(row(PROBE, &c.name, b, a));
            }
        }
    }
    Ok(Outcome { rows, notes })
}

fn probe_all(eval: &EvalSet, m: &Measures, folds: usize, seed: u64) -> Result<Vec<Vec<Option<f64>>>> {
    eval.concepts.iter().map(|c| out_of_fold_correct(&m.downstream, &c.label, folds, seed)).collect()
}

/// A seed per (metric, concept), so each interval has its own resamples.
fn rows_seed(metric: &str, measured: &str) -> u64 {
    metric
        .bytes()
        .chain(measured.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sample_is_both_fitted_on_and_measured() {
        for (n, share, max) in [(300, 0.5, 1000), (10, 0.9, 1000), (1001, 0.3, 50), (2, 0.5, 10)] {
            let (fit, eval) = split(n, share, max, 7);
            assert!(eval.iter().all(|&r| !fit.contains(&(r as u32))), "{n} {share}");
            assert!(!fit.is_empty() && !eval.is_empty() && eval.len() <= max);
            assert!(fit.iter().all(|&r| (r as usize) < n) && eval.iter().all(|&r| r < n));
            if max >= n {
                assert_eq!(fit.len() + eval.len(), n);
            }
        }
        assert_eq!(split(300, 0.5, 1000, 7), split(300, 0.5, 1000, 7), "seeded");
    }
}
