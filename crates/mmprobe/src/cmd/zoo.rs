use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use mmprobe_zoo::training::Schedule;
use mmprobe_zoo::{ShapesClipParams, ShapesLlavaParams, StepReport, TrainSummary};

use super::progress::bar;

/// Where the bundled toy models live, relative to the repository root.
pub const SHAPES_CLIP_DIR: &str = "datasets/models/shapes-clip";
pub const SHAPES_LLAVA_DIR: &str = "datasets/models/shapes-llava";

#[derive(Subcommand, Debug)]
pub enum ZooCmd {
    /// The toy models mmprobe can train, and where each is kept.
    List,
    /// Train a toy model from its recipe (deterministic for a seed and thread count).
    Train(TrainArgs),
    /// Accuracy per concept on a freshly generated held-out split (CLIP: zero-shot; LLaVA: VQA answers).
    Eval(EvalArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ZooModel {
    /// A small CLIP trained contrastively on the shapes dataset's captions.
    ShapesClip,
    /// A small LLaVA: shapes-clip's vision tower (frozen), a projector and a
    /// Llama decoder trained to answer the shapes dataset's questions.
    ShapesLlava,
}

impl ZooModel {
    fn dir(self) -> &'static str {
        match self {
            ZooModel::ShapesClip => SHAPES_CLIP_DIR,
            ZooModel::ShapesLlava => SHAPES_LLAVA_DIR,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ZooModel::ShapesClip => "shapes-clip",
            ZooModel::ShapesLlava => "shapes-llava",
        }
    }
}

/// Unset options take the model's recipe defaults (see `zoo list`).
#[derive(Args, Debug)]
pub struct TrainArgs {
    model: ZooModel,
    /// The folder to write [default: the model's folder under datasets/models/].
    #[arg(long)]
    out: Option<PathBuf>,
    /// shapes-llava: the shapes-clip checkpoint whose vision tower it builds on.
    #[arg(long, default_value = SHAPES_CLIP_DIR)]
    clip: PathBuf,
    /// Seed of the initial weights and of the generated training stream [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Optimiser steps [default: the recipe's, see `zoo list`].
    #[arg(long)]
    steps: Option<usize>,
    /// Images per step (shapes-clip: captions too; shapes-llava: one question each).
    #[arg(long)]
    batch_size: Option<usize>,
    /// CPU threads. With 1, the same seed gives the same weights bit for bit; with more, threaded float sums may differ in the last bits from run to run.
    #[arg(long)]
    threads: Option<i32>,
    /// Width of the trained towers (shapes-clip: both towers and the joint embedding; shapes-llava: the decoder).
    #[arg(long)]
    width: Option<i64>,
    /// Layers per trained tower.
    #[arg(long)]
    layers: Option<usize>,
    /// shapes-clip: vision patch size in pixels (the images are 64 x 64).
    #[arg(long)]
    patch_size: Option<i64>,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    #[arg(long)]
    learning_rate: Option<f64>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    model: ZooModel,
    /// The checkpoint folder to evaluate [default: the model's folder under datasets/models/].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Held-out images to generate.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed of the held-out split (training streams use seeds from 1000, the bundled split 0).
    #[arg(long, default_value_t = mmprobe_zoo::zero_shot::EVAL_SEED)]
    seed: u64,
}

pub fn run(cmd: ZooCmd) -> anyhow::Result<()> {
    match cmd {
        ZooCmd::List => {
            let (c, l) = (ShapesClipParams::default(), ShapesLlavaParams::default());
            println!(
                "shapes-clip   CLIP trained on `datasets generate shapes` captions  ({SHAPES_CLIP_DIR})\n              \
                 {} steps of {}, width {}, {} layers, patch {}",
                c.schedule.steps, c.schedule.batch_size, c.width, c.layers, c.patch_size
            );
            println!(
                "shapes-llava  LLaVA on shapes-clip's vision tower, answering the dataset's questions  \
                 ({SHAPES_LLAVA_DIR})\n              {} steps of {}, decoder width {}, {} layers",
                l.schedule.steps, l.schedule.batch_size, l.width, l.layers
            );
            Ok(())
        }
        ZooCmd::Train(a) => train(a),
        ZooCmd::Eval(a) => eval(a),
    }
}

/// Runs a recipe behind a progress bar.
fn with_progress<T>(steps: usize, run: impl FnOnce(&mut dyn FnMut(StepReport)) -> T) -> T {
    let bar = bar(steps, "steps");
    let out = run(&mut |r| {
        bar.set_position(r.step as u64);
        bar.set_message(format!("loss {:.3}  batch acc {:.2}", r.loss, r.batch_accuracy));
    });
    bar.finish_and_clear();
    out
}

impl TrainArgs {
    /// The recipe's schedule with the options given on the command line.
    fn schedule(&self, d: Schedule) -> Schedule {
        Schedule {
            seed: self.seed.unwrap_or(d.seed),
            steps: self.steps.unwrap_or(d.steps),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            threads: self.threads.unwrap_or(d.threads),
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            ..d
        }
    }
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(a.model.dir()));
    let context = || format!("training {} into {}", a.model.name(), out.display());
    match a.model {
        ZooModel::ShapesClip => {
            let d = ShapesClipParams::default();
            let params = ShapesClipParams {
                schedule: a.schedule(d.schedule.clone()),
                width: a.width.unwrap_or(d.width),
                layers: a.layers.unwrap_or(d.layers),
                patch_size: a.patch_size.unwrap_or(d.patch_size),
                ..d
            };
            let (steps, params) = (params.schedule.steps, params.check()?);
            let s = with_progress(steps, |f| mmprobe_zoo::train_shapes_clip(&out, &params, f)).with_context(context)?;
            report(a.model, &out, steps, &s);
        }
        ZooModel::ShapesLlava => {
            anyhow::ensure!(
                a.patch_size.is_none(),
                "--patch-size is shapes-clip's; shapes-llava keeps its vision tower"
            );
            let d = ShapesLlavaParams::default();
            let params = ShapesLlavaParams {
                schedule: a.schedule(d.schedule.clone()),
                width: a.width.unwrap_or(d.width),
                layers: a.layers.unwrap_or(d.layers),
                ..d
            };
            let (steps, params) = (params.schedule.steps, params.check()?);
            let s = with_progress(steps, |f| mmprobe_zoo::train_shapes_llava(&out, &a.clip, &params, f))
                .with_context(context)?;
            report(a.model, &out, steps, &s);
        }
    }
    Ok(())
}

fn report<P>(model: ZooModel, out: &Path, steps: usize, s: &TrainSummary<P>) {
    println!(
        "trained {} ({} parameters) for {steps} steps in {:.0} s; final loss {:.3}",
        model.name(),
        s.parameters,
        s.seconds,
        s.final_loss
    );
    println!("wrote {}", out.display());
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(a.model.dir()));
    match a.model {
        ZooModel::ShapesClip => {
            let r = mmprobe_zoo::zero_shot_shapes(&dir, a.n, a.seed)?;
            println!("zero-shot accuracy of {} on {} held-out images (seed {})", dir.display(), r.n, r.seed);
            println!("{:<10} {:>8} {:>9} {:>7}", "concept", "classes", "accuracy", "chance");
            for c in &r.concepts {
                println!("{:<10} {:>8} {:>9.3} {:>7.3}", c.concept, c.classes, c.accuracy, 1.0 / c.classes as f64);
            }
        }
        ZooModel::ShapesLlava => {
            let r = mmprobe_zoo::vqa_shapes(&dir, a.n, a.seed)?;
            println!(
                "VQA accuracy (greedy answers, exact words) of {} on {} held-out images (seed {})",
                dir.display(),
                r.n,
                r.seed
            );
            println!("{:<10} {:>9}", "question", "accuracy");
            for t in &r.tasks {
                println!("{:<10} {:>9.3}", t.task, t.accuracy);
            }
        }
    }
    Ok(())
}
