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
    /// Report the libtorch in use: version, library folder, CUDA devices, threads.
    Doctor,
    /// Describe a checkpoint folder: family, towers, layers, widths, sites.
    Inspect {
        /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json...).
        #[arg(long)]
        model: std::path::PathBuf,
    },
    /// Run a model over a dataset and store every requested layer's hidden states as Parquet.
    Extract(Box<cmd::extract::ExtractArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => cmd::doctor::run(),
        Command::Inspect { model } => cmd::inspect::run(&model),
        Command::Extract(args) => cmd::extract::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, no backtrace unless asked for.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("mmprobe: error: {}", chain.join(": "));
            if std::env::var_os("RUST_BACKTRACE").is_some() {
                eprintln!("{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}
