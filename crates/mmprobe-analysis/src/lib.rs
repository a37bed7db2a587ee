//! Probes with honest statistics, concept directions, cross-modal geometry
//! and erasure, on an activation store (docs/methods.md has the definitions).
//! Never links LibTorch: any store, from any tool, can be analysed.
//!
//! A probe sweep from Rust, as `mmprobe probe` does it: open a [`mmprobe_store::Store`],
//! describe the sweep with a [`sweep::ProbeSweep`] and call [`sweep::probe_store`]; see
//! `examples/probe_store.rs` (`cargo run --release -p mmprobe-analysis --example probe_store -- STORE CONCEPT`).

pub mod cka;
pub mod directions;
pub mod error;
pub mod folds;
pub mod geometry;
pub mod labels;
pub mod lbfgs;
pub mod leace;
pub mod linalg;
pub mod linfa_api;
pub mod logistic;
pub mod mdl;
pub mod metrics;
pub mod models;
pub mod probe;
pub mod ridge;
pub mod rng;
pub mod scale;
pub mod select;
pub mod sparse;
pub mod stats;
pub mod sweep;
pub mod tables;

pub use error::{AnalysisError, Result};
pub use probe::{CheckedProbe, ProbeParams};
pub use select::Filters;
