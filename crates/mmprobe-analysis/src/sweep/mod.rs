//! Analyses over every matching partition of a store, in parallel: one
//! module per analysis, each writing its own table (`crate::tables`).
//! Every split is over groups (samples by default, or `--group-column`).

pub mod directions;
pub mod erase;
pub mod geometry;
pub mod probe;

use mmprobe_store::{Partition, Store};
use ndarray::Array2;
use polars::prelude::*;

use crate::error::{AnalysisError, Result};
use crate::folds::Groups;
use crate::labels::Concept;

pub use directions::{DirectionsOutcome, directions_store};
pub use erase::erase_store;
pub use geometry::{CheckedGeometry, GeometryParams, geometry_store};
pub use probe::{ControlBy, ProbeSweep, Probing, probe_store};

/// One partition's activations as f64 with the label columns aligned to its rows.
pub struct Loaded {
    pub partition: Partition,
    pub x: Array2<f64>,
    pub sample: Vec<u32>,
    pub labels: DataFrame,
}

impl Loaded {
    /// A loaded label column as a concept over this partition's rows.
    pub fn concept(&self, name: &str) -> Result<Concept> {
        let col = self.labels.column(name).map_err(|e| AnalysisError::Input(e.to_string()))?;
        Concept::from_column(name, col)
    }
}

/// Reads a partition (refusing duplicate rows and non-finite values, naming it).
pub fn load(store: &Store, p: Partition, columns: &[&str]) -> Result<Loaded> {
    let (acts, labels) = store.load_labeled(p, columns)?;
    Ok(Loaded { partition: p, x: acts.matrix.mapv(f64::from), sample: acts.sample, labels })
}

/// What cross-validation keeps together: every row of a group is in one fold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// The rows of one sample (its tokens, for `all`).
    #[default]
    Sample,
    /// The rows sharing a value of a samples.parquet column (e.g. an image
    /// that several prompts share).
    Column(String),
}

impl GroupBy {
    pub fn name(&self) -> &str {
        match self {
            GroupBy::Sample => "sample",
            GroupBy::Column(c) => c,
        }
    }

    /// Refuses a column samples.parquet lacks, before any work starts.
    pub fn check(&self, store: &Store) -> Result<()> {
        if let GroupBy::Column(c) = self
            && store.samples.column(c).is_err()
        {
            return Err(AnalysisError::Input(format!(
                "--group-column: no column '{c}' in samples.parquet (it has: {})",
                store.samples.get_column_names().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// The group of every row of a loaded partition.
    pub fn groups(&self, store: &Store, l: &Loaded) -> Result<Groups> {
        match self {
            GroupBy::Sample => Ok(Groups::from_keys(&l.sample)),
            GroupBy::Column(c) => {
                let df = store.labels_for(&l.sample, &[c.as_str()])?;
                let s = df
                    .column(c)
                    .and_then(|v| v.cast(&DataType::String))
                    .map_err(|e| AnalysisError::Input(e.to_string()))?;
                let keys: Vec<String> = s
                    .str()
                    .map_err(|e| AnalysisError::Input(e.to_string()))?
                    .iter()
                    .zip(&l.sample)
                    // A null group is its sample alone: never merged with other nulls.
                    .map(|(v, s)| v.map_or_else(|| format!("\u{0}null sample {s}"), str::to_string))
                    .collect();
                Ok(Groups::from_keys(&keys))
            }
        }
    }
}

/// `work` on every partition, in parallel, in order, with at most one
/// partition per thread in flight. A plain `par_iter` is not enough: a thread
/// that waits inside a partition (on polars' reader or a nested parallel fit)
/// steals the next partition and starts loading it, so a sweep could hold
/// every partition of the store at once. Rounds of one partition per thread
/// keep memory flat in the number of partitions.
pub fn per_partition<R: Send>(
    partitions: &[Partition],
    work: impl Fn(Partition) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(partitions.len());
    for round in partitions.chunks(rayon::current_num_threads().max(1)) {
        out.extend(round.par_iter().map(|&p| work(p)).collect::<Result<Vec<R>>>()?);
    }
    Ok(out)
}

/// Names the partition in numerical failures, so a sweep's error says where.
fn in_partition(p: Partition) -> impl Fn(AnalysisError) -> AnalysisError {
    move |e| match e {
        AnalysisError::Fit { what, message } => {
            AnalysisError::Partition { partition: p.to_string(), message: format!("{what} failed: {message}") }
        }
        AnalysisError::TooSmall(m) => AnalysisError::Partition { partition: p.to_string(), message: m },
        other => other,
    }
}

fn concept_err(concept: &str, message: impl Into<String>) -> AnalysisError {
    AnalysisError::Concept { concept: concept.to_string(), message: message.into() }
}

/// Checks the concepts exist in samples.parquet before any work starts.
pub fn check_concepts(store: &Store, concepts: &[String]) -> Result<()> {
    if concepts.is_empty() {
        return Err(AnalysisError::Input("give at least one --concept".into()));
    }
    for c in concepts {
        if store.samples.column(c).is_err() {
            return Err(concept_err(
                c,
                format!("no such column in samples.parquet (labels: {})", store.label_columns().join(", ")),
            ));
        }
    }
    Ok(())
}

/// The classes of a concept, or an error naming it when it is a number.
fn classes_of(concept: &Concept) -> Result<(&[usize], &[String])> {
    match &concept.target {
        crate::labels::Target::Classes { y, names } => Ok((y, names)),
        crate::labels::Target::Numeric(_) => Err(concept_err(&concept.name, "needs classes, not a number")),
    }
}
