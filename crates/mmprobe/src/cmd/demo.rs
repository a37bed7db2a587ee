//! `mmprobe demo`: the whole job on the bundled models and dataset: extract
//! both towers of shapes-clip and the decoder of shapes-llava, probe every
//! concept at every layer (control task, intervals), directions, geometry,
//! the reports, and a table of the best layer per concept.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use mmprobe_analysis::directions::Method;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::sweep::{self, ControlBy, GeometryParams, GroupBy, ProbeSweep};
use mmprobe_analysis::tables::{self, GeometryReport, ProbeRow};
use mmprobe_analysis::{Filters, ProbeParams};
use mmprobe_extract::{ExtractOptions, RunOptions, Selector, Site, Tower};
use mmprobe_store::Store;

use mmprobe_analysis::tables::InterventionRow;
use mmprobe_intervene::{DirectionMethod, InterveneParams, Method as Intervention, Positions};

use super::progress::{SampleBar, bar};
use super::zoo::{SHAPES_CLIP_DIR, SHAPES_LLAVA_DIR};

const SHAPES_DATA: &str = "datasets/shapes/data.csv";
/// The generating factors the demo probes; `background` is the nuisance no caption names.
const CONCEPTS: [&str; 5] = ["colour", "shape", "size", "position", "background"];

#[derive(Args, Debug)]
pub struct DemoCmd {
    /// Where the store, results and report go (the store is rebuilt on each run).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// A CLIP checkpoint folder (default: the bundled shapes-clip).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A dataset manifest with the shapes concept columns (default: the bundled split).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A LLaVA checkpoint whose decoder is extracted and probed too, into
    /// OUT/llava (default: the bundled shapes-llava, when it is there).
    #[arg(long, conflicts_with = "no_llava")]
    llava: Option<PathBuf>,
    /// Only the CLIP part.
    #[arg(long)]
    no_llava: bool,
    /// Repeats of the 5-fold split behind each accuracy and its 95% interval
    /// (Nadeau-Bengio corrected repeated cross-validation).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

/// A bundled file: relative to the working directory, else to the source tree
/// this binary was built from.
fn bundled(rel: &str) -> anyhow::Result<PathBuf> {
    let here = PathBuf::from(rel);
    if here.exists() {
        return Ok(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    if built.exists() {
        return Ok(built);
    }
    bail!("cannot find the bundled {rel}: run from the repository root or pass --model and --data")
}

fn step(name: &str) {
    eprintln!("== {name}");
}

/// One model's part of the demo: what to extract and where it all goes.
struct Job<'a> {
    model: PathBuf,
    data: &'a Path,
    towers: Vec<Tower>,
    sites: Vec<Site>,
    selectors: Vec<Selector>,
    dir: PathBuf,
    /// Causal tests run on the store before the report (interventions.parquet).
    causal: Vec<InterveneParams>,
}

/// What one model's part produced.
struct Done {
    rows: Vec<ProbeRow>,
    geometry: GeometryReport,
    report: PathBuf,
    causal: Vec<(InterveneParams, Vec<InterventionRow>)>,
}

/// Extract, probe, directions, geometry and report for one model, under `job.dir`.
fn analyse(job: &Job, repeats: usize) -> anyhow::Result<Done> {
    let (store_dir, results_dir, report_dir) = (job.dir.join("store"), job.dir.join("results"), job.dir.join("report"));
    std::fs::create_dir_all(&results_dir).with_context(|| format!("cannot create {}", results_dir.display()))?;

    step(&format!("extract {} on {}", job.model.display(), job.data.display()));
    let opts = ExtractOptions {
        towers: Some(job.towers.clone()),
        sites: job.sites.clone(),
        selectors: job.selectors.clone(),
        force: true,
        ..ExtractOptions::new(job.model.clone(), job.data.to_path_buf(), store_dir.clone())
    };
    let progress = SampleBar::new();
    let summary = mmprobe_extract::extract(&opts, &progress);
    progress.0.end(&summary);
    super::extract::print_summary(&summary?);

    let store = Store::open(&store_dir)?;
    let concepts: Vec<String> = CONCEPTS.map(String::from).to_vec();
    let all = Filters::default();
    let partitions = all.matching(&store)?.len();

    step(&format!(
        "probe every concept at every layer ({repeats} x 5-fold CV over samples, control task, corrected intervals)"
    ));
    let sweep = ProbeSweep {
        concepts: concepts.clone(),
        filters: all.clone(),
        params: ProbeParams { folds: 5, repeats, seed: 0, ..Default::default() }.check()?,
        control_by: ControlBy::Default,
        fold_column: None,
        group_by: GroupBy::Sample,
        probing: Default::default(),
    };
    let b = bar(partitions, "partitions");
    let rows = sweep::probe_store(&store, &sweep, &|| b.inc(1));
    b.end(&rows);
    let rows = rows?;
    tables::probes::write(&results_dir, &rows)?;

    step("concept directions (difference of means, LDA) and their cosines");
    let logistic = LogisticParams::default().check()?;
    let b = bar(partitions, "partitions");
    let methods = [Method::DiffMeans, Method::Lda];
    let dirs = sweep::directions_store(&store, &concepts, &all, &methods, &logistic, &GroupBy::Sample, &|| b.inc(1));
    b.end(&dirs);
    let dirs = dirs?;
    for s in &dirs.skipped {
        eprintln!("skipped {s}");
    }
    tables::directions::write(&results_dir, &dirs.rows, &dirs.cosines)?;

    step("geometry: modality gap, cone, retrieval, CKA, separability");
    let gp = GeometryParams { concepts: concepts.clone(), ..Default::default() }.check()?;
    let b = bar(partitions, "partitions");
    let geo = sweep::geometry_store(&store, &all, &gp, &logistic, &|| b.inc(1));
    b.end(&geo);
    let (geometry, cka, sep) = geo?;
    tables::geometry::write(&results_dir, &geometry, &cka, &sep)?;

    let mut causal = Vec::new();
    for p in &job.causal {
        step(&format!(
            "causal test: {} {} at {}/resid/{:?}, {} positions, on held-out samples",
            p.method, p.concept, p.at.tower, p.at.layers, p.positions
        ));
        let checked = p.clone().check()?;
        let run = RunOptions::default();
        let out =
            mmprobe_intervene::intervene(&job.model, job.data, &store_dir, &checked, &run, &|s| eprintln!("   {s}"))?;
        super::intervene::merge_into(&results_dir, &out.rows)?;
        causal.push((p.clone(), out.rows));
    }

    step("report");
    std::fs::create_dir_all(&report_dir)?;
    let written = mmprobe_plot::write_report(&store_dir, &results_dir, &report_dir)?;
    Ok(Done { rows, geometry, report: written.html, causal })
}

pub fn run(a: DemoCmd) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let model = match a.model {
        Some(m) => m,
        None => bundled(SHAPES_CLIP_DIR)?,
    };
    let data = match a.data {
        Some(d) => d,
        None => bundled(SHAPES_DATA)?,
    };
    // shapes-llava comes with the bundled shapes-clip only: it is built on its vision tower.
    let llava = match (&a.llava, a.no_llava) {
        (_, true) => None,
        (Some(l), false) => Some(l.clone()),
        (None, false) => bundled(SHAPES_LLAVA_DIR).ok(),
    };
    let clip = analyse(
        &Job {
            model,
            data: &data,
            towers: vec![Tower::Vision, Tower::Text],
            sites: vec![Site::Resid, Site::Embeds],
            selectors: vec![Selector::Cls, Selector::Eos, Selector::Mean, Selector::Pooled],
            dir: a.out.clone(),
            causal: vec![causal("colour", "vision/resid/-1", Positions::All, None)],
        },
        a.repeats,
    )?;
    let llava = match llava {
        Some(model) => Some(analyse(
            &Job {
                model,
                data: &data,
                towers: vec![Tower::Decoder],
                sites: vec![Site::Resid],
                selectors: vec![Selector::Last, Selector::MeanImage, Selector::MeanText],
                dir: a.out.join("llava"),
                causal: vec![
                    causal("colour", "decoder/resid/1", Positions::Image, None),
                    causal("colour", "decoder/resid/1", Positions::Image, Some("red")),
                ],
            },
            a.repeats,
        )?),
        None => None,
    };

    println!();
    let mut rows: Vec<ProbeRow> = clip.rows.clone();
    rows.extend(llava.iter().flat_map(|l| l.rows.iter().cloned()));
    print_best_layers(&rows);
    println!();
    print_findings(&clip.rows);
    if let Some(l) = &llava {
        print_decoder_findings(&l.rows);
    }
    let g = &clip.geometry;
    if let (Some(gap), Some(r1)) = (g.modality_gap, g.retrieval_i2t_r1) {
        println!("modality gap {gap:.3}; image-to-text retrieval R@1 {r1:.3} over {} pairs", g.pairs);
    }
    println!();
    println!("causal tests (held-out samples; before -> after, 95% paired bootstrap interval of the change):");
    for (name, done) in [("shapes-clip", Some(&clip)), ("shapes-llava", llava.as_ref())] {
        for (p, rows) in done.iter().flat_map(|d| &d.causal) {
            print_causal(name, p, rows);
        }
    }
    println!();
    println!("results {}", a.out.join("results").display());
    println!("report  {}", clip.report.display());
    if let Some(l) = &llava {
        println!("report  {} (shapes-llava decoder)", l.report.display());
    }
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn where_(r: &ProbeRow) -> String {
    let p = r.partition;
    format!("{}/{}/{}/{}", p.tower, p.site, p.layer, p.selector)
}

/// Per concept and tower: the partition with the highest cross-validated
/// accuracy (ties: the earliest partition, the report's rule too).
fn print_best_layers(rows: &[ProbeRow]) {
    println!(
        "best layer per concept (tower/site/layer/selector; mean accuracy over folds and repeats, corrected 95% CI; \
         control task; * = indistinguishable from chance)"
    );
    println!(
        "{:<11} {:<26} {:>8} {:>17} {:>8} {:>11} {:>7}",
        "concept", "where", "accuracy", "95% CI", "control", "selectivity", "chance"
    );
    let best = tables::probes::best_per_tower(rows);
    for concept in CONCEPTS {
        for tower in [Tower::Vision, Tower::Text, Tower::Decoder] {
            let Some(r) = best.iter().find(|r| r.concept == concept && r.partition.tower == tower) else { continue };
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
            println!(
                "{:<11} {:<26} {:>8} {:>17} {:>8} {:>11} {:>7}{}",
                concept,
                where_(r),
                f(r.accuracy),
                format!("[{}, {}]", f(r.accuracy_ci_low), f(r.accuracy_ci_high)),
                f(r.control_accuracy),
                f(r.selectivity),
                format!("{:.3}", r.chance()),
                if r.covers_chance() { " *" } else { "" }
            );
        }
    }
}

fn find<'a>(
    rows: &'a [ProbeRow],
    concept: &str,
    tower: Tower,
    site: Site,
    layer: usize,
    sel: Selector,
) -> Option<&'a ProbeRow> {
    rows.iter().find(|r| {
        let p = r.partition;
        r.concept == concept && p.tower == tower && p.site == site && p.layer == layer && p.selector == sel
    })
}

/// What the bundled model is known to do, read off this run's numbers.
fn print_findings(rows: &[ProbeRow]) {
    let last = rows
        .iter()
        .map(|r| r.partition)
        .filter(|p| p.tower == Tower::Vision && p.site == Site::Resid)
        .map(|p| p.layer)
        .max();
    let Some(last) = last else { return };
    let acc = |r: Option<&ProbeRow>| r.and_then(|r| r.accuracy).map_or("-".into(), |v| format!("{v:.3}"));
    for concept in ["colour", "shape"] {
        let r = find(rows, concept, Tower::Vision, Site::Resid, last, Selector::Cls);
        println!(
            "{concept} on the last vision layer (resid {last}, cls): accuracy {}, selectivity {}",
            acc(r),
            r.and_then(|r| r.selectivity).map_or("-".into(), |v| format!("{v:.3}"))
        );
    }
    // The nuisance: at its most readable in the first two vision layers, against the image embeds.
    let early = rows
        .iter()
        .filter(|r| r.concept == "background")
        .filter(|r| {
            let p = r.partition;
            p.tower == Tower::Vision && p.site == Site::Resid && p.layer <= 1
        })
        .filter(|r| r.accuracy.is_some_and(f64::is_finite))
        .max_by(|a, b| a.accuracy.unwrap_or(f64::NAN).total_cmp(&b.accuracy.unwrap_or(f64::NAN)));
    let embeds = find(rows, "background", Tower::Vision, Site::Embeds, 0, Selector::Pooled);
    println!(
        "background (never captioned, chance 0.333): accuracy {} at {}, {} at the image embeds",
        acc(early),
        early.map_or("-".into(), where_),
        acc(embeds)
    );
}

/// The decoder: where each concept is best read, at the image tokens and at
/// the last prompt token (where the answer's first word is predicted).
fn print_decoder_findings(rows: &[ProbeRow]) {
    let best = |concept: &str, sel: Selector| {
        rows.iter()
            .filter(|r| r.concept == concept && r.partition.selector == sel)
            .filter(|r| r.accuracy.is_some_and(f64::is_finite))
            .max_by(|a, b| a.accuracy.unwrap_or(f64::NAN).total_cmp(&b.accuracy.unwrap_or(f64::NAN)))
    };
    let acc = |r: Option<&ProbeRow>| {
        r.map_or("-".into(), |r| format!("{:.3} (layer {})", r.accuracy.unwrap_or(f64::NAN), r.partition.layer))
    };
    for concept in ["colour", "shape", "size", "position"] {
        println!(
            "decoder {concept}: best {} at the image tokens (mean_image), {} at the last prompt token",
            acc(best(concept, Selector::MeanImage)),
            acc(best(concept, Selector::Last))
        );
    }
}

/// The demo's causal tests: LEACE erasure, or steering toward `target`.
fn causal(concept: &str, at: &str, positions: Positions, target: Option<&str>) -> InterveneParams {
    let (method, direction) = match target {
        Some(_) => (Intervention::Steer, DirectionMethod::DiffMeans),
        None => (Intervention::Erase, DirectionMethod::Leace),
    };
    InterveneParams {
        concept: concept.into(),
        at: at.parse().expect("a valid --at"),
        positions,
        method,
        direction,
        target: target.map(String::from),
        ..Default::default()
    }
}

/// One line per causal test: the intervened concept's own change, then the others'.
fn print_causal(model: &str, p: &InterveneParams, rows: &[InterventionRow]) {
    let Some(first) = rows.first() else { return };
    let main = if rows.iter().any(|r| r.metric == "vqa_accuracy") { "vqa_accuracy" } else { "zero_shot_accuracy" };
    let line = |r: &InterventionRow| format!("{:.3} -> {:.3}", r.before, r.after);
    let what = match &p.target {
        Some(t) => format!("steer {} toward {t}", p.concept),
        None => format!("erase {} ({})", p.concept, p.direction),
    };
    let part = first.partition;
    println!("{model}: {what} at {}/resid/{}, {} positions:", part.tower, part.layer, p.positions);
    let mut alphas: Vec<f64> = rows.iter().map(|r| r.alpha).collect();
    alphas.dedup();
    for alpha in alphas {
        let at: Vec<&InterventionRow> = rows.iter().filter(|r| r.alpha == alpha && r.metric == main).collect();
        let own = at.iter().find(|r| r.measured_concept == p.concept);
        let others: Vec<String> = at
            .iter()
            .filter(|r| r.measured_concept != p.concept)
            .map(|r| format!("{} {}", r.measured_concept, line(r)))
            .collect();
        let target = rows.iter().find(|r| r.alpha == alpha && r.metric == "target_rate");
        let head = if p.target.is_some() { format!("  alpha {alpha:.1}: ") } else { "  ".to_string() };
        if let Some(o) = own {
            println!(
                "{head}{} {main} {} [{:+.3}, {:+.3}]{}; {}",
                p.concept,
                line(o),
                o.ci_low,
                o.ci_high,
                target.map_or(String::new(), |t| format!(", answers '{}' {}", t.target, line(t))),
                others.join(", ")
            );
        }
    }
}
