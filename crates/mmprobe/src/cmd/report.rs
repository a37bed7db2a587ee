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
    if a.out.exists() && !a.out.is_dir() {
        anyhow::bail!(
            "--out {} is a file: the report needs a folder (report.html and figures/ go in it)",
            a.out.display()
        );
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("cannot create the report folder {}: {e}", a.out.display()))?;
    let s = mmprobe_plot::write_report(&a.store, &a.results, &a.out)?;
    println!("{} figures (PNG + SVG) in {:.1} s", s.figures.len() / 2, s.seconds);
    println!("report {}", s.html.display());
    Ok(())
}
