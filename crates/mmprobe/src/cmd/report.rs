use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct ReportCmd {
    /// The activation store.
    #[arg(long)]
    store: PathBuf,
    /// The results folder of probe/directions/geometry.
    #[arg(long)]
    results: PathBuf,
    /// Where report.html and figures/ go.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ReportCmd) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let s = mmprobe_plot::write_report(&a.store, &a.results, &a.out)?;
    println!("{} figures (PNG + SVG) in {:.1} s", s.figures.len() / 2, s.seconds);
    println!("report {}", s.html.display());
    Ok(())
}
