//! Causal tests of concept directions: erase a concept (LEACE, or the span of
//! its class-mean differences) or steer along it (h + α·û) at one residual
//! layer during the forward pass, then measure what the model does on
//! held-out samples before and after, for every concept, with paired
//! bootstrap intervals (`interventions.parquet`). docs/methods.md has the
//! definitions; `mmprobe intervene` runs it.
//!
//! From Rust: check an [`InterveneParams`] and call [`intervene`].

pub mod amnesic;
pub mod bootstrap;
pub mod error;
pub mod fit;
pub mod measure;
pub mod params;
pub mod run;
pub mod subject;

pub use error::{InterveneError, Result};
pub use params::{At, CheckedIntervene, DirectionMethod, InterveneParams, Method, Positions};
pub use run::{Outcome, intervene};
