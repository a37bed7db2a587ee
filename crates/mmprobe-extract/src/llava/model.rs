//! LLaVA as transformers' `LlavaForConditionalGeneration`: the CLIP vision
//! tower, the multi-modal projector and a Llama decoder, one struct per HF
//! module with the checkpoint's names (module paths are the canonical layout;
//! `load.rs` maps other layouts onto them).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{FeatureSelect, LlamaConfig, LlavaConfig};
use crate::capture::{Captured, SiteRequest};
use crate::clip::Activation;
use crate::clip::model::ClipVisionTransformer;

fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    nn::linear(p, i, o, nn::LinearConfig { bias, ..Default::default() })
}

pub struct LlamaRmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl LlamaRmsNorm {
    fn new(p: nn::Path, d: i64, eps: f64) -> Self {
        LlamaRmsNorm { weight: p.var("weight", &[d], nn::Init::Const(1.0)), eps }
    }

    /// Normalised in f32, scaled in the input's dtype (as transformers).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (x32 * (var + self.eps).rsqrt()).to_kind(kind)
    }
}

/// Rotary embeddings: cos and sin [B, T, head_dim] for each row's positions.
pub struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    fn new(c: &LlamaConfig, device: tch::Device) -> Result<Self, String> {
        let (kind, theta, factor) = c.rope();
        let dim = c.head_dim();
        let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Float, device)) / dim as f64;
        let mut inv_freq = Tensor::from(theta).to_device(device).pow(&exps).reciprocal();
        match kind.as_str() {
            "default" => {}
            // Positions divided by the factor.
            "linear" => inv_freq /= factor,
            other => return Err(format!("rope type '{other}' is not supported (default, linear)")),
        }
        Ok(Rotary { inv_freq })
    }

    fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}

pub struct LlamaAttention {
    pub q_proj: nn::Linear,
    pub k_proj: nn::Linear,
    pub v_proj: nn::Linear,
    pub o_proj: nn::Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl LlamaAttention {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        let (d, hd, h, kv) = (c.hidden_size, c.head_dim(), c.num_attention_heads, c.kv_heads());
        let b = c.attention_bias;
        LlamaAttention {
            q_proj: linear(&p / "q_proj", d, h * hd, b),
            k_proj: linear(&p / "k_proj", d, kv * hd, b),
            v_proj: linear(&p / "v_proj", d, kv * hd, b),
            o_proj: linear(&p / "o_proj", h * hd, d, b),
            heads: h,
            kv_heads: kv,
            head_dim: hd,
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, allowed: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("hidden states are [batch, tokens, width]");
        let split = |y: Tensor, n: i64| y.view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(x), self.heads);
        let k = split(self.k_proj.forward(x), self.kv_heads);
        let v = split(self.v_proj.forward(x), self.kv_heads);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = &q * &cos + rotate_half(&q) * &sin;
        let k = &k * &cos + rotate_half(&k) * &sin;
        // Grouped-query attention: each key/value head serves heads / kv_heads query heads.
        let groups = self.heads / self.kv_heads;
        let (k, v) = if groups > 1 {
            (k.repeat_interleave_self_int(groups, 1, None), v.repeat_interleave_self_int(groups, 1, None))
        } else {
            (k, v)
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed), 0.0, false, scale, false);
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, t, self.heads * self.head_dim]))
    }
}

pub struct LlamaMlp {
    pub gate_proj: nn::Linear,
    pub up_proj: nn::Linear,
    pub down_proj: nn::Linear,
    act: Activation,
}

impl LlamaMlp {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        let (d, i, b) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        LlamaMlp {
            gate_proj: linear(&p / "gate_proj", d, i, b),
            up_proj: linear(&p / "up_proj", d, i, b),
            down_proj: linear(&p / "down_proj", i, d, b),
            act: c.hidden_act,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.act.apply(&self.gate_proj.forward(x)) * self.up_proj.forward(x)))
    }
}

pub struct LlamaDecoderLayer {
    pub self_attn: LlamaAttention,
    pub mlp: LlamaMlp,
    pub input_layernorm: LlamaRmsNorm,
    pub post_attention_layernorm: LlamaRmsNorm,
}

impl LlamaDecoderLayer {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        LlamaDecoderLayer {
            self_attn: LlamaAttention::new(&p / "self_attn", c),
            mlp: LlamaMlp::new(&p / "mlp", c),
            input_layernorm: LlamaRmsNorm::new(&p / "input_layernorm", c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm: LlamaRmsNorm::new(&p / "post_attention_layernorm", c.hidden_size, c.rms_norm_eps),
        }
    }
}

/// transformers' `LlamaModel` (no head).
pub struct LlamaModel {
    pub embed_tokens: nn::Embedding,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: LlamaRmsNorm,
    rotary: Rotary,
}

impl LlamaModel {
    fn new(p: nn::Path, c: &LlamaConfig) -> Result<Self, String> {
        let lp = &p / "layers";
        Ok(LlamaModel {
            embed_tokens: nn::embedding(&p / "embed_tokens", c.vocab_size, c.hidden_size, Default::default()),
            layers: (0..c.num_hidden_layers).map(|i| LlamaDecoderLayer::new(&lp / i, c)).collect(),
            norm: LlamaRmsNorm::new(&p / "norm", c.hidden_size, c.rms_norm_eps),
            rotary: Rotary::new(c, p.device())?,
        })
    }
}

pub struct LlavaMultiModalProjector {
    pub linear_1: nn::Linear,
    pub linear_2: nn::Linear,
    act: Activation,
}

impl LlavaMultiModalProjector {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.act.apply(&self.linear_1.forward(x)))
    }
}

/// What one decoder forward pass returns besides the captured sites.
pub struct DecoderOut {
    pub captured: Captured,
    /// The residual stream after every layer, before the final norm
    /// (index 0 = input embeddings), for the logit lens.
    pub raw_resid: Vec<(usize, Tensor)>,
}

/// transformers' `LlavaForConditionalGeneration`.
pub struct LlavaModel {
    pub vision_tower: ClipVisionTransformer,
    pub multi_modal_projector: LlavaMultiModalProjector,
    pub language_model: LlamaModel,
    /// `None` when tied to the input embeddings.
    pub lm_head: Option<nn::Linear>,
    pub config: LlavaConfig,
    feature_layers: Vec<usize>,
}

impl LlavaModel {
    /// Declares every parameter under canonical names: `vision_tower.*` (CLIP
    /// vision transformer keys), `multi_modal_projector.*`, `language_model.*`
    /// (Llama model keys) and `lm_head.*`.
    pub fn new(p: nn::Path, c: &LlavaConfig) -> Result<Self, String> {
        let feature_layers = c.feature_layers()?;
        let t = &c.text_config;
        if t.num_attention_heads % t.kv_heads() != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads,
                t.kv_heads()
            ));
        }
        if c.image_seq_length != c.image_features() {
            return Err(format!(
                "image_seq_length {} differs from the {} features the vision tower gives per image",
                c.image_seq_length,
                c.image_features()
            ));
        }
        let in_dim = c.vision_config.hidden_size * feature_layers.len() as i64;
        let mp = &p / "multi_modal_projector";
        let bias = c.multimodal_projector_bias;
        Ok(LlavaModel {
            vision_tower: ClipVisionTransformer::new(&p / "vision_tower", &c.vision_config),
            multi_modal_projector: LlavaMultiModalProjector {
                linear_1: linear(&mp / "linear_1", in_dim, t.hidden_size, bias),
                linear_2: linear(&mp / "linear_2", t.hidden_size, t.hidden_size, bias),
                act: c.projector_hidden_act,
            },
            language_model: LlamaModel::new(&p / "language_model", t)?,
            lm_head: (!c.tied()).then(|| linear(&p / "lm_head", t.hidden_size, t.vocab_size, false)),
            config: c.clone(),
            feature_layers,
        })
    }

    /// The vision tower with the requested sites kept, and the projected
    /// image features [B, image_seq_length, D].
    pub fn encode_image(&self, pixel_values: &Tensor, req: &SiteRequest) -> (Captured, Tensor) {
        let (cap, feats) = self.vision_features(pixel_values, req);
        (cap, self.multi_modal_projector.forward(&feats))
    }

    /// The vision tower with the requested sites kept, and the selected
    /// feature layers concatenated [B, image_seq_length, layers x width],
    /// before the projector (a frozen tower's part of `encode_image`).
    pub fn vision_features(&self, pixel_values: &Tensor, req: &SiteRequest) -> (Captured, Tensor) {
        let mut vreq = req.clone();
        vreq.resid.extend(self.feature_layers.iter().copied());
        let (mut cap, _pooled) = self.vision_tower.forward(pixel_values, &vreq);
        let feats: Vec<Tensor> = self
            .feature_layers
            .iter()
            .map(|l| {
                let h = &cap.resid[l];
                match self.config.vision_feature_select_strategy {
                    FeatureSelect::Default => h.narrow(1, 1, h.size()[1] - 1),
                    FeatureSelect::Full => h.shallow_clone(),
                }
            })
            .collect();
        let feats = Tensor::cat(&feats, -1);
        cap.resid.retain(|l, _| req.resid.contains(l));
        cap.pooled = None;
        (cap, feats)
    }

    /// The decoder over a padded batch. `input_ids`/`attention_mask` [B, T];
    /// `image_features` [N_img, F, D] fill the image-token positions in
    /// row-major order. Each row's positions count from its first real token,
    /// so a row's states do not depend on padding side or neighbours.
    pub fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        image_features: Option<&Tensor>,
        req: &SiteRequest,
        raw_layers: &[usize],
    ) -> DecoderOut {
        let lm = &self.language_model;
        let (b, t) = input_ids.size2().expect("input_ids are [batch, tokens]");
        let device = input_ids.device();
        let image = input_ids.eq(self.config.image_token_index);
        // The image token may lie outside the embedding table; its rows are replaced anyway.
        let ids = input_ids.masked_fill(&image, 0);
        let mut x = lm.embed_tokens.forward(&ids);
        if let Some(f) = image_features {
            let f = f.to_kind(x.kind()).reshape([-1, x.size()[2]]);
            x = x.masked_scatter(&image.unsqueeze(-1), &f);
        }
        let valid = attention_mask.ne(0);
        let positions = (valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let (cos, sin) = lm.rotary.cos_sin(&positions, x.kind());
        let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0).view([1, 1, t, t]);
        // Padding queries see themselves only, so no row is all -inf (NaN would
        // leak through the zero weights of real queries on padding keys).
        let eye = Tensor::eye(t, (Kind::Bool, device)).view([1, 1, t, t]);
        let allowed = causal.logical_and(&valid.view([b, 1, 1, t])).logical_or(&eye);

        let mut out = DecoderOut { captured: Captured::default(), raw_resid: Vec::new() };
        let n = lm.layers.len();
        let keep = |l: usize, h: &Tensor, out: &mut DecoderOut| {
            if raw_layers.contains(&l) {
                out.raw_resid.push((l, h.shallow_clone()));
            }
            // transformers' hidden_states[N] is after the final norm.
            if l < n {
                out.captured.keep_resid(req, l, h);
            } else if req.resid.contains(&l) {
                out.captured.resid.insert(l, lm.norm.forward(h));
            }
        };
        keep(0, &x, &mut out);
        let mut h = x;
        for (i, layer) in lm.layers.iter().enumerate() {
            let attn = layer.self_attn.forward(&layer.input_layernorm.forward(&h), &cos, &sin, &allowed);
            let mid = &h + &attn;
            let mlp = layer.mlp.forward(&layer.post_attention_layernorm.forward(&mid));
            h = &mid + &mlp;
            out.captured.keep_sublayers(req, i + 1, &attn, &mlp);
            keep(i + 1, &h, &mut out);
        }
        out
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
