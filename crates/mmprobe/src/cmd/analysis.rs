//! `probe`, `directions`, `geometry`, `erase`: sweeps over a store's partitions.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use mmprobe_analysis::directions::Method;
use mmprobe_analysis::logistic::LogisticParams;
use mmprobe_analysis::models::{Knn, ModelChoice, RbfSvm, Tree};
use mmprobe_analysis::probe::Interval;
use mmprobe_analysis::sparse::Filter;
use mmprobe_analysis::sweep::{self, ControlBy, GeometryParams, GroupBy, ProbeSweep, Probing};
use mmprobe_analysis::tables;
use mmprobe_analysis::{Filters, ProbeParams};
use mmprobe_store::{Selector, Site, Store, Tower};

use super::progress::bar;

/// Which partitions to analyse (default: all of them).
#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Towers, comma-separated (vision, text, decoder).
    #[arg(long, value_delimiter = ',')]
    towers: Option<Vec<Tower>>,
    /// Sites (resid, attn, mlp, embeds).
    #[arg(long, value_delimiter = ',')]
    sites: Option<Vec<Site>>,
    /// Layers, e.g. 0,6,-1 (negative counts from each tower's last).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    layers: Option<Vec<i64>>,
    /// Selectors (cls, eos, mean, pooled, all, ...).
    #[arg(long = "select", value_delimiter = ',')]
    select: Option<Vec<Selector>>,
}

impl FilterArgs {
    fn filters(&self) -> Filters {
        Filters {
            towers: self.towers.clone(),
            sites: self.sites.clone(),
            layers: self.layers.clone(),
            selectors: self.select.clone(),
        }
    }
}

/// Probe settings shared by probe and erase.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Cross-validation folds (stratified, seeded).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Inverse L2 strength of the logistic probe (scikit-learn's C); default: chosen by inner CV.
    #[arg(long = "C", id = "c")]
    c: Option<f64>,
    /// Ridge strength for numeric concepts; default: chosen by inner CV.
    #[arg(long)]
    alpha: Option<f64>,
    /// Seed for folds, bootstrap, permutations and control labels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep the rows sharing a value of this samples column in one fold (e.g.
    /// the image, when several prompts share it); default: each sample's rows.
    #[arg(long)]
    group_column: Option<String>,
}

impl ProbeArgs {
    fn logistic(&self) -> LogisticParams {
        LogisticParams { c: self.c, seed: self.seed, ..Default::default() }
    }
    fn params(&self) -> ProbeParams {
        let mut p = ProbeParams { folds: self.folds, seed: self.seed, ..Default::default() };
        p.logistic = self.logistic();
        p.ridge.alpha = self.alpha;
        p
    }
    fn group_by(&self) -> GroupBy {
        self.group_column.clone().map_or(GroupBy::Sample, GroupBy::Column)
    }
}

#[derive(Args, Debug)]
pub struct ProbeCmd {
    /// The activation store.
    #[arg(long)]
    store: PathBuf,
    /// Concept (label) columns of samples.parquet, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    concept: Vec<String>,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Run the control task (Hewitt & Liang) and report selectivity.
    #[arg(long)]
    control: bool,
    /// Column whose distinct values get one random control label each
    /// (default: `text` when texts repeat, else each sample). Implies --control.
    #[arg(long)]
    control_by: Option<String>,
    /// Take the folds from this samples column (its distinct values) instead of
    /// seeded stratified folds, e.g. to reuse a published split.
    #[arg(long)]
    fold_column: Option<String>,
    /// Label permutations for a p-value (0: none); p-values are also adjusted
    /// across each concept's partitions (p_value_bh, p_value_holm).
    #[arg(long, default_value_t = 0)]
    permutations: usize,
    /// Repeats of the k-fold split; the score is the mean over all folds and repeats.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// The 95% interval: `corrected` (Nadeau-Bengio corrected repeated CV) or
    /// `bootstrap` (resampled out-of-fold predictions: optimistic, for comparison).
    #[arg(long, default_value = "corrected")]
    interval: Interval,
    /// Bootstrap resamples for `--interval bootstrap`.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// `cv`: cross-validated probes; `mdl`: the online codelength (Voita & Titov),
    /// of the concept and, with --control, of its control task (fixed C: --C, else 1).
    #[arg(long, default_value = "cv", value_parser = ["cv", "mdl"])]
    method: String,
    /// k-sparse probes: for each k, a probe on the top k features of each
    /// training fold (ranked on that fold only); rows per k with the chosen features.
    #[arg(long, value_delimiter = ',', conflicts_with = "method")]
    sparse: Option<Vec<usize>>,
    /// How --sparse ranks features: `anova` (F statistic) or `mean-diff`.
    #[arg(long, default_value = "anova")]
    sparse_filter: Filter,
    /// The probe: `logistic` (classes) / `ridge` (numbers), the default; `linear`
    /// (least squares for numbers); or a non-linear baseline for classes:
    /// `svm` (RBF kernel, C from --C, else 1), `knn`, `tree`.
    #[arg(long, default_value = "logistic")]
    model: ModelChoice,
    /// RBF width of `--model svm` (default: 1 / (features x variance), scikit-learn's "scale").
    #[arg(long)]
    gamma: Option<f64>,
    /// Neighbours of `--model knn`.
    #[arg(long, default_value_t = 5)]
    neighbours: usize,
    /// Depth limit of `--model tree`.
    #[arg(long, default_value_t = 8)]
    max_depth: usize,
    #[command(flatten)]
    filters: FilterArgs,
    /// The results folder (probes.parquet, probes.csv).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct DirectionsCmd {
    #[arg(long)]
    store: PathBuf,
    #[arg(long, value_delimiter = ',', required = true)]
    concept: Vec<String>,
    /// diff-means, lda, probe (the CAV); comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "diff-means,lda,probe")]
    method: Vec<Method>,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    filters: FilterArgs,
    /// The results folder (directions.parquet, direction_cosines.parquet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct GeometryCmd {
    #[arg(long)]
    store: PathBuf,
    /// Concepts for Fisher ratio, silhouette and cross-modal transfer (optional).
    #[arg(long, value_delimiter = ',')]
    concept: Vec<String>,
    /// Samples (seeded subsample) for CKA between layers.
    #[arg(long, default_value_t = 1000)]
    cka_rows: usize,
    /// Samples (seeded subsample) for the silhouette.
    #[arg(long, default_value_t = 2000)]
    silhouette_rows: usize,
    /// Folds (over samples) of the cross-modal transfer probe.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Seed for the subsamples and the transfer folds.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    filters: FilterArgs,
    /// The results folder (geometry.json, cka.parquet, separability.parquet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EraseCmd {
    #[arg(long)]
    store: PathBuf,
    #[arg(long)]
    concept: String,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    filters: FilterArgs,
    /// The results folder (erase.parquet, erase.csv).
    #[arg(long)]
    out: PathBuf,
}

fn open(store: &Path, out: &Path) -> anyhow::Result<Store> {
    let s = Store::open(store)?;
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {} is a file, not a folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create the results folder {}", out.display()))?;
    Ok(s)
}

/// The matching partitions, after saying in one line each what the store lacks.
fn partitions(store: &Store, filters: &Filters) -> anyhow::Result<usize> {
    let parts = filters.matching(store)?;
    for gap in store.gaps(&parts)? {
        eprintln!("warning: {gap}");
    }
    Ok(parts.len())
}

pub fn probe(a: ProbeCmd) -> anyhow::Result<()> {
    let store = open(&a.store, &a.out)?;
    let filters = a.filters.filters();
    let mut params = a.probe.params();
    params.permutations = a.permutations;
    params.repeats = a.repeats;
    params.interval = a.interval;
    params.bootstrap = a.bootstrap;
    params.model = match a.model {
        ModelChoice::Svm(m) => ModelChoice::Svm(RbfSvm { c: a.probe.c.unwrap_or(m.c), gamma: a.gamma }),
        ModelChoice::Knn(_) => ModelChoice::Knn(Knn { k: a.neighbours }),
        ModelChoice::Tree(_) => ModelChoice::Tree(Tree { max_depth: a.max_depth }),
        other => other,
    };
    let sweep = ProbeSweep {
        concepts: a.concept.clone(),
        filters: filters.clone(),
        params: params.check()?,
        control_by: match (&a.control_by, a.control) {
            (Some(c), _) => ControlBy::Column(c.clone()),
            (None, true) => ControlBy::Default,
            (None, false) => ControlBy::Off,
        },
        fold_column: a.fold_column.clone(),
        group_by: a.probe.group_by(),
        probing: match (&a.sparse, a.method.as_str()) {
            (Some(ks), _) => Probing::Sparse { ks: ks.clone(), filter: a.sparse_filter },
            (None, "mdl") => Probing::Mdl,
            _ => Probing::Cv,
        },
    };
    let n = partitions(&store, &filters)?;
    let b = bar(n, "partitions");
    let rows = sweep::probe_store(&store, &sweep, &|| b.inc(1));
    b.end(&rows);
    let rows = rows?;
    // Other probes' rows already in the folder stay, so runs of several models
    // and methods end up side by side in one table and one report.
    let earlier = a.out.join("probes.parquet");
    let rows = if earlier.is_file() {
        let (merged, kept) = tables::probes::merge(tables::probes::read(&a.out)?, rows);
        if kept > 0 {
            println!("kept {kept} rows of other probes or methods from {}", earlier.display());
        }
        merged
    } else {
        rows
    };
    tables::probes::write(&a.out, &rows)?;
    if let Some(r) = rows.iter().find(|r| r.dropped_null > 0) {
        println!("{}: {} rows with a null label dropped", r.concept, r.dropped_null);
    }
    for r in rows.iter().filter(|r| r.skipped.is_some()) {
        eprintln!("skipped {} {}: {}", r.concept, r.partition, r.skipped.as_deref().unwrap_or_default());
    }
    println!("{} probes over {n} partitions -> {}", rows.len(), a.out.join("probes.parquet").display());
    Ok(())
}

pub fn directions(a: DirectionsCmd) -> anyhow::Result<()> {
    let store = open(&a.store, &a.out)?;
    let filters = a.filters.filters();
    let logistic = a.probe.logistic().check()?;
    let n = partitions(&store, &filters)?;
    let b = bar(n, "partitions");
    let res =
        sweep::directions_store(&store, &a.concept, &filters, &a.method, &logistic, &a.probe.group_by(), &|| b.inc(1));
    b.end(&res);
    let res = res?;
    for s in &res.skipped {
        eprintln!("skipped {s}");
    }
    let (rows, cosines) = (res.rows, res.cosines);
    tables::directions::write(&a.out, &rows, &cosines)?;
    println!("{} directions, {} cosines -> {}", rows.len(), cosines.len(), a.out.join("directions.parquet").display());
    Ok(())
}

pub fn geometry(a: GeometryCmd) -> anyhow::Result<()> {
    let params = GeometryParams {
        cka_rows: a.cka_rows,
        silhouette_rows: a.silhouette_rows,
        seed: a.seed,
        concepts: a.concept.clone(),
        folds: a.folds,
    }
    .check()?;
    let store = open(&a.store, &a.out)?;
    let filters = a.filters.filters();
    let logistic = LogisticParams { seed: a.seed, ..Default::default() }.check()?;
    let n = partitions(&store, &filters)?;
    let b = bar(n, "partitions");
    let res = sweep::geometry_store(&store, &filters, &params, &logistic, &|| b.inc(1));
    b.end(&res);
    let (report, cka, sep) = res?;
    tables::geometry::write(&a.out, &report, &cka, &sep)?;
    match report.modality_gap {
        Some(g) => println!(
            "modality gap {g:.4}, cone image {:.4} text {:.4}, i2t R@1 {:.3} R@5 {:.3}, t2i R@1 {:.3} R@5 {:.3} ({} pairs)",
            report.cone_image.unwrap_or(f64::NAN),
            report.cone_text.unwrap_or(f64::NAN),
            report.retrieval_i2t_r1.unwrap_or(f64::NAN),
            report.retrieval_i2t_r5.unwrap_or(f64::NAN),
            report.retrieval_t2i_r1.unwrap_or(f64::NAN),
            report.retrieval_t2i_r5.unwrap_or(f64::NAN),
            report.pairs
        ),
        None => println!("no paired vision/text embeds in the store: modality gap and retrieval skipped"),
    }
    println!("{} CKA pairs on {} samples -> {}", cka.len(), report.cka_rows, a.out.join("geometry.json").display());
    Ok(())
}

pub fn erase(a: EraseCmd) -> anyhow::Result<()> {
    let store = open(&a.store, &a.out)?;
    let filters = a.filters.filters();
    let params = a.probe.params().check()?;
    let n = partitions(&store, &filters)?;
    let b = bar(n, "partitions");
    let rows = sweep::erase_store(&store, &a.concept, &filters, &params, &a.probe.group_by(), &|| b.inc(1));
    b.end(&rows);
    let (rows, skipped) = rows?;
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    tables::erase::write(&a.out, &rows)?;
    for r in &rows {
        println!(
            "{} {}: probe {:.3} -> {:.3} after LEACE (chance {:.3}, rank {})",
            r.concept, r.partition, r.accuracy_before, r.accuracy_after, r.chance, r.rank
        );
    }
    Ok(())
}
