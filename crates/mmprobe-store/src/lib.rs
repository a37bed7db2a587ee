//! The activation store (README, "The store"): `manifest.json`, `samples.parquet`,
//! `tokens.parquet`, `errors.parquet` and hive-partitioned
//! `acts/tower=/site=/layer=/selector=/part-<shard>-<n>.parquet`.
//!
//! Analysis reads it through [`Store`]; extraction writes it through the
//! [`part`], [`progress`] and [`manifest`] modules. Nothing here links LibTorch.

pub mod dataset;
pub mod error;
pub mod format;
pub mod layout;
pub mod logit_lens;
pub mod manifest;
pub mod names;
pub mod part;
pub mod progress;
pub mod store;
pub mod tokens;

pub use dataset::Dataset;
pub use error::{Result, StoreError};
pub use format::{Compression, PartFormat, StoreDType};
pub use layout::Partition;
pub use manifest::Manifest;
pub use names::{NameError, Selector, Site, Tower};
pub use part::{Activations, PartRows, PartWriter};
pub use progress::{FailedInput, ShardProgress};
pub use store::Store;
