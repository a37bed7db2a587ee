use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use mmprobe_zoo::ShapesClipParams;

use super::progress::bar;

/// Where the bundled toy models live, relative to the repository root.
pub const SHAPES_CLIP_DIR: &str = "datasets/models/shapes-clip";

#[derive(Subcommand, Debug)]
pub enum ZooCmd {
    /// The toy models mmprobe can train, and where each is kept.
    List,
    /// Train a toy model from its recipe (deterministic for a seed and thread count).
    Train(TrainArgs),
    /// Zero-shot accuracy per concept on a freshly generated held-out split.
    Eval(EvalArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ZooModel {
    /// A small CLIP trained contrastively on the shapes dataset's captions.
    ShapesClip,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    model: ZooModel,
    /// The folder to write (a Hugging Face CLIP checkpoint).
    #[arg(long, default_value = SHAPES_CLIP_DIR)]
    out: PathBuf,
    #[arg(long, default_value_t = ShapesClipParams::default().seed)]
    seed: u64,
    #[arg(long, default_value_t = ShapesClipParams::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = ShapesClipParams::default().batch_size)]
    batch_size: usize,
    /// CPU threads. Float sums depend on it: the same seed and threads give the same weights.
    #[arg(long, default_value_t = ShapesClipParams::default().threads)]
    threads: i32,
    /// Width of both towers and of the joint embedding.
    #[arg(long, default_value_t = ShapesClipParams::default().width)]
    width: i64,
    /// Layers per tower.
    #[arg(long, default_value_t = ShapesClipParams::default().layers)]
    layers: usize,
    /// Vision patch size in pixels (the images are 64 x 64).
    #[arg(long, default_value_t = ShapesClipParams::default().patch_size)]
    patch_size: i64,
    #[arg(long, default_value_t = ShapesClipParams::default().learning_rate)]
    learning_rate: f64,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    model: ZooModel,
    /// The checkpoint folder to evaluate.
    #[arg(long, default_value = SHAPES_CLIP_DIR)]
    dir: PathBuf,
    /// Held-out images to generate.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed of the held-out split (the training stream uses seeds from 1000, the bundled split 0).
    #[arg(long, default_value_t = mmprobe_zoo::zero_shot::EVAL_SEED)]
    seed: u64,
}

pub fn run(cmd: ZooCmd) -> anyhow::Result<()> {
    match cmd {
        ZooCmd::List => {
            println!("shapes-clip  CLIP trained on `datasets generate shapes` captions  ({SHAPES_CLIP_DIR})");
            Ok(())
        }
        ZooCmd::Train(a) => train(a),
        ZooCmd::Eval(a) => eval(a),
    }
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    let ZooModel::ShapesClip = a.model;
    let params = ShapesClipParams {
        seed: a.seed,
        steps: a.steps,
        batch_size: a.batch_size,
        threads: a.threads,
        width: a.width,
        layers: a.layers,
        patch_size: a.patch_size,
        learning_rate: a.learning_rate,
        ..Default::default()
    }
    .check()?;
    let bar = bar(a.steps, "steps");
    let result = mmprobe_zoo::train_shapes_clip(&a.out, &params, &mut |r| {
        bar.set_position(r.step as u64);
        bar.set_message(format!("loss {:.3}  batch acc {:.2}", r.loss, r.batch_accuracy));
    });
    bar.finish_and_clear();
    let s = result.with_context(|| format!("training shapes-clip into {}", a.out.display()))?;
    println!(
        "trained shapes-clip ({} parameters) for {} steps in {:.0} s; final loss {:.3}",
        s.parameters, s.params.steps, s.seconds, s.final_loss
    );
    println!("wrote {}", a.out.display());
    Ok(())
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let ZooModel::ShapesClip = a.model;
    let r = mmprobe_zoo::zero_shot_shapes(&a.dir, a.n, a.seed)?;
    println!("zero-shot accuracy of {} on {} held-out images (seed {})", a.dir.display(), r.n, r.seed);
    println!("{:<10} {:>8} {:>9} {:>7}", "concept", "classes", "accuracy", "chance");
    for c in &r.concepts {
        println!("{:<10} {:>8} {:>9.3} {:>7.3}", c.concept, c.classes, c.accuracy, 1.0 / c.classes as f64);
    }
    Ok(())
}
