//! Which sites a forward pass keeps, and what it kept.

use std::collections::{BTreeMap, BTreeSet};

use tch::Tensor;

/// The sites one tower's forward pass must keep; nothing else is retained.
#[derive(Debug, Clone, Default)]
pub struct SiteRequest {
    pub resid: BTreeSet<usize>,
    pub attn: BTreeSet<usize>,
    pub mlp: BTreeSet<usize>,
    pub embeds: bool,
}

impl SiteRequest {
    /// Every site at every layer of an `n`-layer tower.
    pub fn everything(n: usize) -> Self {
        SiteRequest { resid: (0..=n).collect(), attn: (1..=n).collect(), mlp: (1..=n).collect(), embeds: true }
    }
}

/// What a tower's forward pass kept: [B, T, D] per (site, layer), plus pooling facts.
#[derive(Default)]
pub struct Captured {
    pub resid: BTreeMap<usize, Tensor>,
    pub attn: BTreeMap<usize, Tensor>,
    pub mlp: BTreeMap<usize, Tensor>,
    /// The pooled output before projection, [B, D].
    pub pooled: Option<Tensor>,
    /// The projected embedding, [B, P], when asked for.
    pub embeds: Option<Tensor>,
    /// Text towers: the position each sequence is pooled at, [B].
    pub pool_positions: Option<Tensor>,
}

impl Captured {
    pub(crate) fn keep_resid(&mut self, req: &SiteRequest, layer: usize, h: &Tensor) {
        if req.resid.contains(&layer) {
            self.resid.insert(layer, h.shallow_clone());
        }
    }

    pub(crate) fn keep_sublayers(&mut self, req: &SiteRequest, layer: usize, attn: &Tensor, mlp: &Tensor) {
        if req.attn.contains(&layer) {
            self.attn.insert(layer, attn.shallow_clone());
        }
        if req.mlp.contains(&layer) {
            self.mlp.insert(layer, mlp.shallow_clone());
        }
    }
}
