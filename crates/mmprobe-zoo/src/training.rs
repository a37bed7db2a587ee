//! What the toy models' recipes share: the learning-rate schedule,
//! transformers-style initial scales, freezing a module, and the progress
//! and summary types.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use mmprobe_extract::layers::{CpuLinear, with_cpu_linear};
use tch::Tensor;
use tch::nn::{self, OptimizerConfig, VarStore};

use crate::ZooError;
use crate::hf_folder::{write_json, write_safetensors};

/// The optimisation side of a recipe: AdamW with a linear warm-up and a
/// cosine decay, on a generated stream drawn from `seed`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Schedule {
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// libtorch CPU threads: float sums depend on it, so it is part of the recipe.
    /// Only 1 is bit-for-bit repeatable: MKL's threaded sums can differ run to run.
    pub threads: i32,
}

impl Schedule {
    /// Refuses what cannot train; `min_batch` is the recipe's smallest useful batch.
    pub fn check(&self, min_batch: usize) -> Result<(), ZooError> {
        let bad = |m: String| Err(ZooError::Params(m));
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if self.batch_size < min_batch {
            return bad(format!("batch size {} is below this recipe's {min_batch}", self.batch_size));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!("learning rate {} must be positive", self.learning_rate));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return bad(format!("weight decay {} must be in [0, 1)", self.weight_decay));
        }
        if self.threads < 1 {
            return bad("threads must be at least 1".into());
        }
        Ok(())
    }

    /// The learning rate at `step` (0-based).
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        cosine_lr(self.learning_rate, self.warmup_steps, self.steps, step)
    }

    /// Sets libtorch's threads and seed: call before any weight is drawn.
    pub fn start(&self) -> Instant {
        tch::set_num_threads(self.threads);
        tch::manual_seed(self.seed as i64);
        Instant::now()
    }

    /// Runs every step: `batch_loss(step)` returns the loss and the batch
    /// accuracy, AdamW updates `vs`'s trainable variables (gradients clipped
    /// at norm 1), then `after_update` runs. Returns each step's loss.
    ///
    /// Every linear layer, a frozen tower's under `no_grad` too, runs on
    /// libtorch's own `linear`, as when the committed zoo models were trained,
    /// so that a recipe reproduces them (extraction's CPU default moves large
    /// frozen batches to oneDNN).
    pub fn optimise(
        &self,
        vs: &VarStore,
        on_step: &mut dyn FnMut(StepReport),
        mut batch_loss: impl FnMut(usize) -> Result<(Tensor, Tensor), ZooError>,
        mut after_update: impl FnMut(),
    ) -> Result<Vec<f64>, ZooError> {
        with_cpu_linear(CpuLinear::Blas, || {
            let mut opt = nn::AdamW { wd: self.weight_decay, ..Default::default() }.build(vs, self.learning_rate)?;
            let mut losses = Vec::with_capacity(self.steps);
            for step in 0..self.steps {
                opt.set_lr(self.learning_rate_at(step));
                let (loss, accuracy) = batch_loss(step)?;
                opt.backward_step_clip_norm(&loss, 1.0);
                after_update();
                let loss = loss.double_value(&[]);
                if !loss.is_finite() {
                    return Err(ZooError::Model(format!("training diverged at step {step} (loss {loss})")));
                }
                losses.push(loss);
                let batch_accuracy = accuracy.double_value(&[]);
                on_step(StepReport { step: step + 1, steps: self.steps, loss, batch_accuracy });
            }
            Ok(losses)
        })
    }
}

/// Writes the trained weights and `training.json`, and returns the summary.
pub fn save_run<P: serde::Serialize + Clone>(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    params: &P,
    parameters: i64,
    start: Instant,
    losses: &[f64],
) -> Result<TrainSummary<P>, ZooError> {
    write_safetensors(&dir.join("model.safetensors"), weights)?;
    let summary = TrainSummary::new(params.clone(), parameters, start.elapsed().as_secs_f64(), losses);
    let record = serde_json::to_value(&summary).map_err(|e| ZooError::Model(e.to_string()))?;
    write_json(&dir.join("training.json"), &record)?;
    Ok(summary)
}

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
