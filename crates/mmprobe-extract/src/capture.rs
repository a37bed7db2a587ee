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
    /// Every kept residual, attention and MLP state is read at position 0 alone
    /// (the `cls` selector). The pooled embeds are not counted: the tower
    /// knows what its pooling reads. So a tower whose own outputs read no other
    /// position of its last layer (CLIP's vision tower) may compute that layer
    /// at position 0 only; the flag never cuts any other tower.
    pub first_token_only: bool,
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
            first_token_only: false,
        }
    }

    /// Only the projected embedding.
    pub fn embeds() -> Self {
        SiteRequest { embeds: true, ..Default::default() }
    }
}

/// How an intervention changes residual vectors h [.., D].
pub enum EditKind {
    /// Projects the unit direction `u` [D] out: h - (h . u) u.
    Erase { u: Tensor },
    /// Adds `alpha` times the unit direction `u` [D]: h + alpha u.
    Steer { u: Tensor, alpha: f64 },
    /// An affine low-rank eraser (LEACE's form): h - ((h - mu) down) up^T, with
    /// `mu` [D] and `down`, `up` [D, r].
    Affine { mu: Tensor, down: Tensor, up: Tensor },
}

impl EditKind {
    /// The same edit sharing its tensors (one edit serves many passes).
    pub fn shallow_clone(&self) -> EditKind {
        match self {
            EditKind::Erase { u } => EditKind::Erase { u: u.shallow_clone() },
            EditKind::Steer { u, alpha } => EditKind::Steer { u: u.shallow_clone(), alpha: *alpha },
            EditKind::Affine { mu, down, up } => {
                EditKind::Affine { mu: mu.shallow_clone(), down: down.shallow_clone(), up: up.shallow_clone() }
            }
        }
    }

    /// The edited vectors, in `h`'s dtype and device.
    pub fn apply(&self, h: &Tensor) -> Tensor {
        let like = |t: &Tensor| t.to_device(h.device()).to_kind(h.kind());
        match self {
            EditKind::Erase { u } => {
                let u = like(u);
                h - h.matmul(&u).unsqueeze(-1) * &u
            }
            EditKind::Steer { u, alpha } => h + like(u) * *alpha,
            EditKind::Affine { mu, down, up } => h - (h - like(mu)).matmul(&like(down)).matmul(&like(up).tr()),
        }
    }
}

/// An intervention on one tower's residual stream: `kind` applied after the
/// listed layers (0 = the embeddings, before layer 1), where `positions`
/// ([B, T] bool) is true; every position when it is `None`.
pub struct Edit {
    pub layers: BTreeSet<usize>,
    pub positions: Option<Tensor>,
    pub kind: EditKind,
}

impl Edit {
    fn apply(&self, h: Tensor) -> Tensor {
        let edited = self.kind.apply(&h);
        match &self.positions {
            Some(m) => edited.where_self(&m.to_device(h.device()).unsqueeze(-1), &h),
            None => edited,
        }
    }
}

/// A tower's capture hook: what was requested, and what the pass kept.
/// States are [B, T, D] per layer (layer 0 = the embeddings).
#[derive(Default)]
pub struct Capture {
    request: SiteRequest,
    /// Residual layers the model needs back for its own use (LLaVA's feature layers).
    internal: BTreeSet<usize>,
    /// An intervention on the stream, applied by [`Capture::stream`].
    edit: Option<Edit>,
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

    /// A hook that also edits the stream the pass continues with (an intervention).
    pub fn with_edit(mut self, edit: Edit) -> Self {
        self.edit = Some(edit);
        self
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

    /// Whether layer `l`'s states may be computed at position 0 alone, when
    /// `l` is the tower's last layer and its outputs read only that position:
    /// nothing kept reads another position, no intervention edits the stream
    /// (its position mask is the full sequence's), and the model itself keeps
    /// no stream there.
    pub(crate) fn first_token_suffices(&self, l: usize) -> bool {
        self.request.first_token_only
            && self.edit.is_none()
            && !self.internal.contains(&l)
            && !self.request.raw.contains(&l)
    }

    /// Also keeps these residual layers in [`Capture::internal_resid`], for the model itself.
    pub(crate) fn need_resid(&mut self, layers: impl IntoIterator<Item = usize>) {
        self.internal.extend(layers);
    }

    /// The residual stream after layer `l`, edited when an intervention is
    /// there; the pass continues with (and the hook keeps) what this returns.
    pub(crate) fn stream(&mut self, l: usize, h: Tensor) -> Tensor {
        let h = self.edited(l, h);
        self.resid(l, &h);
        h
    }

    /// [`Capture::stream`] for a tower whose reported state at `l` is `norm(h)` ([`Capture::resid_normed`]).
    pub(crate) fn stream_normed(&mut self, l: usize, h: Tensor, norm: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        let h = self.edited(l, h);
        self.resid_normed(l, &h, norm);
        h
    }

    fn edited(&self, l: usize, h: Tensor) -> Tensor {
        match &self.edit {
            Some(e) if e.layers.contains(&l) => e.apply(h),
            _ => h,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn h() -> Tensor {
        Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.]).view([1, 2, 2, 3]).squeeze_dim(0)
    }

    #[test]
    fn edits_do_what_they_say_where_they_say() {
        let u = Tensor::from_slice(&[0f32, 1., 0.]);
        // Erasing e_y zeroes the middle column.
        let erased = EditKind::Erase { u: u.shallow_clone() }.apply(&h());
        assert_eq!(
            Vec::<f32>::try_from(erased.reshape([-1])).unwrap(),
            [1., 0., 3., 4., 0., 6., 7., 0., 9., 10., 0., 12.]
        );
        // Steering by 0 changes nothing; by 2 adds 2 to the middle column.
        let zero = EditKind::Steer { u: u.shallow_clone(), alpha: 0.0 }.apply(&h());
        assert!(zero.equal(&h()));
        let two = EditKind::Steer { u: u.shallow_clone(), alpha: 2.0 }.apply(&h());
        assert_eq!(two.double_value(&[1, 0, 1]), 10.0);
        // The affine form with down = up = u, mu = 0 is the erase.
        let affine = EditKind::Affine {
            mu: Tensor::zeros([3], (Kind::Float, Device::Cpu)),
            down: u.view([3, 1]),
            up: u.view([3, 1]),
        };
        assert!(affine.apply(&h()).equal(&erased));
        // Positions: only [0, 1] and [1, 0] are edited.
        let edit = Edit {
            layers: [1].into(),
            positions: Some(Tensor::from_slice(&[false, true, true, false]).view([2, 2])),
            kind: EditKind::Erase { u },
        };
        let mut cap = Capture::new(SiteRequest { resid: [0, 1].into(), ..Default::default() }).with_edit(edit);
        assert!(cap.stream(0, h()).equal(&h()), "layer 0 is not edited");
        let out = cap.stream(1, h());
        assert_eq!(
            Vec::<f32>::try_from(out.reshape([-1])).unwrap(),
            [1., 2., 3., 4., 0., 6., 7., 0., 9., 10., 11., 12.]
        );
        assert!(cap.resid[&1].equal(&out), "the hook keeps the edited stream");
    }
}
