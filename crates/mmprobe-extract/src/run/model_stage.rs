//! The model stage: prepared batches through the model, selected rows to
//! the writer, the logit lens beside them.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender};

use mmprobe_store::Partition;
use mmprobe_store::logit_lens::LensRow;
use mmprobe_store::{Selector, Site, Tower};
use tch::{Device, Tensor};

use super::inputs::Prepared;
use super::writer::ToWriter;
use super::{Busy, ProgressSink};
use crate::capture::SiteRequest;
use crate::error::{ExtractError, Result};
use crate::family::{LoadedModel, TowerStates};
use crate::plan::ExtractionPlan;
use crate::select::{Picked, Rows, SequenceLayout, pick, pick_pooled, to_cpu_rows};

/// The logit lens settings of a run: the top `k` tokens, named by `tokenizer`.
pub(super) struct Lens<'a> {
    pub k: usize,
    pub tokenizer: &'a (dyn Fn(u32) -> Option<String> + Sync),
}

/// What the model stage counted.
#[derive(Default)]
pub(super) struct Counts {
    pub rows_written: usize,
    pub failed: usize,
    pub truncated: usize,
    /// At work, and waiting for batches.
    pub time: Busy,
    /// Waiting for the writer (its `waiting`).
    pub to_writer: Busy,
}

/// The model stage of a run.
pub(super) struct ModelStage<'a> {
    pub model: &'a dyn LoadedModel,
    /// The store's plan (its selectors name the logit lens rows).
    pub plan: &'a ExtractionPlan,
    /// The partitions this run fills.
    pub partitions: &'a [Partition],
    pub lens: Option<Lens<'a>>,
    pub device: Device,
    pub progress: &'a dyn ProgressSink,
}

impl ModelStage<'_> {
    /// Runs every batch from `rx`, sending rows to `tx`. `permits` is owned,
    /// so that however this loop ends the loader's wait for a permit ends too.
    pub fn run(
        &self,
        rx: Receiver<Result<Prepared>>,
        tx: &SyncSender<ToWriter>,
        permits: SyncSender<()>,
        buffers: Option<SyncSender<Tensor>>,
        counts: &mut Counts,
    ) -> Result<()> {
        let requests = self.requests();
        while let Ok(prepared) = counts.time.wait(|| rx.recv()) {
            let b = prepared?;
            counts.failed += if b.chunk_end { b.failures.len() } else { 0 };
            counts.truncated += b.truncated;
            if !b.samples.is_empty() {
                let (rows, mut lens_rows) = counts
                    .time
                    .work(|| guarded(|| tch::no_grad(|| self.forward(&b, &requests))))
                    .map_err(|message| ExtractError::Forward {
                        first: b.samples[0],
                        last: b.samples[b.samples.len() - 1],
                        message,
                    })?;
                if !lens_rows.is_empty() {
                    lens_rows.iter_mut().for_each(|r| r.sample = b.samples[r.sample as usize]);
                    if counts.to_writer.wait(|| tx.send(ToWriter::Lens(b.chunk, lens_rows))).is_err() {
                        return Ok(());
                    }
                }
                let mut rows = rows;
                for (_, part) in &mut rows {
                    // Batch positions -> dataset rows.
                    part.sample.iter_mut().for_each(|i| *i = b.samples[*i as usize]);
                    counts.rows_written += part.len();
                }
                if counts.to_writer.wait(|| tx.send(ToWriter::Rows(b.chunk, rows))).is_err() {
                    return Ok(()); // the writer stopped; its error is reported
                }
            }
            // The pixels were copied without blocking: the device must have read them before the buffer is refilled.
            if let (Some(tx), Some(buf)) = (&buffers, b.buffer) {
                if let Device::Cuda(i) = self.device {
                    tch::Cuda::synchronize(i as i64);
                }
                let _ = tx.try_send(buf);
            }
            let _ = permits.try_send(());
            if b.chunk_end && counts.to_writer.wait(|| tx.send(ToWriter::ChunkDone(b.chunk, b.failures))).is_err() {
                return Ok(());
            }
            self.progress.advance(b.seen);
        }
        Ok(())
    }

    fn requests(&self) -> BTreeMap<Tower, SiteRequest> {
        site_requests(self.partitions, self.lens.is_some())
    }

    fn forward(&self, b: &Prepared, requests: &BTreeMap<Tower, SiteRequest>) -> (Vec<(Partition, Rows)>, Vec<LensRow>) {
        let towers = self.model.forward(&b.batch, requests, self.device);
        let mut lens_rows = Vec::new();
        let mut out = Vec::new();
        for TowerStates { tower, capture: cap, layout, embeds_layout } in &towers {
            if let (Some(lens), Tower::Decoder) = (&self.lens, tower) {
                lens_rows = self.logit_lens(&cap.raw, layout, lens);
            }
            for p in self.partitions.iter().filter(|p| p.tower == *tower) {
                let rows = match p.site {
                    Site::Embeds => match embeds_layout {
                        Some(l) => cap.embeds.as_ref().and_then(|e| pick(e, p.selector, l)),
                        None => cap.embeds.as_ref().map(pick_pooled),
                    },
                    Site::Resid => cap.resid.get(&p.layer).and_then(|h| pick(h, p.selector, layout)),
                    Site::Attn => cap.attn.get(&p.layer).and_then(|h| pick(h, p.selector, layout)),
                    Site::Mlp => cap.mlp.get(&p.layer).and_then(|h| pick(h, p.selector, layout)),
                };
                if let Some(r) = rows {
                    out.push((*p, r));
                }
            }
        }
        let (parts, picked): (Vec<Partition>, Vec<Picked>) = out.into_iter().unzip();
        (parts.into_iter().zip(to_cpu_rows(picked)).collect(), lens_rows)
    }

    /// Top-k next tokens of each selected residual vector (every selector but
    /// `all`, whose rows are positions, not samples). `sample` is the batch row.
    fn logit_lens(&self, raw: &BTreeMap<usize, Tensor>, layout: &SequenceLayout, lens: &Lens) -> Vec<LensRow> {
        let mut rows = Vec::new();
        for (layer, h) in raw {
            let selectors = self.plan.selectors.iter().filter(|s| **s != Selector::All);
            for &sel in selectors.filter(|s| s.fits(Tower::Decoder, Site::Resid)) {
                let Some(picked) = pick(h, sel, layout) else { continue };
                // Mean selectors average in f32; the head runs in the model's dtype.
                let Some(logits) = self.model.logits(&picked.rows.to_kind(h.kind())) else { return rows };
                let logits = logits.to_kind(tch::Kind::Float);
                let k = (lens.k as i64).min(logits.size()[1]);
                let (values, ids) = logits.topk(k, -1, true, true);
                let values = Vec::<f32>::try_from(values.to_device(Device::Cpu).reshape([-1])).unwrap_or_default();
                let ids = Vec::<i64>::try_from(ids.to_device(Device::Cpu).reshape([-1])).unwrap_or_default();
                for (r, &sample) in picked.sample.iter().enumerate() {
                    for rank in 0..k as usize {
                        let id = ids[r * k as usize + rank];
                        rows.push(LensRow {
                            sample,
                            layer: *layer as u32,
                            selector: sel.to_string(),
                            rank: rank as u32 + 1,
                            token_id: id,
                            token: (lens.tokenizer)(id as u32).unwrap_or_default(),
                            logit: values[r * k as usize + rank],
                        });
                    }
                }
            }
        }
        rows
    }
}

/// The sites each filled tower keeps, and with the logit lens the decoder's
/// raw streams; a tower whose every partition is `cls` (or the pooled embeds,
/// which the tower itself pools) reads its states at position 0 alone.
fn site_requests(partitions: &[Partition], lens: bool) -> BTreeMap<Tower, SiteRequest> {
    let mut out: BTreeMap<Tower, SiteRequest> = BTreeMap::new();
    for p in partitions {
        let req = out.entry(p.tower).or_insert_with(|| SiteRequest { first_token_only: true, ..Default::default() });
        match p.site {
            Site::Resid => _ = req.resid.insert(p.layer),
            Site::Attn => _ = req.attn.insert(p.layer),
            Site::Mlp => _ = req.mlp.insert(p.layer),
            Site::Embeds => req.embeds = true,
        }
        let at_first = match p.site {
            Site::Embeds => p.selector == Selector::Pooled,
            _ => p.selector == Selector::Cls,
        };
        req.first_token_only &= at_first;
    }
    if let (true, Some(req)) = (lens, out.get_mut(&Tower::Decoder)) {
        req.raw = req.resid.clone();
    }
    out
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic (tch panics on any libtorch error) into its
/// message's first line; the panic hook stays quiet meanwhile, so the user
/// sees one line and not libtorch's trace.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    r.map_err(|payload| {
        let text = match (payload.downcast_ref::<String>(), payload.downcast_ref::<&str>()) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.to_string(),
            _ => "a panic without a message".into(),
        };
        text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tower_read_at_cls_alone_says_so() {
        let part = |tower, site, layer, selector| Partition { tower, site, layer, selector };
        let cls = |layer| part(Tower::Vision, Site::Resid, layer, Selector::Cls);
        let embeds = part(Tower::Vision, Site::Embeds, 0, Selector::Pooled);
        let eos = part(Tower::Text, Site::Resid, 2, Selector::Eos);
        let reqs = site_requests(&[cls(0), cls(12), embeds, eos], false);
        assert!(reqs[&Tower::Vision].first_token_only);
        assert_eq!(reqs[&Tower::Vision].resid, [0, 12].into());
        assert!(reqs[&Tower::Vision].embeds);
        assert!(!reqs[&Tower::Text].first_token_only, "eos is not position 0");
        for other in [
            part(Tower::Vision, Site::Resid, 3, Selector::Mean),
            part(Tower::Vision, Site::Mlp, 12, Selector::All),
            part(Tower::Vision, Site::Embeds, 0, Selector::Mean),
        ] {
            let reqs = site_requests(&[cls(12), embeds, other], false);
            assert!(!reqs[&Tower::Vision].first_token_only, "{other}");
        }
        let lens = site_requests(&[part(Tower::Decoder, Site::Resid, 4, Selector::Last)], true);
        assert_eq!(lens[&Tower::Decoder].raw, [4].into());
    }

    #[test]
    fn a_libtorch_panic_becomes_its_first_line() {
        let e = guarded(|| {
            Tensor::zeros([2, 3], (tch::Kind::Float, Device::Cpu))
                .matmul(&Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)))
        })
        .unwrap_err();
        assert!(!e.contains('\n') && e.contains("Torch"), "{e}");
        assert_eq!(guarded(|| 7), Ok(7));
    }
}
