//! Which partitions of a store an analysis command runs over
//! (`--towers/--sites/--layers/--select`, as for extract).

use mmprobe_store::{Partition, Selector, Site, Store, Tower};

use crate::error::{AnalysisError, Result};

#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub towers: Option<Vec<Tower>>,
    pub sites: Option<Vec<Site>>,
    /// Layer indices; negatives count from each tower's last stored layer.
    pub layers: Option<Vec<i64>>,
    pub selectors: Option<Vec<Selector>>,
}

impl Filters {
    /// The store's partitions that pass, or an error when none does.
    pub fn matching(&self, store: &Store) -> Result<Vec<Partition>> {
        let all = store.partitions()?;
        let max_layer = |t: Tower, s: Site| all.iter().filter(|p| p.tower == t && p.site == s).map(|p| p.layer).max();
        let out: Vec<Partition> = all
            .iter()
            .copied()
            .filter(|p| self.towers.as_ref().is_none_or(|v| v.contains(&p.tower)))
            .filter(|p| self.sites.as_ref().is_none_or(|v| v.contains(&p.site)))
            .filter(|p| self.selectors.as_ref().is_none_or(|v| v.contains(&p.selector)))
            .filter(|p| {
                self.layers.as_ref().is_none_or(|ls| {
                    let top = max_layer(p.tower, p.site).unwrap_or(0) as i64;
                    ls.iter().any(|&l| (if l < 0 { top + 1 + l } else { l }) == p.layer as i64)
                })
            })
            .collect();
        if out.is_empty() {
            return Err(AnalysisError::Input(format!(
                "no partition of {} matches the filters (it has {} partitions)",
                store.root.display(),
                all.len()
            )));
        }
        Ok(out)
    }
}
