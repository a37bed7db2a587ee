//! A probe sweep on an activation store from Rust: what `mmprobe probe` does,
//! through the library API.
//!
//!     cargo run --release -p mmprobe-analysis --example probe_store -- STORE CONCEPT
//!
//! `STORE` is any store (`mmprobe demo` leaves one in `demo-out/store`),
//! `CONCEPT` a label column of its samples.parquet (`colour`). The example
//! probes the concept on the last `resid` layer of every tower (5-fold CV over
//! samples, 2 repeats, control task) and prints one line per partition.

use mmprobe_analysis::sweep::{self, ControlBy, GroupBy, ProbeSweep};
use mmprobe_analysis::{Filters, ProbeParams};
use mmprobe_store::{Site, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: probe_store STORE CONCEPT";
    let root = args.next().ok_or(usage)?;
    let concept = args.next().ok_or(usage)?;

    let store = Store::open(std::path::Path::new(&root))?;
    let sweep = ProbeSweep {
        concepts: vec![concept],
        // `--sites resid --layers -1`: negative layers count from each tower's last.
        filters: Filters { sites: Some(vec![Site::Resid]), layers: Some(vec![-1]), ..Default::default() },
        // `--folds 5 --repeats 2`; C chosen by inner CV as on the command line.
        params: ProbeParams { folds: 5, repeats: 2, seed: 0, ..Default::default() }.check()?,
        // `--control`: the control task's types are the texts when they repeat, else the samples.
        control_by: ControlBy::Default,
        fold_column: None,
        group_by: GroupBy::Sample,
        probing: Default::default(),
    };
    let rows = sweep::probe_store(&store, &sweep, &|| {})?;

    println!(
        "{:<48} {:>6} {:>9} {:>17} {:>8} {:>11}",
        "partition", "n", "accuracy", "95% interval", "control", "selectivity"
    );
    for r in &rows {
        let name = r.partition.to_string();
        if let Some(why) = &r.skipped {
            println!("{name:<48} skipped: {why}");
            continue;
        }
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let interval = format!("[{}, {}]", f(r.accuracy_ci_low), f(r.accuracy_ci_high));
        let (acc, control, selectivity) = (f(r.accuracy), f(r.control_accuracy), f(r.selectivity));
        println!("{name:<48} {:>6} {acc:>9} {interval:>17} {control:>8} {selectivity:>11}", r.n);
    }
    // `mmprobe_analysis::tables::probes::write(dir, &rows)` writes probes.parquet and .csv as the CLI does.
    Ok(())
}
