//! What the toy models' recipes share: the learning-rate schedule,
//! transformers-style initial scales, freezing a module, and the progress
//! and summary types.

use tch::Tensor;
use tch::nn::VarStore;

/// One training step's report, for progress display.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    /// The recipe's own accuracy on the batch (in-batch retrieval, next-token answers).
    pub batch_accuracy: f64,
}

/// What a finished training run reports (also written to `training.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary<P> {
    pub params: P,
    pub parameters: i64,
    pub seconds: f64,
    pub final_loss: f64,
    /// Mean loss over each tenth of training.
    pub loss_by_tenth: Vec<f64>,
}

impl<P> TrainSummary<P> {
    pub fn new(params: P, parameters: i64, seconds: f64, losses: &[f64]) -> Self {
        let tenth = losses.len().div_ceil(10).max(1);
        TrainSummary {
            params,
            parameters,
            seconds,
            final_loss: losses.last().copied().unwrap_or(f64::NAN),
            loss_by_tenth: losses.chunks(tenth).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect(),
        }
    }
}

/// Linear warm-up, then a cosine decay to zero.
pub fn cosine_lr(base: f64, warmup: usize, steps: usize, step: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Variables in name order: random draws must come in the same order every
/// run (a HashMap's order varies).
fn sorted(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Redraws the chosen variables from N(0, std²): transformers' initial scale
/// for embeddings (0.02); tch's default (std 1) makes a tower without a
/// pre-norm slow to start.
pub fn redraw_normal(vs: &VarStore, std: f64, chosen: impl Fn(&str) -> bool) {
    tch::no_grad(|| {
        for (name, mut t) in sorted(vs) {
            if chosen(&name) {
                t.copy_(&(t.randn_like() * std));
            }
        }
    });
}

/// Takes every variable under `prefix` out of training: no gradient, and out
/// of the list optimisers and gradient clipping walk.
pub fn freeze_prefix(vs: &VarStore, prefix: &str) {
    let frozen: Vec<Tensor> = sorted(vs).into_iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, t)| t).collect();
    let ptrs: Vec<usize> = frozen.iter().map(|t| t.data_ptr() as usize).collect();
    let mut vars = vs.variables_.lock().expect("the var store's lock is never poisoned");
    vars.trainable_variables.retain(|v| !ptrs.contains(&(v.tensor.data_ptr() as usize)));
    for t in frozen {
        let _ = t.set_requires_grad(false);
    }
}

/// Parameters left to train.
pub fn trainable_parameters(vs: &VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}
