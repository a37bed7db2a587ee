//! CLIP as transformers' `CLIPModel`: one struct per HF module, fields named
//! after the checkpoint keys (note HF's `pre_layrnorm` spelling).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
use crate::capture::Capture;
pub use crate::layers::PatchCompute;
use crate::layers::{Activation, Linear, conv2d, embedding, layer_norm, linear, patch_embedding};

pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    num_heads: i64,
    head_dim: i64,
}

impl ClipAttention {
    fn new(p: nn::Path, d: i64, num_heads: i64) -> Self {
        ClipAttention {
            q_proj: linear(&p / "q_proj", d, d, true),
            k_proj: linear(&p / "k_proj", d, d, true),
            v_proj: linear(&p / "v_proj", d, d, true),
            out_proj: linear(&p / "out_proj", d, d, true),
            num_heads,
            head_dim: d / num_heads,
        }
    }

    /// `allowed`: boolean [B, 1, T, T] (true = may attend), or none for full attention.
    fn forward(&self, x: &Tensor, allowed: Option<&Tensor>) -> Tensor {
        self.attend(x, x, allowed)
    }

    /// Queries from `queries` [B, Tq, D] attending over `keys` [B, T, D]
    /// (`queries` is `keys` itself, or its first Tq positions); `allowed` is [B, 1, Tq, T].
    fn attend(&self, queries: &Tensor, keys: &Tensor, allowed: Option<&Tensor>) -> Tensor {
        let (b, tq, d) = queries.size3().expect("hidden states are [batch, tokens, width]");
        let heads = |y: Tensor| {
            let t = y.size()[1];
            y.view([b, t, self.num_heads, self.head_dim]).transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(queries));
        let k = heads(self.k_proj.forward(keys));
        let v = heads(self.v_proj.forward(keys));
        let scale = (self.head_dim as f64).powf(-0.5);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, allowed, 0.0, false, scale, false);
        self.out_proj.forward(&y.transpose(1, 2).reshape([b, tq, d]))
    }
}

pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    activation: Activation,
}

impl ClipMlp {
    pub(crate) fn new(p: nn::Path, d: i64, inner: i64, activation: Activation) -> Self {
        ClipMlp { fc1: linear(&p / "fc1", d, inner, true), fc2: linear(&p / "fc2", inner, d, true), activation }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.activation.apply(&self.fc1.forward(x)))
    }
}

pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: nn::LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: nn::LayerNorm,
}

/// One layer's outputs: the residual stream after it, and its two sublayers.
struct LayerOut {
    resid: Tensor,
    attn: Tensor,
    mlp: Tensor,
}

impl ClipEncoderLayer {
    fn new(p: nn::Path, d: i64, inner: i64, heads: i64, act: Activation, eps: f64) -> Self {
        ClipEncoderLayer {
            self_attn: ClipAttention::new(&p / "self_attn", d, heads),
            layer_norm1: layer_norm(&p / "layer_norm1", d, eps),
            mlp: ClipMlp::new(&p / "mlp", d, inner, act),
            layer_norm2: layer_norm(&p / "layer_norm2", d, eps),
        }
    }

    fn forward(&self, x: &Tensor, allowed: Option<&Tensor>) -> LayerOut {
        let attn = self.self_attn.forward(&self.layer_norm1.forward(x), allowed);
        self.finish(x, attn)
    }

    /// The layer's outputs at position 0 alone, [B, 1, D]: that query attends
    /// over every position, whose keys and values are all the rest needs.
    fn forward_first(&self, x: &Tensor, allowed: Option<&Tensor>) -> LayerOut {
        let normed = self.layer_norm1.forward(x);
        let allowed = allowed.map(|a| a.narrow(2, 0, 1));
        let attn = self.self_attn.attend(&normed.narrow(1, 0, 1), &normed, allowed.as_ref());
        self.finish(&x.narrow(1, 0, 1), attn)
    }

    /// The residual add, the MLP and its add, after the attention output `attn`.
    fn finish(&self, x: &Tensor, attn: Tensor) -> LayerOut {
        let h = x + &attn;
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&h));
        LayerOut { resid: &h + &mlp, attn, mlp }
    }
}

pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(p: nn::Path, n: usize, d: i64, inner: i64, heads: i64, act: Activation, eps: f64) -> Self {
        let p = &p / "layers";
        ClipEncoder { layers: (0..n).map(|i| ClipEncoderLayer::new(&p / i, d, inner, heads, act, eps)).collect() }
    }

    /// Runs every layer, reporting each site to `cap`; returns the last hidden state.
    pub(crate) fn forward(&self, x: Tensor, allowed: Option<&Tensor>, cap: &mut Capture) -> Tensor {
        self.run(x, allowed, cap, false)
    }

    /// [`ClipEncoder::forward`] for a tower whose own output reads the last
    /// state at position 0 alone (CLIP's vision tower pools its CLS token):
    /// when `cap` too reads only that position, the last layer is computed
    /// there alone ([B, 1, D] states). A layer costs 12 d^2 multiply-adds a
    /// position; the keys and values, all the other positions are still
    /// needed for, are 2 of them.
    pub(crate) fn forward_pooling_first(&self, x: Tensor, allowed: Option<&Tensor>, cap: &mut Capture) -> Tensor {
        self.run(x, allowed, cap, true)
    }

    fn run(&self, x: Tensor, allowed: Option<&Tensor>, cap: &mut Capture, pools_first: bool) -> Tensor {
        let n = self.layers.len();
        let first_last = pools_first && cap.first_token_suffices(n);
        let mut h = cap.stream(0, x);
        for (i, layer) in self.layers.iter().enumerate() {
            let l = i + 1;
            let o = if first_last && l == n { layer.forward_first(&h, allowed) } else { layer.forward(&h, allowed) };
            cap.sublayers(l, &o.attn, &o.mlp);
            h = cap.stream(l, o.resid);
        }
        h
    }
}

pub struct ClipTextEmbeddings {
    pub token_embedding: nn::Embedding,
    pub position_embedding: nn::Embedding,
}

pub struct ClipTextTransformer {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: nn::LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextTransformer {
    pub fn new(p: nn::Path, c: &ClipTextConfig) -> Self {
        let e = &p / "embeddings";
        ClipTextTransformer {
            embeddings: ClipTextEmbeddings {
                token_embedding: embedding(&e / "token_embedding", c.vocab_size, c.hidden_size),
                position_embedding: embedding(&e / "position_embedding", c.max_position_embeddings, c.hidden_size),
            },
            encoder: ClipEncoder::new(
                &p / "encoder",
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.hidden_act,
                c.layer_norm_eps,
            ),
            final_layer_norm: layer_norm(&p / "final_layer_norm", c.hidden_size, c.layer_norm_eps),
            config: c.clone(),
        }
    }

    /// The position transformers pools each sequence at.
    pub fn pool_positions(&self, input_ids: &Tensor) -> Tensor {
        if self.config.legacy_eos_pooling() {
            input_ids.to_kind(Kind::Int64).argmax(-1, false)
        } else {
            // First occurrence of the EOS id (argmax of a 0/1 mask returns the first 1).
            input_ids.eq(self.config.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
        }
    }

    /// input_ids and attention_mask: [B, T] int64 (mask 1 = token, 0 = padding).
    /// Reports every site to `cap` (with the pooled positions); returns the
    /// pooled output (after the final norm).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cap: &mut Capture) -> Tensor {
        let (_b, t) = input_ids.size2().expect("input_ids are [batch, tokens]");
        let device = input_ids.device();
        let positions = Tensor::arange(t, (Kind::Int64, device));
        let x = self.embeddings.token_embedding.forward(input_ids)
            + self.embeddings.position_embedding.forward(&positions).unsqueeze(0);
        // Causal and key-padding masks together: query q sees key k when k <= q and k is a token.
        let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
        let keys = attention_mask.ne(0).unsqueeze(1).unsqueeze(1);
        let allowed = causal.unsqueeze(0).unsqueeze(0).logical_and(&keys);
        let last = self.encoder.forward(x, Some(&allowed), cap);
        let last = self.final_layer_norm.forward(&last);
        let pos = self.pool_positions(input_ids);
        let pooled = last.gather(1, &pos.view([-1, 1, 1]).expand([-1, 1, last.size()[2]], false), false).squeeze_dim(1);
        cap.pool_positions = Some(pos);
        pooled
    }
}

pub struct ClipVisionEmbeddings {
    pub class_embedding: Tensor,
    pub patch_embedding: nn::Conv2D,
    pub position_embedding: nn::Embedding,
}

impl ClipVisionEmbeddings {
    /// pixel_values [B, C, H, W] to patch embeddings [B, (H/p)(W/p), hidden], row-major over the grid.
    fn patches(&self, pixel_values: &Tensor, how: PatchCompute) -> Tensor {
        patch_embedding(&self.patch_embedding, pixel_values, how)
    }
}

pub struct ClipVisionTransformer {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: nn::LayerNorm,
    pub encoder: ClipEncoder,
    pub post_layernorm: nn::LayerNorm,
    /// How the patch embedding runs; [`PatchCompute::Conv`] until a loader picks.
    pub patch_compute: PatchCompute,
}

impl ClipVisionTransformer {
    pub fn new(p: nn::Path, c: &ClipVisionConfig) -> Self {
        let e = &p / "embeddings";
        let conv = nn::ConvConfig { stride: c.patch_size, bias: false, ..Default::default() };
        ClipVisionTransformer {
            embeddings: ClipVisionEmbeddings {
                class_embedding: e.var("class_embedding", &[c.hidden_size], nn::Init::Randn { mean: 0., stdev: 1. }),
                patch_embedding: conv2d(&e / "patch_embedding", c.num_channels, c.hidden_size, c.patch_size, conv),
                position_embedding: embedding(&e / "position_embedding", c.num_patches() + 1, c.hidden_size),
            },
            pre_layrnorm: layer_norm(&p / "pre_layrnorm", c.hidden_size, c.layer_norm_eps),
            encoder: ClipEncoder::new(
                &p / "encoder",
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.hidden_act,
                c.layer_norm_eps,
            ),
            post_layernorm: layer_norm(&p / "post_layernorm", c.hidden_size, c.layer_norm_eps),
            patch_compute: PatchCompute::Conv,
        }
    }

    /// pixel_values: [B, C, H, W] in the model's dtype. Reports every site to
    /// `cap`; returns the pooled output (post-layernorm of the CLS state).
    pub fn forward(&self, pixel_values: &Tensor, cap: &mut Capture) -> Tensor {
        let b = pixel_values.size()[0];
        let patches = self.embeddings.patches(pixel_values, self.patch_compute);
        let d = patches.size()[2];
        let cls = self.embeddings.class_embedding.view([1, 1, d]).expand([b, 1, d], false);
        let x = Tensor::cat(&[cls, patches], 1) + self.embeddings.position_embedding.ws.unsqueeze(0);
        let x = self.pre_layrnorm.forward(&x);
        let last = self.encoder.forward_pooling_first(x, None, cap);
        self.post_layernorm.forward(&last.select(1, 0))
    }
}

/// transformers' `CLIPModel`.
pub struct ClipModel {
    pub text_model: ClipTextTransformer,
    pub vision_model: ClipVisionTransformer,
    pub visual_projection: Linear,
    pub text_projection: Linear,
    pub logit_scale: Tensor,
    pub config: ClipConfig,
}

impl ClipModel {
    /// Declares every parameter under `p` (the checkpoint's root).
    pub fn new(p: nn::Path, c: &ClipConfig) -> Self {
        ClipModel {
            text_model: ClipTextTransformer::new(&p / "text_model", &c.text_config),
            vision_model: ClipVisionTransformer::new(&p / "vision_model", &c.vision_config),
            visual_projection: linear(&p / "visual_projection", c.vision_config.hidden_size, c.projection_dim, false),
            text_projection: linear(&p / "text_projection", c.text_config.hidden_size, c.projection_dim, false),
            logit_scale: p.var("logit_scale", &[], nn::Init::Const(2.6592)),
            config: c.clone(),
        }
    }

    /// The text tower, its sites reported to `cap`, with the pooled output and (when asked) the embedding.
    pub fn encode_text(&self, input_ids: &Tensor, attention_mask: &Tensor, cap: &mut Capture) {
        let pooled = self.text_model.forward(input_ids, attention_mask, cap);
        if cap.wants_embeds() {
            cap.embeds = Some(self.text_projection.forward(&pooled));
        }
        cap.pooled = Some(pooled);
    }

    /// The vision tower, its sites reported to `cap`, with the pooled output and (when asked) the embedding.
    pub fn encode_image(&self, pixel_values: &Tensor, cap: &mut Capture) {
        let pooled = self.vision_model.forward(pixel_values, cap);
        if cap.wants_embeds() {
            cap.embeds = Some(self.visual_projection.forward(&pooled));
        }
        cap.pooled = Some(pooled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DType;
    use tch::Device;

    /// Random patch embeddings in f64, where the convolution and the GEMM agree to rounding.
    fn embeddings(c: i64, d: i64, p: i64) -> (nn::VarStore, ClipVisionEmbeddings) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let conv = nn::ConvConfig { stride: p, bias: false, ..Default::default() };
        let e = ClipVisionEmbeddings {
            class_embedding: root.zeros("class_embedding", &[d]),
            patch_embedding: conv2d(&root / "patch_embedding", c, d, p, conv),
            position_embedding: embedding(&root / "position_embedding", 1, d),
        };
        vs.set_kind(Kind::Double);
        (vs, e)
    }

    #[test]
    fn every_patch_compute_is_the_convolution() {
        tch::manual_seed(0);
        let (_vs, e) = embeddings(3, 8, 4);
        // A 13 x 18 image: 3 x 4 patches, the remainder dropped as the convolution drops it.
        let x = Tensor::randn([2, 3, 13, 18], (Kind::Double, Device::Cpu));
        let want = e.patches(&x, PatchCompute::Conv);
        assert_eq!(want.size(), [2, 12, 8]);
        for how in [PatchCompute::Matmul, PatchCompute::ConvTf32] {
            let got = e.patches(&x, how);
            assert_eq!(got.size(), want.size(), "{how:?}");
            let d = (&got - &want).abs().max().double_value(&[]);
            assert!(d < 1e-12, "{how:?}: max |diff| {d:e}");
        }
    }

    #[test]
    fn f32_runs_the_exact_gemm_unless_tf32_is_allowed() {
        assert_eq!(PatchCompute::for_run(DType::F32, false), PatchCompute::Matmul);
        assert_eq!(PatchCompute::for_run(DType::F32, true), PatchCompute::ConvTf32);
        for dtype in [DType::F16, DType::Bf16] {
            for allow in [false, true] {
                assert_eq!(PatchCompute::for_run(dtype, allow), PatchCompute::Conv);
            }
        }
    }
}
