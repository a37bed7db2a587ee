//! `mmprobe intervene`: erase or steer a concept at residual layers of a
//! model and measure what it then does (interventions.parquet).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use mmprobe_analysis::tables::{self, InterventionRow};
use mmprobe_extract::{DType, DeviceChoice, RunOptions};
use mmprobe_intervene::{At, CheckedIntervene, DirectionMethod, InterveneParams, Method, Outcome, Positions};

#[derive(Args, Debug)]
pub struct InterveneCmd {
    /// The checkpoint to intervene in (CLIP, SigLIP or LLaVA).
    #[arg(long)]
    model: PathBuf,
    /// The dataset manifest the store was extracted from (labels, captions, question_*/answer_* columns).
    #[arg(long)]
    data: PathBuf,
    /// A store holding the tower's resid rows at the layers, pooled as --positions says.
    #[arg(long)]
    store: PathBuf,
    /// The concept (a class column) to erase or steer along.
    #[arg(long)]
    concept: String,
    /// Where: TOWER/resid/LAYERS, e.g. vision/resid/-1 or decoder/resid/1,2 (each layer its own run).
    #[arg(long)]
    at: At,
    /// Positions edited: all, cls (vision), image, text or last (decoder). The edit is fitted on
    /// the store rows that pool the same positions (mean, cls, mean_image, mean_text, last).
    #[arg(long, default_value = "all")]
    positions: Positions,
    /// erase (remove the concept) or steer (add alpha x the unit direction toward --target).
    #[arg(long)]
    method: Method,
    /// How the edit is fitted: leace (erase only), diff-means, lda or probe (the class directions
    /// whose span erase removes, or the target's direction steer adds) [default: leace for erase,
    /// diff-means for steer].
    #[arg(long)]
    direction: Option<DirectionMethod>,
    /// Steering strengths in residual units [default: 0.5, 1, 2 and 4 times the distance from the
    /// others' mean to the target's along the direction].
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    alpha: Option<Vec<f64>>,
    /// The class to steer toward.
    #[arg(long)]
    target: Option<String>,
    /// Zero-shot captions "…{}…" filled with each class, instead of swapping the class in each sample's own caption.
    #[arg(long)]
    template: Option<String>,
    /// Share of the samples the edit is fitted on; the rest are measured.
    #[arg(long, default_value_t = 0.5)]
    fit_share: f64,
    /// Most held-out samples measured.
    #[arg(long, default_value_t = 1000)]
    max_samples: usize,
    /// Bootstrap resamples behind each interval.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the fit/held-out split, the downstream probe's folds and the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Compute dtype: f32, f16, bf16 (edits are fitted in f64 and applied in this dtype).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// f32 on CUDA: let cuDNN run the patch embedding's convolution in TF32, as extract's flag.
    #[arg(long)]
    allow_tf32: bool,
    /// The results folder: interventions.parquet and .csv gain this run's rows (a rerun of the same
    /// intervention replaces its rows).
    #[arg(long, visible_alias = "results")]
    out: PathBuf,
}

impl InterveneCmd {
    fn params(&self) -> anyhow::Result<CheckedIntervene> {
        let direction = self.direction.unwrap_or(match self.method {
            Method::Erase => DirectionMethod::Leace,
            Method::Steer => DirectionMethod::DiffMeans,
        });
        Ok(InterveneParams {
            concept: self.concept.clone(),
            at: self.at.clone(),
            positions: self.positions,
            method: self.method,
            direction,
            alphas: self.alpha.clone(),
            target: self.target.clone(),
            fit_share: self.fit_share,
            max_samples: self.max_samples,
            bootstrap: self.bootstrap,
            seed: self.seed,
            batch_size: self.batch_size,
            template: self.template.clone(),
            ..Default::default()
        }
        .check()?)
    }
}

/// One intervention, as rows are keyed: a rerun replaces it.
fn same_run(a: &InterventionRow, b: &InterventionRow) -> bool {
    (&a.concept, a.partition, &a.positions, &a.method, &a.direction, &a.target)
        == (&b.concept, b.partition, &b.positions, &b.method, &b.direction, &b.target)
}

/// interventions.parquet with `new` in place of earlier rows of the same interventions.
pub fn merge_into(dir: &Path, new: &[InterventionRow]) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the results folder {}", dir.display()))?;
    let mut rows =
        if dir.join("interventions.parquet").exists() { tables::interventions::read(dir)? } else { Vec::new() };
    rows.retain(|r| !new.iter().any(|n| same_run(r, n)));
    rows.extend(new.iter().cloned());
    tables::interventions::write(dir, &rows)?;
    Ok(rows.len())
}

/// Every row of a run, a line each.
pub fn print_rows(rows: &[InterventionRow]) {
    println!(
        "{:<7} {:>6} {:>8}  {:<20} {:<11} {:>4}  {:>8} {:>8} {:>8}  95% interval",
        "where", "layer", "alpha", "metric", "concept", "n", "before", "after", "change"
    );
    for r in rows {
        println!(
            "{:<7} {:>6} {:>8.3}  {:<20} {:<11} {:>4}  {:>8.3} {:>8.3} {:>+8.3}  [{:+.3}, {:+.3}]",
            r.partition.tower.as_str(),
            r.partition.layer,
            r.alpha,
            r.metric,
            r.measured_concept,
            r.n,
            r.before,
            r.after,
            r.effect(),
            r.ci_low,
            r.ci_high
        );
    }
}

pub fn run_outcome(a: &InterveneCmd) -> anyhow::Result<Outcome> {
    let params = a.params()?;
    if a.out.exists() && !a.out.is_dir() {
        anyhow::bail!("--out {} is a file, not a folder", a.out.display());
    }
    let t0 = std::time::Instant::now();
    let say = |s: &str| eprintln!("== {s} ({:.1} s)", t0.elapsed().as_secs_f64());
    let run = RunOptions { device: a.device, dtype: a.dtype, allow_tf32: a.allow_tf32, ..Default::default() };
    let outcome = mmprobe_intervene::intervene(&a.model, &a.data, &a.store, &params, &run, &say)?;
    say("measured");
    for n in &outcome.notes {
        eprintln!("note: {n}");
    }
    Ok(outcome)
}

pub fn run(a: InterveneCmd) -> anyhow::Result<()> {
    let outcome = run_outcome(&a)?;
    let total = merge_into(&a.out, &outcome.rows)?;
    print_rows(&outcome.rows);
    println!("{} rows -> {} ({total} in all)", outcome.rows.len(), a.out.join("interventions.parquet").display());
    Ok(())
}
