use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum DatasetsCmd {
    /// Generate a synthetic concept dataset with known ground truth.
    Generate {
        #[command(subcommand)]
        kind: GenerateKind,
    },
}

#[derive(Subcommand, Debug)]
pub enum GenerateKind {
    /// One coloured shape per image: colour (8), shape (6), size (3), position (3x3),
    /// and a background texture no caption mentions. Writes data.csv and images/.
    Shapes(ShapesArgs),
}

#[derive(Args, Debug)]
pub struct ShapesArgs {
    /// The dataset folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
}

pub fn run(cmd: DatasetsCmd) -> anyhow::Result<()> {
    let DatasetsCmd::Generate { kind: GenerateKind::Shapes(a) } = cmd;
    let manifest =
        mmprobe_zoo::generate_shapes(&a.out, &mmprobe_zoo::ShapesParams { n: a.n, seed: a.seed, size: a.size })?;
    println!("{} images -> {}", a.n, manifest.display());
    Ok(())
}
