//! The plan of a run: defaults that fit what the model and dataset have.

use mmprobe_store::{Dataset, Selector, Site, Tower};

use super::ExtractOptions;
use crate::describe::ModelInfo;
use crate::error::{ExtractError, Result};
use crate::plan::ExtractionPlan;

/// The input column a tower needs and the dataset lacks, if any.
fn missing_input(tower: Tower, dataset: &Dataset) -> Option<&'static str> {
    let (ok, column) = match tower {
        Tower::Vision => (dataset.images.is_some(), "image"),
        Tower::Text => (dataset.texts.is_some(), "text"),
        // Without a prompt column a default prompt is built from the text or the image.
        Tower::Decoder => (dataset.prompts.is_some() || dataset.texts.is_some() || dataset.images.is_some(), "prompt"),
    };
    (!ok).then_some(column)
}

/// The plan of a run. Defaults fit what the model and dataset have: a tower
/// left to default without its input, a default selector that fits none of
/// the towers run, and a default tower that no selector fits are left out,
/// each said in one note. What was asked for by name and cannot be met is an
/// error. The plan (and so the manifest) holds exactly what is extracted.
pub(super) fn plan_run(
    opts: &ExtractOptions,
    info: &ModelInfo,
    dataset: &Dataset,
) -> Result<(ExtractionPlan, Vec<String>)> {
    let mut notes = Vec::new();
    let towers: Vec<Tower> = match &opts.towers {
        Some(t) => t.clone(),
        None => {
            let all: Vec<Tower> = info.towers.iter().map(|t| t.tower).collect();
            let with: Vec<Tower> = all.iter().copied().filter(|t| missing_input(*t, dataset).is_none()).collect();
            if with.is_empty() {
                // No tower can run: the first one's error says why.
                check_inputs_of(&all, dataset)?;
            }
            for t in all.iter().filter(|t| !with.contains(t)) {
                notes.push(format!(
                    "the {t} tower is left out: {} has no '{}' column",
                    dataset.path.display(),
                    missing_input(*t, dataset).unwrap_or("")
                ));
            }
            with
        }
    };
    let fits = |sel: Selector, t: Tower| opts.sites.iter().any(|s| info.fits(sel, t, *s));
    let selectors = match opts.selectors.is_empty() {
        false => opts.selectors.clone(),
        true => {
            let defaults = info.default_selectors.clone();
            let (keep, skip): (Vec<Selector>, Vec<Selector>) =
                defaults.into_iter().partition(|&sel| towers.iter().any(|&t| fits(sel, t)));
            let run: Vec<&str> = towers.iter().map(|t| t.as_str()).collect();
            for sel in skip {
                notes.push(format!(
                    "the default selector '{sel}' is left out: it fits none of the towers and sites run ({})",
                    run.join(", ")
                ));
            }
            keep
        }
    };
    let mut plan = ExtractionPlan::new(info, Some(&towers), &opts.sites, &opts.layers, &selectors)?;
    let names: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
    for t in towers.iter().filter(|&&t| !selectors.iter().any(|&sel| fits(sel, t))) {
        let why = format!("no requested selector fits the {t} tower ({})", names.join(", "));
        match opts.towers {
            Some(_) => return Err(ExtractError::Input(format!("--towers {t}: {why}"))),
            None => {
                notes.push(format!("the {t} tower is left out: {why}"));
                plan.sites.remove(t);
            }
        }
    }
    if plan.sites.is_empty() {
        return Err(ExtractError::Input("no tower of the model has a requested selector".into()));
    }
    Ok((plan, notes))
}

/// Every requested tower needs its input column.
pub(super) fn check_inputs(plan: &ExtractionPlan, dataset: &Dataset) -> Result<()> {
    check_inputs_of(&plan.towers().collect::<Vec<_>>(), dataset)
}

fn check_inputs_of(towers: &[Tower], dataset: &Dataset) -> Result<()> {
    for &tower in towers {
        if let Some(column) = missing_input(tower, dataset) {
            return Err(ExtractError::Input(format!(
                "the {tower} tower needs a '{column}' column, which {} lacks (use --towers to pick others)",
                dataset.path.display()
            )));
        }
    }
    Ok(())
}

/// `--logit-lens K` reads decoder residual streams: it needs them in the plan.
pub(super) fn check_logit_lens(k: Option<usize>, plan: &ExtractionPlan) -> Result<()> {
    let Some(k) = k else { return Ok(()) };
    if k == 0 {
        return Err(ExtractError::Input("--logit-lens: K must be at least 1".into()));
    }
    let has_resid = plan.sites.get(&Tower::Decoder).is_some_and(|s| s.contains_key(&Site::Resid));
    if !has_resid {
        return Err(ExtractError::Input(
            "--logit-lens needs a decoder tower with the resid site (an MLLM such as LLaVA)".into(),
        ));
    }
    Ok(())
}
