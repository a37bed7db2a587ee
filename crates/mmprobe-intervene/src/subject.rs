//! The model under intervention: a CLIP dual encoder or a LLaVA, loaded the
//! way extraction loads it, with one forward per kind of measurement. Each
//! forward takes the intervention (or none) and can keep one downstream
//! residual layer, pooled as the store pools it, for the amnesic probe.

use std::path::Path;

use mmprobe_extract::clip::LoadedClip;
use mmprobe_extract::llava::generate::{self, DecoderHook};
use mmprobe_extract::llava::prompt::PromptToken;
use mmprobe_extract::llava::{LoadedLlava, PromptTokenizer};
use mmprobe_extract::preprocess::ImageProcessor;
use mmprobe_extract::select::{self, SequenceLayout};
use mmprobe_extract::siglip::LoadedSiglip;
use mmprobe_extract::tokenize::TextTokenizer;
use mmprobe_extract::{Capture, DType, Edit, EditKind, ModelDir, ModelInfo, SiteRequest};
use mmprobe_store::{Selector, Tower};
use ndarray::Array2;
use tch::{Device, Kind, Tensor};

use crate::error::{InterveneError, Result};
use crate::params::Positions;

/// One fitted edit at one layer of one tower.
pub struct Intervention {
    pub tower: Tower,
    pub layer: usize,
    pub positions: Positions,
    pub kind: EditKind,
}

impl Intervention {
    fn edit(&self, positions: Option<Tensor>) -> Edit {
        Edit { layers: [self.layer].into(), positions, kind: self.kind.shallow_clone() }
    }

    /// The edit for a vision pass of `batch` images of `tokens` positions.
    fn vision_edit(&self, batch: i64, tokens: i64) -> Edit {
        let mask = (self.positions == Positions::Cls).then(|| {
            let m = Tensor::zeros([batch, tokens], (Kind::Bool, Device::Cpu));
            let _ = m.narrow(1, 0, 1).fill_(1);
            m
        });
        self.edit(mask)
    }

    /// The edit for a decoder pass over `ids`, `mask` [B, T] (left padded).
    /// `last_from` [B]: each row's last prompt position; `last` edits it and
    /// every position after it (the answer predicted from there), else the
    /// sequence's last position.
    fn decoder_edit(&self, ids: &Tensor, mask: &Tensor, image_token: i64, last_from: Option<&Tensor>) -> Edit {
        let valid = mask.ne(0);
        let image = ids.eq(image_token);
        let m = match self.positions {
            Positions::Image => valid.logical_and(&image),
            Positions::Text => valid.logical_and(&image.logical_not()),
            Positions::Last => {
                let t = valid.size()[1];
                let col = Tensor::arange(t, (Kind::Int64, valid.device())).unsqueeze(0);
                let from = match last_from {
                    Some(f) => f.to_device(valid.device()).unsqueeze(1),
                    None => Tensor::full([valid.size()[0], 1], t - 1, (Kind::Int64, valid.device())),
                };
                valid.logical_and(&col.ge_tensor(&from))
            }
            Positions::All | Positions::Cls => valid,
        };
        self.edit(Some(m))
    }

    fn on(&self, tower: Tower) -> bool {
        self.tower == tower
    }
}

/// The residual layer whose pooled rows a pass keeps, and how they are pooled.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub layer: usize,
    pub selector: Selector,
}

/// A dual encoder's model.
pub enum Dual {
    Clip(LoadedClip),
    Siglip(LoadedSiglip),
}

pub struct DualSubject {
    pub model: Dual,
    pub tokenizer: TextTokenizer,
}

pub struct LlavaSubject {
    pub loaded: LoadedLlava,
    /// Pads on the left: generation appends at the end.
    pub tokenizer: PromptTokenizer,
    /// Generation stops at any of these.
    pub eos: Vec<i64>,
}

pub enum Model {
    /// A dual encoder: CLIP or SigLIP.
    Dual(Box<DualSubject>),
    Llava(Box<LlavaSubject>),
}

pub struct Subject {
    pub info: ModelInfo,
    pub processor: ImageProcessor,
    pub model: Model,
    pub device: Device,
    pub dtype: DType,
    /// sha256 of its config.json, as a store's manifest records the model it came from.
    pub config_sha256: String,
}

fn pooled(h: &Tensor, keep: Keep, layout: &SequenceLayout) -> Result<Array2<f64>> {
    let rows = select::select(h, keep.selector, layout)
        .ok_or_else(|| InterveneError::Input(format!("selector {} does not apply here", keep.selector)))?;
    let n = rows.sample.len();
    let x = Array2::from_shape_vec((n, rows.width), rows.data.into_iter().map(f64::from).collect())
        .map_err(|e| InterveneError::Input(e.to_string()))?;
    Ok(x)
}

fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}

impl Subject {
    /// Loads a CLIP, SigLIP or LLaVA checkpoint on `device` in `dtype`, with
    /// the tokenizer and image processor extraction uses; other families are
    /// refused in one line. `allow_tf32` as extraction's `--allow-tf32`.
    pub fn open(dir: &Path, device: Device, dtype: DType, allow_tf32: bool) -> Result<Subject> {
        let md = ModelDir::open(dir)?;
        let family = mmprobe_extract::family::open(&md)?;
        let info = family.info().clone();
        let towers: Vec<Tower> = info.towers.iter().map(|t| t.tower).collect();
        let tools = family.inputs(&md, &towers, true)?;
        let missing = |what: &str| InterveneError::Input(format!("{}: the family gives no {what}", dir.display()));
        let processor = tools.images.ok_or_else(|| missing("image processor"))?;
        let model = match md.model_type.as_str() {
            "clip" => Model::Dual(Box::new(DualSubject {
                model: Dual::Clip({
                    let mut m = LoadedClip::load(dir, device, dtype)?;
                    m.set_allow_tf32(allow_tf32);
                    m
                }),
                tokenizer: tools.text.ok_or_else(|| missing("text tokenizer"))?,
            })),
            "siglip" => Model::Dual(Box::new(DualSubject {
                model: Dual::Siglip({
                    let mut m = LoadedSiglip::load(dir, device, dtype)?;
                    m.set_allow_tf32(allow_tf32);
                    m
                }),
                tokenizer: tools.text.ok_or_else(|| missing("text tokenizer"))?,
            })),
            "llava" => {
                let mut loaded = LoadedLlava::load(dir, device, dtype)?;
                loaded.set_allow_tf32(allow_tf32);
                let mut tokenizer = tools.prompts.ok_or_else(|| missing("prompt tokenizer"))?;
                tokenizer.left_padding = true;
                let eos = eos_ids(&md, &tokenizer);
                if eos.is_empty() {
                    return Err(InterveneError::Input(format!(
                        "{}: no eos_token_id in text_config or generation_config.json and no </s> token: \
                         generation cannot stop",
                        dir.display()
                    )));
                }
                Model::Llava(Box::new(LlavaSubject { loaded, tokenizer, eos }))
            }
            other => {
                return Err(InterveneError::Input(format!(
                    "{}: model_type '{other}': interventions are wired for clip, siglip and llava checkpoints",
                    dir.display()
                )));
            }
        };
        let config_sha256 = mmprobe_store::manifest::sha256_bytes(&md.config_bytes);
        Ok(Subject { info, processor, model, device, dtype, config_sha256 })
    }

    /// The vision tower on `pixels` [B, 3, H, W]: CLIP's unit image embeddings
    /// [B, P] or LLaVA's projected image features [B, F, D]; and, with
    /// `keep`, that vision layer's pooled rows.
    pub fn vision(
        &self,
        pixels: &Tensor,
        edit: Option<&Intervention>,
        keep: Option<Keep>,
    ) -> Result<(Tensor, Option<Array2<f64>>)> {
        let b = pixels.size()[0];
        let (tokens, has_cls) = match &self.model {
            Model::Dual(c) => match &c.model {
                Dual::Clip(m) => (m.model.config.vision_config.num_patches() + 1, true),
                Dual::Siglip(m) => (m.model.config.vision_config.num_patches(), false),
            },
            Model::Llava(l) => {
                let v = &l.loaded.model.config.vision_config;
                (v.tokens(), v.has_cls())
            }
        };
        let mut request = SiteRequest { embeds: matches!(self.model, Model::Dual(_)), ..Default::default() };
        if let Some(k) = keep {
            request.resid.insert(k.layer);
        }
        let mut cap = Capture::new(request);
        if let Some(e) = edit.filter(|e| e.on(Tower::Vision)) {
            cap = cap.with_edit(e.vision_edit(b, tokens));
        }
        let out = tch::no_grad(|| match &self.model {
            Model::Dual(c) => {
                match &c.model {
                    Dual::Clip(m) => m.model.encode_image(pixels, &mut cap),
                    Dual::Siglip(m) => m.model.encode_image(pixels, &mut cap),
                }
                cap.embeds.as_ref().map(unit)
            }
            Model::Llava(l) => Some(l.loaded.model.encode_image(pixels, &mut cap)),
        });
        let out = out.ok_or_else(|| {
            InterveneError::Input("this SigLIP has no vision head (vision_use_head false): no image embeddings".into())
        })?;
        let kept = match keep {
            Some(k) => {
                let layout = if has_cls {
                    SequenceLayout::vision(b, tokens, self.device)
                } else {
                    SequenceLayout::patches(b, tokens, self.device)
                };
                Some(pooled(&cap.resid[&k.layer], k, &layout)?)
            }
            None => None,
        };
        Ok((out, kept))
    }

    /// CLIP's text tower on `texts`: unit embeddings [B, P], and with `keep`
    /// that text layer's pooled rows.
    pub fn text(
        &self,
        texts: &[&str],
        edit: Option<&Intervention>,
        keep: Option<Keep>,
    ) -> Result<(Tensor, Option<Array2<f64>>)> {
        let Model::Dual(c) = &self.model else {
            return Err(InterveneError::Input("only a dual encoder has a text tower to embed with".into()));
        };
        let batch = c.tokenizer.encode_batch(texts)?;
        let mut request = SiteRequest::embeds();
        if let Some(k) = keep {
            request.resid.insert(k.layer);
        }
        let mut cap = Capture::new(request);
        if let Some(e) = edit.filter(|e| e.on(Tower::Text)) {
            // A tower that gets no mask attends to, and pools at, its padding: every position is its own.
            let unmasked = matches!(&c.model, Dual::Siglip(m) if !m.text_mask);
            cap = cap.with_edit(e.edit((!unmasked).then(|| batch.attention_mask.ne(0))));
        }
        let (ids, mask) = (&batch.input_ids.to_device(self.device), &batch.attention_mask.to_device(self.device));
        tch::no_grad(|| match &c.model {
            Dual::Clip(m) => m.model.encode_text(ids, mask, &mut cap),
            Dual::Siglip(m) => m.model.encode_text(ids, m.text_mask.then_some(mask), &mut cap),
        });
        let e = unit(cap.embeds.as_ref().expect("asked for embeds"));
        let kept = match keep {
            Some(k) => {
                let eos = cap.pool_positions.take().expect("text towers say where they pool");
                let layout = SequenceLayout::text(mask, eos);
                Some(pooled(&cap.resid[&k.layer], k, &layout)?)
            }
            None => None,
        };
        Ok((e, kept))
    }

    /// Token ids and mask on the model's device.
    fn on_device(&self, ids: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
        (ids.to_device(self.device), mask.to_device(self.device))
    }

    /// The LLaVA parts, or a one-line refusal for a dual encoder.
    pub fn llava(&self) -> Result<&LlavaSubject> {
        match &self.model {
            Model::Llava(l) => Ok(l),
            Model::Dual(_) => Err(InterveneError::Input("a CLIP checkpoint has no decoder to answer with".into())),
        }
    }

    /// Each pass's capture, with the decoder edit; `last_from` as [`Intervention::decoder_edit`].
    fn decoder_hook<'a>(
        &'a self,
        edit: Option<&'a Intervention>,
        request: SiteRequest,
        last_from: Option<Tensor>,
    ) -> Box<DecoderHook<'a>> {
        let image_token = self.llava().map(|l| l.loaded.model.config.image_token_index).unwrap_or(-1);
        Box::new(move |ids: &Tensor, mask: &Tensor| {
            let cap = Capture::new(request.clone());
            match edit.filter(|e| e.on(Tower::Decoder)) {
                Some(e) => cap.with_edit(e.decoder_edit(ids, mask, image_token, last_from.as_ref())),
                None => cap,
            }
        })
    }

    /// Refuses a prompt whose tokens hold no image or more than one (their
    /// features would fill another row's image positions).
    fn check_one_image(&self, prompt: &str, tokens: &[PromptToken]) -> Result<()> {
        let l = self.llava()?;
        let n = tokens.iter().filter(|t| t.image).count();
        if n != l.tokenizer.image_seq_length {
            return Err(InterveneError::Input(format!(
                "prompt '{prompt}' has {} image tokens: a LLaVA prompt needs exactly one <image>",
                n / l.tokenizer.image_seq_length.max(1)
            )));
        }
        Ok(())
    }

    /// Prompts as a left-padded batch on the model's device, each checked to hold one image.
    fn prompt_batch(&self, prompts: &[String]) -> Result<(Tensor, Tensor)> {
        let l = self.llava()?;
        let rows = prompts
            .iter()
            .map(|p| {
                let t = l.tokenizer.encode(p)?;
                self.check_one_image(p, &t)?;
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = l.tokenizer.pad(rows);
        Ok(self.on_device(&batch.input_ids, &batch.attention_mask))
    }

    /// Greedy answers (decoded text, special tokens skipped) to one prompt per image.
    pub fn answers(
        &self,
        image: &Tensor,
        prompts: &[String],
        max_new: usize,
        edit: Option<&Intervention>,
    ) -> Result<Vec<String>> {
        let l = self.llava()?;
        let (input_ids, mask) = self.prompt_batch(prompts)?;
        // Left padding: every prompt's last token is at the same column.
        let last = Tensor::full([input_ids.size()[0]], input_ids.size()[1] - 1, (Kind::Int64, Device::Cpu));
        let mut hook = self.decoder_hook(edit, SiteRequest::default(), Some(last));
        let ids = generate::greedy(&l.loaded.model, &input_ids, &mask, image, &l.eos, max_new, &mut *hook)?;
        ids.iter().map(|row| Ok(l.tokenizer.decode(&row.iter().map(|&i| i as u32).collect::<Vec<_>>())?)).collect()
    }

    /// Per prompt, the log-probability of its answer (the tokens `prompt answer`
    /// has beyond `prompt`); `None` where the answer's tokens do not extend the prompt's.
    pub fn answer_log_probs(
        &self,
        image: &Tensor,
        prompts: &[String],
        answers: &[String],
        edit: Option<&Intervention>,
    ) -> Result<Vec<Option<f64>>> {
        let l = self.llava()?;
        let mut rows = Vec::with_capacity(prompts.len());
        let mut scored_from = Vec::with_capacity(prompts.len());
        for (p, a) in prompts.iter().zip(answers) {
            let head = l.tokenizer.encode(p)?;
            let full = l.tokenizer.encode(&format!("{p} {a}"))?;
            self.check_one_image(&format!("{p} {a}"), &full)?;
            let extends = full.len() > head.len() && full[..head.len()] == head[..];
            scored_from.push(extends.then_some(head.len()));
            rows.push(full);
        }
        let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        let batch = l.tokenizer.pad(rows);
        let t = batch.input_ids.size()[1] as usize;
        let mut scored = vec![false; prompts.len() * t];
        // Each row's last prompt position: `last` edits there and after.
        let mut last = vec![t as i64 - 1; prompts.len()];
        for (i, (&len, from)) in lens.iter().zip(&scored_from).enumerate() {
            // Left padding (the tokenizer was set to it on loading): row i's token j sits at t - len + j.
            let at = |j: usize| t - len + j;
            if let Some(from) = from {
                for j in *from..len {
                    scored[i * t + at(j)] = true;
                }
                last[i] = at(*from - 1) as i64;
            }
        }
        let scored = Tensor::from_slice(&scored).view([prompts.len() as i64, t as i64]).to_device(self.device);
        let (input_ids, mask) = self.on_device(&batch.input_ids, &batch.attention_mask);
        let mut hook = self.decoder_hook(edit, SiteRequest::default(), Some(Tensor::from_slice(&last)));
        let lp = generate::scored_log_prob(&l.loaded.model, &input_ids, &mask, image, &scored, &mut *hook)?;
        Ok(lp.into_iter().zip(&scored_from).map(|(v, f)| f.map(|_| v)).collect())
    }

    /// The decoder over `prompts` with the image features, keeping layer `keep` pooled.
    pub fn decoder_rows(
        &self,
        image: &Tensor,
        prompts: &[String],
        edit: Option<&Intervention>,
        keep: Keep,
    ) -> Result<Array2<f64>> {
        let l = self.llava()?;
        let (ids, mask) = self.prompt_batch(prompts)?;
        let request = SiteRequest { resid: [keep.layer].into(), ..Default::default() };
        let mut hook = self.decoder_hook(edit, request, None);
        let mut cap = hook(&ids, &mask);
        let _ = tch::no_grad(|| l.loaded.model.decode(&ids, &mask, Some(image), &mut cap));
        let image_mask = ids.eq(l.loaded.model.config.image_token_index);
        let layout = SequenceLayout::decoder(&mask, image_mask);
        pooled(&cap.resid[&keep.layer], keep, &layout)
    }
}

/// The decoder's end-of-sequence ids: text_config's `eos_token_id` (one or a
/// list), generation_config.json's, else the tokenizer's `</s>`.
fn eos_ids(md: &ModelDir, tok: &PromptTokenizer) -> Vec<i64> {
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        match v {
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_i64()).collect(),
            v => v.as_i64().into_iter().collect(),
        }
    };
    let generation: serde_json::Value = std::fs::read(md.dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = ids(&md.config_value["text_config"]["eos_token_id"]);
    out.extend(ids(&generation["eos_token_id"]));
    if out.is_empty() {
        out.extend(tok.token_to_id("</s>").map(i64::from));
    }
    out.sort_unstable();
    out.dedup();
    out
}
