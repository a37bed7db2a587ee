//! The activation store of DESIGN.md: `manifest.json`, `samples.parquet` and
//! hive-partitioned `acts/tower=/site=/layer=/selector=/` Parquet parts.

pub mod names;

pub use names::{NameError, Selector, Site, Tower};
