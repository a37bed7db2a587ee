//! The `mmprobe` command line: parses, calls the library crates, prints.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mmprobe",
    version,
    about = "Probe how multimodal models represent concepts, layer by layer, per modality."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole job on the bundled model and dataset: extract, probe, directions, geometry, report.
    Demo(cmd::demo::DemoCmd),
    /// Report the libtorch in use: version, library folder, CUDA devices, threads.
    Doctor,
    /// Describe a checkpoint folder: family, towers, layers, widths, sites.
    Inspect {
        /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json...).
        #[arg(long)]
        model: std::path::PathBuf,
        /// Also say what images of these sizes become (WIDTHxHEIGHT, e.g. 640x480,1920x1080):
        /// their grid and image-token count, for families whose grid follows the image (Qwen2-VL).
        #[arg(long, value_delimiter = ',', value_parser = cmd::inspect::parse_size)]
        image_size: Vec<(usize, usize)>,
    },
    /// Run a model over a dataset and store every requested layer's hidden states as Parquet.
    Extract(Box<cmd::extract::ExtractArgs>),
    /// Fit cross-validated probes for concepts on every matching partition (probes.parquet).
    Probe(Box<cmd::analysis::ProbeCmd>),
    /// Concept directions per class: difference of means, LDA, probe normal (directions.parquet).
    Directions(Box<cmd::analysis::DirectionsCmd>),
    /// Modality gap, cone effect, retrieval, layer-by-layer CKA, Fisher ratio, silhouette.
    Geometry(Box<cmd::analysis::GeometryCmd>),
    /// Erase a concept with LEACE and check a fresh probe falls to chance.
    Erase(Box<cmd::analysis::EraseCmd>),
    /// Erase or steer a concept inside the model and measure what it then does (interventions.parquet).
    Intervene(Box<cmd::intervene::InterveneCmd>),
    /// Draw every figure of a store's results and write one HTML report.
    Report(cmd::report::ReportCmd),
    /// Concept datasets with known ground truth.
    Datasets {
        #[command(subcommand)]
        cmd: cmd::datasets::DatasetsCmd,
    },
    /// Toy models with known concepts: list, train from a recipe, evaluate on held-out images.
    Zoo {
        #[command(subcommand)]
        cmd: cmd::zoo::ZooCmd,
    },
}

/// Keeps freed memory in the heap instead of returning it to the kernel, for
/// the commands that run a model. libtorch allocates and frees every layer's
/// activations (megabytes each) per batch; with glibc's defaults each becomes
/// an mmap/munmap pair and fresh pages to fault in, which cost about a sixth of
/// a CPU extraction's time. Analysis commands keep glibc's defaults: they hold
/// a few long-lived results between large per-partition buffers, and a heap
/// that is never trimmed fragments and grows with every partition read.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo(_) | Command::Extract(_) | Command::Intervene(_) | Command::Zoo { .. }) {
        tune_allocator();
    }
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Doctor => cmd::doctor::run(),
        Command::Inspect { model, image_size } => cmd::inspect::run(&model, &image_size),
        Command::Extract(args) => cmd::extract::run(*args),
        Command::Probe(a) => cmd::analysis::probe(*a),
        Command::Directions(a) => cmd::analysis::directions(*a),
        Command::Geometry(a) => cmd::analysis::geometry(*a),
        Command::Erase(a) => cmd::analysis::erase(*a),
        Command::Intervene(a) => cmd::intervene::run(*a),
        Command::Report(a) => cmd::report::run(a),
        Command::Datasets { cmd } => cmd::datasets::run(cmd),
        Command::Zoo { cmd } => cmd::zoo::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, no backtrace unless asked for.
            // Errors that print their cause themselves (`path: os error`) are not followed by it again.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.ends_with(&cause) {
                    line += &if line.is_empty() { cause } else { format!(": {cause}") };
                }
            }
            eprintln!("mmprobe: error: {line}");
            if std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0") {
                eprintln!("{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}
