//! Llama as transformers' `LlamaModel`: one struct per HF module, fields
//! named after the checkpoint keys (under `model.` in a `LlamaForCausalLM`).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::LlamaConfig;
use crate::capture::Capture;
use crate::layers::{Activation, Linear, RmsNorm, embedding, linear, rotate_half};

/// Rotary embeddings: cos and sin [B, T, head_dim] for each row's positions.
pub struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    pub fn new(c: &LlamaConfig, device: tch::Device) -> Result<Self, String> {
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

    /// `positions` [B, T] (any integer kind).
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl LlamaAttention {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        let (d, hd, h, kv) = (c.hidden_size, c.head_dim(), c.num_attention_heads, c.kv_heads());
        let b = c.attention_bias;
        let qkv = b || c.qkv_bias;
        LlamaAttention {
            q_proj: linear(&p / "q_proj", d, h * hd, qkv),
            k_proj: linear(&p / "k_proj", d, kv * hd, qkv),
            v_proj: linear(&p / "v_proj", d, kv * hd, qkv),
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
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
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
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl LlamaDecoderLayer {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        LlamaDecoderLayer {
            self_attn: LlamaAttention::new(&p / "self_attn", c),
            mlp: LlamaMlp::new(&p / "mlp", c),
            input_layernorm: RmsNorm::new(&p / "input_layernorm", c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", c.hidden_size, c.rms_norm_eps),
        }
    }

    /// The residual stream after the layer, with its attention and MLP outputs.
    fn forward(&self, h: &Tensor, cos: &Tensor, sin: &Tensor, allowed: &Tensor) -> (Tensor, Tensor, Tensor) {
        let attn = self.self_attn.forward(&self.input_layernorm.forward(h), cos, sin, allowed);
        let mid = h + &attn;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&mid));
        (&mid + &mlp, attn, mlp)
    }
}

/// transformers' `LlamaModel` (no head).
pub struct LlamaModel {
    pub embed_tokens: nn::Embedding,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: RmsNorm,
    rotary: Rotary,
}

impl LlamaModel {
    pub fn new(p: nn::Path, c: &LlamaConfig) -> Result<Self, String> {
        if c.num_attention_heads % c.kv_heads() != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_attention_heads,
                c.kv_heads()
            ));
        }
        let lp = &p / "layers";
        Ok(LlamaModel {
            embed_tokens: embedding(&p / "embed_tokens", c.vocab_size, c.hidden_size),
            layers: (0..c.num_hidden_layers).map(|i| LlamaDecoderLayer::new(&lp / i, c)).collect(),
            norm: RmsNorm::new(&p / "norm", c.hidden_size, c.rms_norm_eps),
            rotary: Rotary::new(c, p.device())?,
        })
    }

    /// The decoder over a padded batch of input embeddings [B, T, D] with
    /// `attention_mask` [B, T] (padding on either side), every site reported
    /// to `cap`. Each row's positions count from its first real token, so a
    /// row's states depend neither on the padding side nor on its neighbours.
    /// Returns the last residual stream, before the final norm.
    pub fn forward(&self, inputs_embeds: Tensor, attention_mask: &Tensor, cap: &mut Capture) -> Tensor {
        let valid = attention_mask.ne(0);
        let positions = (valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let (cos, sin) = self.rotary.cos_sin(&positions, inputs_embeds.kind());
        self.forward_rotary(inputs_embeds, attention_mask, &cos, &sin, cap)
    }

    /// [`LlamaModel::forward`] with the rotary tables given: `cos`/`sin`
    /// [B, T, head_dim] in the embeddings' dtype (a multimodal rotary such as
    /// Qwen2-VL's computes its own from its position ids).
    pub fn forward_rotary(
        &self,
        inputs_embeds: Tensor,
        attention_mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cap: &mut Capture,
    ) -> Tensor {
        let (b, t, _) = inputs_embeds.size3().expect("input embeddings are [batch, tokens, width]");
        let device = inputs_embeds.device();
        let valid = attention_mask.ne(0);
        let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0).view([1, 1, t, t]);
        // Padding queries see themselves only, so no row is all -inf (NaN would
        // leak through the zero weights of real queries on padding keys).
        let eye = Tensor::eye(t, (Kind::Bool, device)).view([1, 1, t, t]);
        let allowed = causal.logical_and(&valid.view([b, 1, 1, t])).logical_or(&eye);

        let n = self.layers.len();
        let mut h = match n {
            0 => cap.stream_normed(0, inputs_embeds, |h| self.norm.forward(h)),
            _ => cap.stream(0, inputs_embeds),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let (next, attn, mlp) = layer.forward(&h, cos, sin, &allowed);
            cap.sublayers(i + 1, &attn, &mlp);
            h = match i + 1 < n {
                true => cap.stream(i + 1, next),
                // transformers' hidden_states[N] is after the final norm.
                false => cap.stream_normed(n, next, |h| self.norm.forward(h)),
            };
        }
        h
    }
}
