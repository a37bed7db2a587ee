//! Selectors: how a [batch, tokens, width] hidden state becomes stored rows.
//! Reduced on the model's device, then copied to the CPU as f32, so only the
//! rows asked for leave the device.

use mmprobe_store::{PartRows, Selector};
use tch::{Device, Kind, Tensor};

/// Which positions of each sequence in a batch mean what.
pub struct SequenceLayout {
    /// [B, T] bool: real tokens (not padding); the `all` rows.
    pub valid: Tensor,
    /// [B, T] bool: the tokens `mean` averages (patches without CLS; text without padding).
    pub content: Tensor,
    /// [B] int64: the position a text tower pools at (`eos`).
    pub eos: Option<Tensor>,
    /// Whether position 0 is a CLS token (`cls`).
    pub has_cls: bool,
    /// Decoder: [B, T] bool, the image-token positions (`mean_image`; the rest of `valid` is `mean_text`).
    pub image: Option<Tensor>,
    /// [B] int64: padded index of each row's first token (left padding), subtracted from stored positions.
    pub offset: Option<Tensor>,
}

impl SequenceLayout {
    /// A vision tower: every position valid, CLS at 0, patches after it.
    pub fn vision(batch: i64, tokens: i64, device: Device) -> Self {
        let valid = Tensor::ones([batch, tokens], (Kind::Bool, device));
        let content = valid.copy();
        let _ = content.narrow(1, 0, 1).fill_(0);
        SequenceLayout { valid, content, eos: None, has_cls: true, image: None, offset: None }
    }

    /// A vision tower without a CLS token (SigLIP): every position a patch,
    /// all of them valid and averaged by `mean`; `cls` does not apply.
    pub fn patches(batch: i64, tokens: i64, device: Device) -> Self {
        let valid = Tensor::ones([batch, tokens], (Kind::Bool, device));
        SequenceLayout { content: valid.copy(), valid, eos: None, has_cls: false, image: None, offset: None }
    }

    /// Inputs of `counts` rows each, padded to the most (Qwen2-VL's images of
    /// their own sizes): each input's rows valid and averaged by `mean`.
    pub fn ragged(counts: &[i64], device: Device) -> Self {
        let most = counts.iter().copied().max().unwrap_or(0);
        let valid: Vec<bool> = counts.iter().flat_map(|&n| (0..most).map(move |j| j < n)).collect();
        let valid = Tensor::from_slice(&valid).view([counts.len() as i64, most]).to_device(device);
        SequenceLayout { content: valid.shallow_clone(), valid, eos: None, has_cls: false, image: None, offset: None }
    }

    /// A text tower: attention mask [B, T] (1 = token) and the pooled positions.
    pub fn text(attention_mask: &Tensor, eos: Tensor) -> Self {
        let valid = attention_mask.ne(0);
        SequenceLayout {
            content: valid.shallow_clone(),
            valid,
            eos: Some(eos),
            has_cls: false,
            image: None,
            offset: None,
        }
    }

    /// A decoder: attention mask [B, T] (padding on either side) and the image-token mask.
    pub fn decoder(attention_mask: &Tensor, image: Tensor) -> Self {
        let valid = attention_mask.ne(0);
        let offset = valid.to_kind(Kind::Int).argmax(1, false);
        SequenceLayout {
            content: valid.shallow_clone(),
            valid,
            eos: None,
            has_cls: false,
            image: Some(image),
            offset: Some(offset),
        }
    }

    /// Padded index of the last real token of each row.
    fn last(&self) -> Tensor {
        let t = self.valid.size()[1];
        let idx = Tensor::arange(t, (Kind::Int64, self.valid.device())).unsqueeze(0);
        (idx * self.valid.to_kind(Kind::Int64)).argmax(1, false)
    }

    /// Stored positions: padded indices minus each row's left padding.
    fn unpad(&self, rows: &[u32], padded: Vec<i64>) -> Vec<i32> {
        let offsets = self.offset.as_ref().map(positions).unwrap_or_default();
        padded.into_iter().zip(rows).map(|(p, &r)| (p - offsets.get(r as usize).copied().unwrap_or(0)) as i32).collect()
    }

    /// The positions a mean selector averages.
    fn mean_mask(&self, selector: Selector) -> Option<Tensor> {
        match (selector, &self.image) {
            (Selector::Mean, _) => Some(self.content.shallow_clone()),
            (Selector::MeanImage, Some(img)) => Some(self.valid.logical_and(img)),
            (Selector::MeanText, Some(img)) => Some(self.valid.logical_and(&img.logical_not())),
            _ => None,
        }
    }
}

/// Rows for one (site, layer, selector) of one batch, on the CPU, as the
/// store's rows: `sample` holds each row's index *within the batch* until
/// the caller maps it to dataset rows.
pub type Rows = PartRows;

/// Selected rows still on the model's device, with their batch rows and positions.
pub struct Picked {
    pub rows: Tensor,
    pub sample: Vec<u32>,
    pub pos: Vec<i32>,
}

impl Picked {
    /// Copied to the CPU as f32 store rows.
    pub fn into_rows(self) -> Rows {
        let width = self.rows.size().last().copied().unwrap_or(0) as usize;
        let t = self.rows.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let n = t.numel();
        let mut data = vec![0f32; n];
        t.copy_data(&mut data, n);
        PartRows { width, sample: self.sample, pos: self.pos, data }
    }
}

fn positions(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64)).unwrap_or_default()
}

/// One row per sequence, gathered at a position each.
fn gather(h: &Tensor, pos: &Tensor, layout: &SequenceLayout) -> Picked {
    let d = h.size()[2];
    let rows = h.gather(1, &pos.view([-1, 1, 1]).expand([-1, 1, d], false), false).squeeze_dim(1);
    let sample: Vec<u32> = (0..h.size()[0] as u32).collect();
    let pos = layout.unpad(&sample, positions(pos));
    Picked { rows, sample, pos }
}

/// Applies a selector to a [B, T, D] hidden state, leaving the rows on the
/// device. `None` when the selector does not apply to this layout (e.g. `eos`
/// on a vision tower).
pub fn pick(h: &Tensor, selector: Selector, layout: &SequenceLayout) -> Option<Picked> {
    let (b, t) = (h.size()[0], h.size()[1]);
    // A state cut to its first position (a last layer run at CLS alone) is read by `cls` only;
    // `mean` would broadcast over it and store the CLS vector as a mean.
    let positions_in_layout = layout.valid.size()[1];
    assert!(
        selector == Selector::Cls || t == positions_in_layout,
        "the {selector} selector got a state of {t} positions where the sequence has {positions_in_layout}"
    );
    match selector {
        Selector::Cls if layout.has_cls => Some(gather(h, &Tensor::zeros([b], (Kind::Int64, h.device())), layout)),
        Selector::Eos => layout.eos.as_ref().map(|e| gather(h, e, layout)),
        Selector::Last if !layout.has_cls => Some(gather(h, &layout.last(), layout)),
        Selector::Mean | Selector::MeanImage | Selector::MeanText => {
            let m = layout.mean_mask(selector)?.to_kind(Kind::Float).unsqueeze(-1);
            let sum = (h.to_kind(Kind::Float) * &m).sum_dim_intlist(1, false, Kind::Float);
            let rows = sum / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
            Some(Picked { rows, sample: (0..b as u32).collect(), pos: vec![-1; b as usize] })
        }
        Selector::All => {
            let flat = layout.valid.reshape([-1]).nonzero().squeeze_dim(1);
            let rows = h.reshape([b * t, -1]).index_select(0, &flat);
            let idx = positions(&flat);
            let sample: Vec<u32> = idx.iter().map(|i| (i / t) as u32).collect();
            let pos = layout.unpad(&sample, idx.iter().map(|i| i % t).collect());
            Some(Picked { rows, sample, pos })
        }
        _ => None,
    }
}

/// Many partitions' picked rows to the CPU as store rows with one copy: the
/// rows are gathered (as f32) into one device buffer first, so a batch costs
/// one device-to-host transfer, not one per partition.
pub fn to_cpu_rows(picked: Vec<Picked>) -> Vec<Rows> {
    // On the CPU there is no transfer to save, only copies to add.
    if picked.first().is_none_or(|p| p.rows.device() == Device::Cpu) {
        return picked.into_iter().map(Picked::into_rows).collect();
    }
    one_transfer(picked)
}

/// [`to_cpu_rows`] through one buffer, wherever the rows are: one transfer
/// to the host, then each partition's rows copied once into its own vector.
fn one_transfer(picked: Vec<Picked>) -> Vec<Rows> {
    if picked.is_empty() {
        return Vec::new();
    }
    let flat: Vec<Tensor> = picked.iter().map(|p| p.rows.to_kind(Kind::Float).reshape([-1])).collect();
    let all = Tensor::cat(&flat, 0).to_device(Device::Cpu).contiguous();
    let mut start = 0;
    picked
        .into_iter()
        .zip(flat)
        .map(|(p, f)| {
            let width = p.rows.size().last().copied().unwrap_or(0) as usize;
            let n = f.numel();
            let mut data = vec![0f32; n];
            all.narrow(0, start as i64, n as i64).copy_data(&mut data, n);
            start += n;
            PartRows { width, sample: p.sample, pos: p.pos, data }
        })
        .collect()
}

/// [`pick`], copied to the CPU as store rows.
pub fn select(h: &Tensor, selector: Selector, layout: &SequenceLayout) -> Option<Rows> {
    pick(h, selector, layout).map(Picked::into_rows)
}

/// A pooled [B, D] output (`embeds`) as rows with position -1, on the device.
pub fn pick_pooled(e: &Tensor) -> Picked {
    let b = e.size()[0];
    Picked { rows: e.shallow_clone(), sample: (0..b as u32).collect(), pos: vec![-1; b as usize] }
}

/// A pooled [B, D] output (`embeds`) as rows with position -1.
pub fn pooled(e: &Tensor) -> Rows {
    pick_pooled(e).into_rows()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden() -> Tensor {
        // [2, 3, 2]: value = 10 * batch + position, twice.
        let v: Vec<f32> = (0..2).flat_map(|b| (0..3).flat_map(move |t| [(10 * b + t) as f32; 2])).collect();
        Tensor::from_slice(&v).view([2, 3, 2])
    }

    #[test]
    fn text_selectors_skip_padding() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
        let layout = SequenceLayout::text(&mask, Tensor::from_slice(&[2i64, 1]));
        let h = hidden();
        assert_eq!(select(&h, Selector::Eos, &layout).unwrap().data, vec![2., 2., 11., 11.]);
        assert_eq!(select(&h, Selector::Last, &layout).unwrap().pos, vec![2, 1]);
        assert_eq!(select(&h, Selector::Mean, &layout).unwrap().data, vec![1., 1., 10.5, 10.5]);
        let all = select(&h, Selector::All, &layout).unwrap();
        assert_eq!((all.sample, all.pos), (vec![0, 0, 0, 1, 1], vec![0, 1, 2, 0, 1]));
        assert!(select(&h, Selector::Cls, &layout).is_none());
    }

    #[test]
    fn one_copy_gives_each_partition_its_rows() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
        let layout = SequenceLayout::text(&mask, Tensor::from_slice(&[2i64, 1]));
        let h = hidden();
        let sels = [Selector::Eos, Selector::All, Selector::Mean, Selector::Last];
        for convert in [one_transfer, to_cpu_rows] {
            let picked: Vec<Picked> = sels.iter().map(|&s| pick(&h, s, &layout).unwrap()).collect();
            for (s, rows) in sels.iter().zip(convert(picked)) {
                assert_eq!(rows, select(&h, *s, &layout).unwrap(), "{s}");
            }
            assert!(convert(Vec::new()).is_empty());
        }
    }

    #[test]
    fn vision_mean_skips_cls() {
        let layout = SequenceLayout::vision(2, 3, Device::Cpu);
        let h = hidden();
        assert_eq!(select(&h, Selector::Cls, &layout).unwrap().data, vec![0., 0., 10., 10.]);
        assert_eq!(select(&h, Selector::Mean, &layout).unwrap().data, vec![1.5, 1.5, 11.5, 11.5]);
        assert_eq!(select(&h, Selector::All, &layout).unwrap().len(), 6);
        assert!(select(&h, Selector::Eos, &layout).is_none());
    }

    #[test]
    fn a_state_cut_to_cls_is_read_by_cls_alone() {
        let layout = SequenceLayout::vision(2, 3, Device::Cpu);
        let cut = hidden().narrow(1, 0, 1);
        let cls = select(&cut, Selector::Cls, &layout).unwrap();
        assert_eq!((cls.pos, cls.data), (vec![0, 0], vec![0., 0., 10., 10.]));
        for other in [Selector::Mean, Selector::All] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| select(&cut, other, &layout)));
            assert!(r.is_err(), "{other} on a cut state is refused, not a mean of CLS alone");
        }
    }

    #[test]
    fn patch_towers_have_no_cls_and_mean_every_patch() {
        let layout = SequenceLayout::patches(2, 3, Device::Cpu);
        let h = hidden();
        assert!(select(&h, Selector::Cls, &layout).is_none());
        assert_eq!(select(&h, Selector::Mean, &layout).unwrap().data, vec![1., 1., 11., 11.]);
        let all = select(&h, Selector::All, &layout).unwrap();
        assert_eq!((all.sample, all.pos), (vec![0, 0, 0, 1, 1, 1], vec![0, 1, 2, 0, 1, 2]));
    }

    #[test]
    fn decoder_positions_ignore_left_padding() {
        // Row 0: one pad then 2 tokens (image, text); row 1: 3 tokens (image, text, text).
        let mask = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1]).view([2, 3]);
        let image = Tensor::from_slice(&[false, true, false, true, false, false]).view([2, 3]);
        let layout = SequenceLayout::decoder(&mask, image);
        let h = hidden();
        let last = select(&h, Selector::Last, &layout).unwrap();
        assert_eq!((last.pos, last.data), (vec![1, 2], vec![2., 2., 12., 12.]));
        let all = select(&h, Selector::All, &layout).unwrap();
        assert_eq!((all.sample, all.pos), (vec![0, 0, 1, 1, 1], vec![0, 1, 0, 1, 2]));
        assert_eq!(select(&h, Selector::MeanImage, &layout).unwrap().data, vec![1., 1., 10., 10.]);
        assert_eq!(select(&h, Selector::MeanText, &layout).unwrap().data, vec![2., 2., 11.5, 11.5]);
        assert!(select(&h, Selector::Cls, &layout).is_none());
    }
}
