//! The one hook a forward pass reports its sites to. A tower's forward pass
//! hands every residual stream and sublayer output to its [`Capture`], which
//! keeps what was asked for up front ([`SiteRequest`]) and drops the rest, so
//! memory holds only the requested states.

use std::collections::{BTreeMap, BTreeSet};

use tch::Tensor;

/// The sites one tower's forward pass must keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteRequest {
    pub resid: BTreeSet<usize>,
    pub attn: BTreeSet<usize>,
    pub mlp: BTreeSet<usize>,
    pub embeds: bool,
    /// Residual streams wanted as they are, before any final norm (the logit lens reads them).
    pub raw: BTreeSet<usize>,
}

impl SiteRequest {
    /// Every site at every layer of an `n`-layer tower.
    pub fn everything(n: usize) -> Self {
        SiteRequest {
            resid: (0..=n).collect(),
            attn: (1..=n).collect(),
            mlp: (1..=n).collect(),
            embeds: true,
            raw: BTreeSet::new(),
        }
    }

    /// Only the projected embedding.
    pub fn embeds() -> Self {
        SiteRequest { embeds: true, ..Default::default() }
    }
}

/// A tower's capture hook: what was requested, and what the pass kept.
/// States are [B, T, D] per layer (layer 0 = the embeddings).
#[derive(Default)]
pub struct Capture {
    request: SiteRequest,
    /// Residual layers the model needs back for its own use (LLaVA's feature layers).
    internal: BTreeSet<usize>,
    pub resid: BTreeMap<usize, Tensor>,
    pub attn: BTreeMap<usize, Tensor>,
    pub mlp: BTreeMap<usize, Tensor>,
    /// Residual streams before any final norm, for [`SiteRequest::raw`].
    pub raw: BTreeMap<usize, Tensor>,
    /// Residual streams kept for the model's own use, apart from what was requested.
    pub internal_resid: BTreeMap<usize, Tensor>,
    /// The pooled output before projection, [B, D].
    pub pooled: Option<Tensor>,
    /// The projected embedding, [B, P], when asked for.
    pub embeds: Option<Tensor>,
    /// Text towers: the position each sequence is pooled at, [B].
    pub pool_positions: Option<Tensor>,
}

impl Capture {
    pub fn new(request: SiteRequest) -> Self {
        Capture { request, ..Default::default() }
    }

    /// A hook that keeps nothing (a forward pass for its output alone).
    pub fn nothing() -> Self {
        Capture::default()
    }

    pub fn request(&self) -> &SiteRequest {
        &self.request
    }

    pub fn wants_embeds(&self) -> bool {
        self.request.embeds
    }

    /// Also keeps these residual layers in [`Capture::internal_resid`], for the model itself.
    pub(crate) fn need_resid(&mut self, layers: impl IntoIterator<Item = usize>) {
        self.internal.extend(layers);
    }

    /// The residual stream after layer `l`.
    pub(crate) fn resid(&mut self, l: usize, h: &Tensor) {
        self.resid_normed(l, h, |h| h.shallow_clone());
    }

    /// The residual stream after layer `l` of a tower whose reported state
    /// there is `norm(h)` (a decoder's last layer: transformers' hidden_states[N]
    /// is after the final norm); `h` itself is what `raw` and the model see.
    pub(crate) fn resid_normed(&mut self, l: usize, h: &Tensor, norm: impl FnOnce(&Tensor) -> Tensor) {
        if self.request.resid.contains(&l) {
            self.resid.insert(l, norm(h));
        }
        if self.request.raw.contains(&l) {
            self.raw.insert(l, h.shallow_clone());
        }
        if self.internal.contains(&l) {
            self.internal_resid.insert(l, h.shallow_clone());
        }
    }

    /// Layer `l`'s attention and MLP outputs (before they join the residual stream).
    pub(crate) fn sublayers(&mut self, l: usize, attn: &Tensor, mlp: &Tensor) {
        if self.request.attn.contains(&l) {
            self.attn.insert(l, attn.shallow_clone());
        }
        if self.request.mlp.contains(&l) {
            self.mlp.insert(l, mlp.shallow_clone());
        }
    }
}
