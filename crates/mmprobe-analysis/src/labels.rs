//! A concept column as a probe target: classes (strings, booleans, integers
//! with few values) or a number (floats, integers with many values). Nulls
//! are dropped and counted.

use polars::prelude::*;

use crate::error::{AnalysisError, Result};

/// Integer columns with more distinct values than this are numeric concepts.
pub const MAX_INTEGER_CLASSES: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Class index per kept row, and the class names (sorted).
    Classes {
        y: Vec<usize>,
        names: Vec<String>,
    },
    Numeric(Vec<f64>),
}

/// The rows a concept keeps (non-null), and its values there.
#[derive(Debug, Clone)]
pub struct Concept {
    pub name: String,
    /// Indices into the activation rows.
    pub rows: Vec<usize>,
    pub target: Target,
    pub dropped_null: usize,
}

impl Concept {
    pub fn n_classes(&self) -> usize {
        match &self.target {
            Target::Classes { names, .. } => names.len(),
            Target::Numeric(_) => 0,
        }
    }

    /// A concept column aligned with the activation rows.
    pub fn from_column(name: &str, column: &Column) -> Result<Concept> {
        let err = |message: String| AnalysisError::Concept { concept: name.to_string(), message };
        let numeric = match column.dtype() {
            DataType::Float32 | DataType::Float64 => true,
            dt if dt.is_integer() => {
                let distinct = column.n_unique().map_err(|e| err(e.to_string()))?;
                distinct > MAX_INTEGER_CLASSES
            }
            DataType::String | DataType::Boolean => false,
            other => return Err(err(format!("type {other} is neither classes nor a number"))),
        };
        let dropped_null = column.null_count();
        if numeric {
            let c = column.cast(&DataType::Float64).map_err(|e| err(e.to_string()))?;
            let ca = c.f64().map_err(|e| err(e.to_string()))?;
            let (rows, y): (Vec<usize>, Vec<f64>) =
                ca.iter().enumerate().filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (i, v))).unzip();
            let dropped = column.len() - rows.len();
            if rows.len() < 3 {
                return Err(err(format!("only {} non-null values", rows.len())));
            }
            return Ok(Concept { name: name.into(), rows, target: Target::Numeric(y), dropped_null: dropped });
        }
        let c = column.cast(&DataType::String).map_err(|e| err(e.to_string()))?;
        let ca = c.str().map_err(|e| err(e.to_string()))?;
        let values: Vec<(usize, &str)> = ca.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v))).collect();
        let mut names: Vec<String> = values.iter().map(|(_, v)| v.to_string()).collect();
        names.sort();
        names.dedup();
        if names.len() < 2 {
            return Err(err(format!(
                "needs at least 2 classes, found {} ({})",
                names.len(),
                names.first().map(String::as_str).unwrap_or("all null")
            )));
        }
        let y = values.iter().map(|(_, v)| names.binary_search(&v.to_string()).expect("a known class")).collect();
        let rows = values.iter().map(|(i, _)| *i).collect();
        Ok(Concept { name: name.into(), rows, target: Target::Classes { y, names }, dropped_null })
    }

    /// Checks there are enough rows of every class for `folds`-fold CV.
    pub fn check_folds(&self, folds: usize) -> Result<()> {
        if let Target::Classes { y, names } = &self.target {
            let mut counts = vec![0usize; names.len()];
            for &c in y {
                counts[c] += 1;
            }
            if let Some((c, &n)) = counts.iter().enumerate().find(|(_, n)| **n < folds) {
                return Err(AnalysisError::Concept {
                    concept: self.name.clone(),
                    message: format!("class '{}' has {n} rows, fewer than the {folds} folds", names[c]),
                });
            }
        } else if self.rows.len() < folds {
            return Err(AnalysisError::Concept {
                concept: self.name.clone(),
                message: format!("{} rows, fewer than the {folds} folds", self.rows.len()),
            });
        }
        Ok(())
    }
}
