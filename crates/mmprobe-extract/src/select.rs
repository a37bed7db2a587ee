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
}

impl SequenceLayout {
    /// A vision tower: every position valid, CLS at 0, patches after it.
    pub fn vision(batch: i64, tokens: i64, device: Device) -> Self {
        let valid = Tensor::ones([batch, tokens], (Kind::Bool, device));
        let content = valid.copy();
        let _ = content.narrow(1, 0, 1).fill_(0);
        SequenceLayout { valid, content, eos: None, has_cls: true }
    }

    /// A text tower: attention mask [B, T] (1 = token) and the pooled positions.
    pub fn text(attention_mask: &Tensor, eos: Tensor) -> Self {
        let valid = attention_mask.ne(0);
        SequenceLayout { content: valid.shallow_clone(), valid, eos: Some(eos), has_cls: false }
    }

    /// Index of the last real token of each row.
    fn last(&self) -> Tensor {
        self.valid.to_kind(Kind::Int64).sum_dim_intlist(1, false, Kind::Int64) - 1
    }
}

/// Rows for one (site, layer, selector) of one batch, on the CPU, as the
/// store's rows: `sample` holds each row's index *within the batch* until
/// the caller maps it to dataset rows.
pub type Rows = PartRows;

fn to_rows(t: &Tensor, sample: Vec<u32>, pos: Vec<i32>) -> Rows {
    let width = t.size().last().copied().unwrap_or(0) as usize;
    let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let n = t.numel();
    let mut data = vec![0f32; n];
    t.copy_data(&mut data, n);
    PartRows { width, sample, pos, data }
}

fn positions(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64)).unwrap_or_default()
}

/// One row per sequence, gathered at a position each.
fn gather(h: &Tensor, pos: &Tensor) -> Rows {
    let d = h.size()[2];
    let rows = h.gather(1, &pos.view([-1, 1, 1]).expand([-1, 1, d], false), false).squeeze_dim(1);
    let p = positions(pos);
    to_rows(&rows, (0..p.len() as u32).collect(), p.into_iter().map(|x| x as i32).collect())
}

/// Applies a selector to a [B, T, D] hidden state. `None` when the selector
/// does not apply to this layout (e.g. `eos` on a vision tower).
pub fn select(h: &Tensor, selector: Selector, layout: &SequenceLayout) -> Option<Rows> {
    let b = h.size()[0];
    match selector {
        Selector::Cls if layout.has_cls => Some(gather(h, &Tensor::zeros([b], (Kind::Int64, h.device())))),
        Selector::Eos => layout.eos.as_ref().map(|e| gather(h, e)),
        Selector::Last if !layout.has_cls => Some(gather(h, &layout.last())),
        Selector::Mean => {
            let m = layout.content.to_kind(Kind::Float).unsqueeze(-1);
            let sum = (h.to_kind(Kind::Float) * &m).sum_dim_intlist(1, false, Kind::Float);
            let rows = sum / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
            Some(to_rows(&rows, (0..b as u32).collect(), vec![-1; b as usize]))
        }
        Selector::All => {
            let t = h.size()[1];
            let flat = layout.valid.reshape([-1]).nonzero().squeeze_dim(1);
            let rows = h.reshape([b * t, -1]).index_select(0, &flat);
            let idx = positions(&flat);
            let sample = idx.iter().map(|i| (i / t) as u32).collect();
            let pos = idx.iter().map(|i| (i % t) as i32).collect();
            Some(to_rows(&rows, sample, pos))
        }
        _ => None,
    }
}

/// A pooled [B, D] output (`embeds`) as rows with position -1.
pub fn pooled(e: &Tensor) -> Rows {
    let b = e.size()[0];
    to_rows(e, (0..b as u32).collect(), vec![-1; b as usize])
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
    fn vision_mean_skips_cls() {
        let layout = SequenceLayout::vision(2, 3, Device::Cpu);
        let h = hidden();
        assert_eq!(select(&h, Selector::Cls, &layout).unwrap().data, vec![0., 0., 10., 10.]);
        assert_eq!(select(&h, Selector::Mean, &layout).unwrap().data, vec![1.5, 1.5, 11.5, 11.5]);
        assert_eq!(select(&h, Selector::All, &layout).unwrap().len(), 6);
        assert!(select(&h, Selector::Eos, &layout).is_none());
    }
}
