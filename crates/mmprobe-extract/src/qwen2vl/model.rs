//! Qwen2-VL and Qwen2.5-VL as transformers runs them: the vision transformer
//! (Conv3d patch embedding as one GEMM, 2-D rotary, per-image attention, and
//! for 2.5-VL window attention outside `fullatt_block_indexes`), the 2x2
//! patch merger, and the Qwen2 decoder (a Llama with q/k/v bias) under
//! multimodal rotary positions. One struct per HF module, fields named after
//! the checkpoint keys; module paths are the canonical layout (`visual.*`,
//! `language_model.*`, `lm_head.*`), `load.rs` maps the files' onto them.
//!
//! Vision states are rows [patches, width] over every image of a batch,
//! concatenated in `pixel_values` order (per image: 2x2 merge blocks in
//! raster order); 2.5-VL runs its blocks in window order and reports them put
//! back in that order.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::config::{Qwen2VlConfig, Version, VisionConfig};
use super::processor::patch_cells;
use crate::capture::Capture;
use crate::layers::{Activation, Linear, RmsNorm, layer_norm, linear, rotate_half};
use crate::llama::{LlamaModel, Rotary};

/// A block's normalisation: LayerNorm (2-VL) or RMSNorm (2.5-VL), eps 1e-6.
pub enum Norm {
    Layer(nn::LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(p: nn::Path, d: i64, version: Version) -> Self {
        match version {
            Version::Qwen2Vl => Norm::Layer(layer_norm(p, d, 1e-6)),
            Version::Qwen25Vl => Norm::Rms(RmsNorm::new(p, d, 1e-6)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// `patch_embed`: a Conv3d without bias whose kernel is its stride, on rows
/// already cut to one kernel each: one GEMM.
pub struct PatchEmbed {
    /// `proj.weight` [width, channels, temporal, patch, patch].
    pub proj: Tensor,
}

impl PatchEmbed {
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let d = self.proj.size()[0];
        pixel_values.to_kind(self.proj.kind()).matmul(&self.proj.reshape([d, -1]).tr())
    }
}

pub struct VisionAttention {
    pub qkv: Linear,
    pub proj: Linear,
    heads: i64,
    head_dim: i64,
}

impl VisionAttention {
    /// `x` [N, width]; `cos`/`sin` [N, head_dim] f32; attention within each `(start, len)` segment.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[(i64, i64)]) -> Tensor {
        let n = x.size()[0];
        let qkv = self.qkv.forward(x).reshape([n, 3, self.heads, self.head_dim]).permute([1, 0, 2, 3]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let rot = |t: &Tensor| {
            let t32 = t.to_kind(Kind::Float);
            (&t32 * &cos + rotate_half(&t32) * &sin).to_kind(t.kind())
        };
        // [heads, N, head_dim]
        let (q, k, v) = (rot(&q).transpose(0, 1), rot(&k).transpose(0, 1), v.transpose(0, 1));
        let scale = (self.head_dim as f64).powf(-0.5);
        let outs: Vec<Tensor> = segments
            .iter()
            .map(|&(s, l)| {
                let part = |t: &Tensor| t.narrow(1, s, l).unsqueeze(0);
                Tensor::scaled_dot_product_attention(
                    &part(&q),
                    &part(&k),
                    &part(&v),
                    None::<&Tensor>,
                    0.0,
                    false,
                    scale,
                    false,
                )
                .squeeze_dim(0)
            })
            .collect();
        let y = Tensor::cat(&outs, 1).transpose(0, 1).reshape([n, self.heads * self.head_dim]);
        self.proj.forward(&y)
    }
}

/// 2-VL: `fc2(act(fc1 x))`; 2.5-VL: `down_proj(act(gate_proj x) * up_proj x)`; all with bias.
pub enum VisionMlp {
    Plain { fc1: Linear, fc2: Linear, act: Activation },
    Gated { gate_proj: Linear, up_proj: Linear, down_proj: Linear, act: Activation },
}

impl VisionMlp {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            VisionMlp::Plain { fc1, fc2, act } => fc2.forward(&act.apply(&fc1.forward(x))),
            VisionMlp::Gated { gate_proj, up_proj, down_proj, act } => {
                down_proj.forward(&(act.apply(&gate_proj.forward(x)) * up_proj.forward(x)))
            }
        }
    }
}

pub struct VisionBlock {
    pub norm1: Norm,
    pub norm2: Norm,
    pub attn: VisionAttention,
    pub mlp: VisionMlp,
}

impl VisionBlock {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        let (d, h) = (c.width, c.mlp_hidden);
        let mp = &p / "mlp";
        let mlp = match c.version {
            Version::Qwen2Vl => VisionMlp::Plain {
                fc1: linear(&mp / "fc1", d, h, true),
                fc2: linear(&mp / "fc2", h, d, true),
                act: c.hidden_act,
            },
            Version::Qwen25Vl => VisionMlp::Gated {
                gate_proj: linear(&mp / "gate_proj", d, h, true),
                up_proj: linear(&mp / "up_proj", d, h, true),
                down_proj: linear(&mp / "down_proj", h, d, true),
                act: c.hidden_act,
            },
        };
        let ap = &p / "attn";
        VisionBlock {
            norm1: Norm::new(&p / "norm1", d, c.version),
            norm2: Norm::new(&p / "norm2", d, c.version),
            attn: VisionAttention {
                qkv: linear(&ap / "qkv", d, 3 * d, true),
                proj: linear(&ap / "proj", d, d, true),
                heads: c.num_heads,
                head_dim: c.head_dim(),
            },
            mlp,
        }
    }

    /// The residual stream after the block, with its attention and MLP outputs.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[(i64, i64)]) -> (Tensor, Tensor, Tensor) {
        let attn = self.attn.forward(&self.norm1.forward(x), cos, sin, segments);
        let mid = x + &attn;
        let mlp = self.mlp.forward(&self.norm2.forward(&mid));
        (&mid + &mlp, attn, mlp)
    }
}

/// `merger`: norm, four consecutive rows (one 2x2 block) concatenated, MLP with exact GELU.
pub struct PatchMerger {
    pub ln_q: Norm,
    pub mlp_0: Linear,
    pub mlp_2: Linear,
    width: i64,
}

impl PatchMerger {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.ln_q.forward(x).reshape([-1, 4 * self.width]);
        self.mlp_2.forward(&self.mlp_0.forward(&h).gelu("none"))
    }
}

/// How one batch of images runs through the tower: rows, segments, windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisionPlan {
    /// (row, col) patch cell of each row, pixel_values order.
    pub cells: Vec<(i64, i64)>,
    /// Per-image (start, length) row segments.
    pub images: Vec<(i64, i64)>,
    /// 2.5-VL: the merged-token order of the window-ordered sequence.
    pub window_index: Vec<i64>,
    /// 2.5-VL: (start, length) row segments of the windows, in window order, none empty.
    pub windows: Vec<(i64, i64)>,
}

impl VisionPlan {
    /// For images of `grids` (t, h, w); `window` = window side in merged tokens (2.5-VL), else `None`.
    pub fn new(grids: &[[i64; 3]], window: Option<i64>) -> Self {
        let mut plan =
            VisionPlan { cells: Vec::new(), images: Vec::new(), window_index: Vec::new(), windows: Vec::new() };
        let (mut start, mut merged_offset) = (0i64, 0i64);
        for &g in grids {
            let n = g.iter().product::<i64>();
            plan.cells.extend(patch_cells(g, 2));
            plan.images.push((start, n));
            if let Some(ws) = window {
                let [t, h, w] = g;
                let (mh, mw) = (h / 2, w / 2);
                // Padded up to a whole number of windows (a whole extra one when divisible, empty, dropped).
                let (nwh, nww) = ((mh + ws - mh % ws) / ws, (mw + ws - mw % ws) / ws);
                let mut row_start = start;
                for f in 0..t {
                    for wy in 0..nwh {
                        for wx in 0..nww {
                            let mut len = 0;
                            for y in wy * ws..((wy + 1) * ws).min(mh) {
                                for x in wx * ws..((wx + 1) * ws).min(mw) {
                                    plan.window_index.push(merged_offset + f * mh * mw + y * mw + x);
                                    len += 4;
                                }
                            }
                            if len > 0 {
                                plan.windows.push((row_start, len));
                                row_start += len;
                            }
                        }
                    }
                }
                merged_offset += t * mh * mw;
            }
            start += n;
        }
        plan
    }
}

/// `visual`: the vision transformer and its merger.
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    pub blocks: Vec<VisionBlock>,
    pub merger: PatchMerger,
    pub config: VisionConfig,
    inv_freq: Tensor,
}

impl VisionTransformer {
    pub fn new(p: nn::Path, c: &VisionConfig) -> Self {
        let c = c.clone();
        let proj = (&p / "patch_embed" / "proj").var(
            "weight",
            &[c.width, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size],
            nn::Init::Const(0.0),
        );
        let bp = &p / "blocks";
        let mp = &p / "merger";
        let merged = 4 * c.width;
        // The 2-D rotary: head_dim / 4 frequencies each for rows and columns.
        let dim = c.head_dim() / 2;
        let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Float, p.device())) / dim as f64;
        let inv_freq = Tensor::full([], c.rope_theta, (Kind::Float, p.device())).pow(&exps).reciprocal();
        VisionTransformer {
            patch_embed: PatchEmbed { proj },
            blocks: (0..c.depth).map(|i| VisionBlock::new(&bp / i, &c)).collect(),
            merger: PatchMerger {
                ln_q: Norm::new(&mp / "ln_q", c.width, c.version),
                mlp_0: linear(&mp / "mlp" / 0, merged, merged, true),
                mlp_2: linear(&mp / "mlp" / 2, merged, c.out_width, true),
                width: c.width,
            },
            config: c,
            inv_freq,
        }
    }

    /// The bookkeeping of a batch of images.
    pub fn plan(&self, grids: &[[i64; 3]]) -> VisionPlan {
        let windowed = (0..self.config.depth).any(|i| self.config.windowed(i));
        VisionPlan::new(grids, windowed.then(|| self.config.window_merged()))
    }

    /// cos, sin [N, head_dim] f32 of the rows' (row, col) cells.
    fn rotary(&self, cells: &[(i64, i64)], device: Device) -> (Tensor, Tensor) {
        let rows: Vec<f32> = cells.iter().map(|c| c.0 as f32).collect();
        let cols: Vec<f32> = cells.iter().map(|c| c.1 as f32).collect();
        let inv = self.inv_freq.view([1, -1]);
        let r = Tensor::from_slice(&rows).to_device(device).view([-1, 1]) * &inv;
        let c = Tensor::from_slice(&cols).to_device(device).view([-1, 1]) * &inv;
        let emb = Tensor::cat(&[&r, &c, &r, &c], -1);
        (emb.cos(), emb.sin())
    }

    /// `pixel_values` [N, patch_len] of images `grids` through the tower; every
    /// site reported to `cap` as rows [N, width] in pixel_values order, the
    /// merger's output as `embeds`. Returns the merger's output [N / 4, out_width]:
    /// per image, merged tokens in raster order.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[i64; 3]], cap: &mut Capture) -> Tensor {
        let device = pixel_values.device();
        let plan = self.plan(grids);
        let n = pixel_values.size()[0];
        assert_eq!(n, plan.cells.len() as i64, "pixel_values rows and grid_thw agree");
        let x = self.patch_embed.forward(pixel_values);
        cap.resid(0, &x);
        let (cos, sin) = self.rotary(&plan.cells, device);
        // 2.5-VL: rows in window order (groups of four = one merged token), and back.
        let order = (!plan.window_index.is_empty()).then(|| {
            let wi = Tensor::from_slice(&plan.window_index).to_device(device);
            let back = wi.argsort(0, false);
            (wi, back)
        });
        let permute = |t: &Tensor, idx: &Tensor| {
            let d = t.size()[1];
            t.reshape([-1, 4, d]).index_select(0, idx).reshape([-1, d])
        };
        let (mut x, cos, sin) = match &order {
            Some((wi, _)) => (permute(&x, wi), permute(&cos, wi), permute(&sin, wi)),
            None => (x, cos, sin),
        };
        let natural = |t: &Tensor| match &order {
            Some((_, back)) => permute(t, back),
            None => t.shallow_clone(),
        };
        let req = cap.request().clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = if self.config.windowed(i) { &plan.windows } else { &plan.images };
            let (next, attn, mlp) = block.forward(&x, &cos, &sin, segments);
            x = next;
            let l = i + 1;
            if req.attn.contains(&l) || req.mlp.contains(&l) {
                cap.sublayers(l, &natural(&attn), &natural(&mlp));
            }
            if req.resid.contains(&l) || req.raw.contains(&l) {
                cap.resid(l, &natural(&x));
            }
        }
        let embeds = self.merger.forward(&natural(&x));
        if cap.wants_embeds() {
            cap.embeds = Some(embeds.shallow_clone());
        }
        embeds
    }
}

/// The multimodal rotary: the decoder's default rotary evaluated at the t,
/// h and w positions, its frequencies split by `mrope_section`.
pub struct MultimodalRotary {
    rotary: Rotary,
    section: [i64; 3],
}

impl MultimodalRotary {
    /// `position_ids` [3, B, T]: cos, sin [B, T, head_dim] in `kind`.
    pub fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let half: i64 = self.section.iter().sum();
        let pick = |tables: [Tensor; 3]| {
            let mut parts = Vec::with_capacity(6);
            for base in [0, half] {
                let mut off = base;
                for (axis, &s) in self.section.iter().enumerate() {
                    parts.push(tables[axis].narrow(-1, off, s));
                    off += s;
                }
            }
            Tensor::cat(&parts, -1).to_kind(kind)
        };
        let [t, h, w] = [0, 1, 2].map(|a| self.rotary.cos_sin(&position_ids.get(a), Kind::Float));
        let cos = pick([t.0.shallow_clone(), h.0.shallow_clone(), w.0.shallow_clone()]);
        let sin = pick([t.1, h.1, w.1]);
        (cos, sin)
    }
}

/// transformers' `get_rope_index` for images: over each row's real tokens,
/// text runs count on (t = h = w), an image run of grid (t, h, w) takes
/// (cur + t_idx, cur + row, cur + col) over its merged cells, then the count
/// goes on from cur + max(merged h, w, t). Padding gets 0. `ids`/`mask` are
/// [B, T] row-major; images are taken in order over the batch. Returns
/// [3, B, T] row-major and each row's `rope_delta` (max position + 1 - length).
pub fn rope_index(
    ids: &[i64],
    mask: &[i64],
    (b, t): (usize, usize),
    image_token_id: i64,
    grids: &[[i64; 3]],
) -> Result<(Vec<i64>, Vec<i64>), String> {
    let mut pos = vec![0i64; 3 * b * t];
    let mut deltas = Vec::with_capacity(b);
    let mut images = grids.iter();
    for r in 0..b {
        let real: Vec<usize> = (0..t).filter(|&j| mask[r * t + j] != 0).collect();
        let mut cur = 0i64;
        let mut max_pos = -1i64;
        let mut k = 0;
        while k < real.len() {
            let j = real[k];
            if ids[r * t + j] != image_token_id {
                for a in 0..3 {
                    pos[a * b * t + r * t + j] = cur;
                }
                max_pos = max_pos.max(cur);
                cur += 1;
                k += 1;
                continue;
            }
            let [gt, gh, gw] = *images.next().ok_or("more image tokens than images")?;
            let (mh, mw) = (gh / 2, gw / 2);
            let n = (gt * mh * mw) as usize;
            if k + n > real.len() || real[k..k + n].iter().any(|&jj| ids[r * t + jj] != image_token_id) {
                return Err(format!("row {r}: an image of {n} merged tokens has fewer image tokens in the prompt"));
            }
            for (i, &jj) in real[k..k + n].iter().enumerate() {
                let i = i as i64;
                let (f, rem) = (i / (mh * mw), i % (mh * mw));
                let vals = [cur + f, cur + rem / mw, cur + rem % mw];
                for (a, v) in vals.into_iter().enumerate() {
                    pos[a * b * t + r * t + jj] = v;
                    max_pos = max_pos.max(v);
                }
            }
            cur += gt.max(mh).max(mw);
            k += n;
        }
        deltas.push(max_pos + 1 - real.len() as i64);
    }
    if images.next().is_some() {
        return Err("more images than image-token runs in the prompts".into());
    }
    Ok((pos, deltas))
}

/// transformers' `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration`.
pub struct Qwen2VlModel {
    pub visual: VisionTransformer,
    pub language_model: LlamaModel,
    /// `None` when tied to the input embeddings.
    pub lm_head: Option<Linear>,
    pub config: Qwen2VlConfig,
    mrope: MultimodalRotary,
}

impl Qwen2VlModel {
    pub fn new(p: nn::Path, c: &Qwen2VlConfig) -> Result<Self, String> {
        let t = &c.text;
        Ok(Qwen2VlModel {
            visual: VisionTransformer::new(&p / "visual", &c.vision),
            language_model: LlamaModel::new(&p / "language_model", t)?,
            lm_head: (!c.tie_word_embeddings).then(|| linear(&p / "lm_head", t.hidden_size, t.vocab_size, false)),
            mrope: MultimodalRotary { rotary: Rotary::new(t, p.device())?, section: c.mrope_section },
            config: c.clone(),
        })
    }

    /// The vision tower (see [`VisionTransformer::forward`]).
    pub fn encode_images(&self, pixel_values: &Tensor, grids: &[[i64; 3]], cap: &mut Capture) -> Tensor {
        self.visual.forward(pixel_values, grids, cap)
    }

    /// Position ids [3, B, T] (int64, on `ids`' device) of a padded batch.
    pub fn position_ids(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        grids: &[[i64; 3]],
    ) -> Result<Tensor, String> {
        let (b, t) = input_ids.size2().map_err(|e| e.to_string())?;
        let cpu = |x: &Tensor| Vec::<i64>::try_from(x.to_device(Device::Cpu).to_kind(Kind::Int64).reshape([-1]));
        let ids = cpu(input_ids).map_err(|e| e.to_string())?;
        let mask = cpu(attention_mask).map_err(|e| e.to_string())?;
        let (pos, _) = rope_index(&ids, &mask, (b as usize, t as usize), self.config.image_token_id, grids)?;
        Ok(Tensor::from_slice(&pos).view([3, b, t]).to_device(input_ids.device()))
    }

    /// The decoder over a padded batch: `input_ids`/`attention_mask` [B, T],
    /// `position_ids` [3, B, T], `image_embeds` [M, D] filling the image-token
    /// positions in order. Returns the last residual stream before the final norm.
    pub fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        image_embeds: Option<&Tensor>,
        cap: &mut Capture,
    ) -> Tensor {
        let lm = &self.language_model;
        let image = input_ids.eq(self.config.image_token_id);
        let ids = input_ids.masked_fill(&image, 0);
        let mut x = lm.embed_tokens.forward(&ids);
        if let Some(f) = image_embeds {
            x = x.masked_scatter(&image.unsqueeze(-1), &f.to_kind(x.kind()));
        }
        let (cos, sin) = self.mrope.cos_sin(position_ids, x.kind());
        lm.forward_rotary(x, attention_mask, &cos, &sin, cap)
    }

    /// Next-token logits of residual-stream vectors [.., D]: final norm, then the head.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        let normed = self.language_model.norm.forward(h);
        match &self.lm_head {
            Some(head) => head.forward(&normed),
            None => normed.matmul(&self.language_model.embed_tokens.ws.tr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_each_image_once() {
        // Merged grid 3 x 2 with windows of 2: windows (rows 0-1) and (row 2), the
        // empty padded column dropped.
        let plan = VisionPlan::new(&[[1, 6, 4], [1, 4, 4]], Some(2));
        assert_eq!(plan.window_index, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(plan.windows, vec![(0, 16), (16, 8), (24, 16)]);
        assert_eq!(plan.images, vec![(0, 24), (24, 16)]);
        let plan = VisionPlan::new(&[[1, 4, 6]], Some(2));
        // merged 2 x 3: window 0 = cells (0,0),(0,1),(1,0),(1,1); window 1 = (0,2),(1,2)
        assert_eq!(plan.window_index, vec![0, 1, 3, 4, 2, 5]);
        assert_eq!(plan.windows, vec![(0, 16), (16, 8)]);
    }

    #[test]
    fn rope_index_counts_on_after_an_image() {
        // text, image of merged 2 x 3, text; one pad on the left.
        let ids = [0, 5, 9, 9, 9, 9, 9, 9, 6];
        let mask = [0, 1, 1, 1, 1, 1, 1, 1, 1];
        let (pos, d) = rope_index(&ids, &mask, (1, 9), 9, &[[1, 4, 6]]).unwrap();
        assert_eq!(&pos[..9], &[0, 0, 1, 1, 1, 1, 1, 1, 4]);
        assert_eq!(&pos[9..18], &[0, 0, 1, 1, 1, 2, 2, 2, 4]);
        assert_eq!(&pos[18..], &[0, 0, 1, 2, 3, 1, 2, 3, 4]);
        assert_eq!(d, vec![5 - 8]);
    }
}
