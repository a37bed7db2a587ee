//! SigLIP as transformers' `SiglipModel`: one struct per HF module, fields
//! named after the checkpoint keys (the flat layout `vision_model.*`,
//! `text_model.*`; `load.rs` maps the others onto it). The encoder layers are
//! CLIP's (pre-LN, q/k/v/out projections with bias, fc1/fc2), without CLIP's
//! causal mask in the text tower and without a CLS token or pre-norm in the
//! vision tower.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
use crate::capture::Capture;
use crate::clip::model::{ClipEncoder, ClipMlp};
use crate::layers::{Linear, PatchCompute, conv2d, embedding, layer_norm, linear, linear_forward, patch_embedding};

pub struct SiglipVisionEmbeddings {
    /// Conv2d with bias, stride = kernel = patch size.
    pub patch_embedding: nn::Conv2D,
    /// One row per patch (no CLS).
    pub position_embedding: nn::Embedding,
}

/// `torch.nn.MultiheadAttention` as the pooling head holds it: q, k and v
/// stacked in one input projection.
pub struct HeadAttention {
    /// [3D, D]: the rows of Wq, then Wk, then Wv.
    pub in_proj_weight: Tensor,
    /// [3D].
    pub in_proj_bias: Tensor,
    pub out_proj: Linear,
    num_heads: i64,
}

impl HeadAttention {
    fn new(p: nn::Path, d: i64, num_heads: i64) -> Self {
        HeadAttention {
            in_proj_weight: p.var("in_proj_weight", &[3 * d, d], nn::Init::Const(0.)),
            in_proj_bias: p.var("in_proj_bias", &[3 * d], nn::Init::Const(0.)),
            out_proj: linear(&p / "out_proj", d, d, true),
            num_heads,
        }
    }

    /// Queries [B, Q, D] attend over keys = values [B, T, D] (no mask).
    fn forward(&self, query: &Tensor, kv: &Tensor) -> Tensor {
        let d = query.size()[2];
        let w = self.in_proj_weight.split(d, 0);
        let b = self.in_proj_bias.split(d, 0);
        let heads = |x: &Tensor, i: usize| {
            let (bsz, t, _) = x.size3().expect("[batch, tokens, width]");
            linear_forward(x, &w[i], Some(&b[i])).view([bsz, t, self.num_heads, d / self.num_heads]).transpose(1, 2)
        };
        let (q, k, v) = (heads(query, 0), heads(kv, 1), heads(kv, 2));
        let scale = ((d / self.num_heads) as f64).powf(-0.5);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, scale, false);
        let (bsz, nq) = (query.size()[0], query.size()[1]);
        self.out_proj.forward(&y.transpose(1, 2).reshape([bsz, nq, d]))
    }
}

/// transformers' `SiglipMultiheadAttentionPoolingHead`: a learnt probe
/// attends over the post-layernorm states, then a residual MLP.
pub struct SiglipMultiheadAttentionPoolingHead {
    /// [1, 1, D].
    pub probe: Tensor,
    pub attention: HeadAttention,
    pub layernorm: nn::LayerNorm,
    pub mlp: ClipMlp,
}

impl SiglipMultiheadAttentionPoolingHead {
    fn new(p: nn::Path, c: &SiglipVisionConfig) -> Self {
        let d = c.hidden_size;
        SiglipMultiheadAttentionPoolingHead {
            probe: p.var("probe", &[1, 1, d], nn::Init::Const(0.)),
            attention: HeadAttention::new(&p / "attention", d, c.num_attention_heads),
            layernorm: layer_norm(&p / "layernorm", d, c.layer_norm_eps),
            mlp: ClipMlp::new(&p / "mlp", d, c.intermediate_size, c.hidden_act),
        }
    }

    /// The pooled image embedding [B, D] of post-layernorm states [B, T, D].
    pub fn forward(&self, last_hidden_state: &Tensor) -> Tensor {
        let (b, _, d) = last_hidden_state.size3().expect("[batch, tokens, width]");
        let probe = self.probe.expand([b, 1, d], false);
        let a = self.attention.forward(&probe, last_hidden_state);
        let out = &a + self.mlp.forward(&self.layernorm.forward(&a));
        out.select(1, 0)
    }
}

/// transformers' `SiglipVisionModel` (its `vision_model`): what both
/// `SiglipModel` and a LLaVA with a SigLIP vision tower hold.
pub struct SiglipVisionTransformer {
    pub embeddings: SiglipVisionEmbeddings,
    pub encoder: ClipEncoder,
    pub post_layernorm: nn::LayerNorm,
    /// `None` when the config says `vision_use_head: false`.
    pub head: Option<SiglipMultiheadAttentionPoolingHead>,
    /// How the patch embedding runs; [`PatchCompute::Conv`] until a loader picks.
    pub patch_compute: PatchCompute,
}

impl SiglipVisionTransformer {
    pub fn new(p: nn::Path, c: &SiglipVisionConfig) -> Self {
        let e = &p / "embeddings";
        let conv = nn::ConvConfig { stride: c.patch_size.0, bias: true, ..Default::default() };
        SiglipVisionTransformer {
            embeddings: SiglipVisionEmbeddings {
                patch_embedding: conv2d(&e / "patch_embedding", c.num_channels, c.hidden_size, c.patch_size.0, conv),
                position_embedding: embedding(&e / "position_embedding", c.num_patches(), c.hidden_size),
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
            post_layernorm: layer_norm(&p / "post_layernorm", c.hidden_size, c.layer_norm_eps),
            head: c.vision_use_head.then(|| SiglipMultiheadAttentionPoolingHead::new(&p / "head", c)),
            patch_compute: PatchCompute::Conv,
        }
    }

    /// pixel_values [B, C, H, W] in the model's dtype. Reports every site to
    /// `cap` (hidden_states[N] is the last layer's output, before
    /// `post_layernorm`, as transformers reports it); returns that last state.
    pub fn encode(&self, pixel_values: &Tensor, cap: &mut Capture) -> Tensor {
        let patches = patch_embedding(&self.embeddings.patch_embedding, pixel_values, self.patch_compute);
        let x = patches + self.embeddings.position_embedding.ws.unsqueeze(0);
        self.encoder.forward(x, None, cap)
    }

    /// [`Self::encode`], then (when the head exists and `pooled` asks) the head's
    /// pooled output of the post-layernorm states: `get_image_features`.
    pub fn forward(&self, pixel_values: &Tensor, cap: &mut Capture, pooled: bool) -> Option<Tensor> {
        let last = self.encode(pixel_values, cap);
        match (&self.head, pooled) {
            (Some(head), true) => Some(head.forward(&self.post_layernorm.forward(&last))),
            _ => None,
        }
    }
}

pub struct SiglipTextEmbeddings {
    pub token_embedding: nn::Embedding,
    pub position_embedding: nn::Embedding,
}

/// transformers' `SiglipTextModel` (its `text_model`).
pub struct SiglipTextTransformer {
    pub embeddings: SiglipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: nn::LayerNorm,
    /// Linear D -> projection_size with bias: the text embedding.
    pub head: Linear,
}

impl SiglipTextTransformer {
    pub fn new(p: nn::Path, c: &SiglipTextConfig) -> Self {
        let e = &p / "embeddings";
        SiglipTextTransformer {
            embeddings: SiglipTextEmbeddings {
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
            head: linear(&p / "head", c.hidden_size, c.projection_size(), true),
        }
    }

    /// input_ids [B, T] int64; `attention_mask` [B, T] (1 = token) only where
    /// the tokenizer gives one: attention is bidirectional, and a mask only
    /// hides padded keys. Reports every site to `cap` (with the pooled
    /// position, T - 1 for every row: transformers pools the last position
    /// whatever it holds); returns the pooled state after the final norm.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cap: &mut Capture) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids are [batch, tokens]");
        let device = input_ids.device();
        let positions = Tensor::arange(t, (Kind::Int64, device));
        let x = self.embeddings.token_embedding.forward(input_ids)
            + self.embeddings.position_embedding.forward(&positions).unsqueeze(0);
        let allowed = attention_mask.map(|m| m.ne(0).view([b, 1, 1, t]));
        let last = self.encoder.forward(x, allowed.as_ref(), cap);
        let pooled = self.final_layer_norm.forward(&last.select(1, t - 1));
        cap.pool_positions = Some(Tensor::full([b], t - 1, (Kind::Int64, device)));
        pooled
    }
}

/// transformers' `SiglipModel`.
pub struct SiglipModel {
    pub text_model: SiglipTextTransformer,
    pub vision_model: SiglipVisionTransformer,
    pub logit_scale: Tensor,
    pub logit_bias: Tensor,
    pub config: SiglipConfig,
}

impl SiglipModel {
    /// Declares every parameter under `p` (the flat layout's root).
    pub fn new(p: nn::Path, c: &SiglipConfig) -> Self {
        SiglipModel {
            text_model: SiglipTextTransformer::new(&p / "text_model", &c.text_config),
            vision_model: SiglipVisionTransformer::new(&p / "vision_model", &c.vision_config),
            logit_scale: p.var("logit_scale", &[1], nn::Init::Const(0.)),
            logit_bias: p.var("logit_bias", &[1], nn::Init::Const(0.)),
            config: c.clone(),
        }
    }

    /// The text tower, its sites reported to `cap`, with the pooled state and
    /// (when asked) the embedding (`get_text_features`: the head's output).
    pub fn encode_text(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cap: &mut Capture) {
        let pooled = self.text_model.forward(input_ids, attention_mask, cap);
        if cap.wants_embeds() {
            cap.embeds = Some(self.text_model.head.forward(&pooled));
        }
        cap.pooled = Some(pooled);
    }

    /// The vision tower, its sites reported to `cap`, with (when asked, and
    /// when the checkpoint has the head) the embedding (`get_image_features`:
    /// the attention-pooling head's output, no projection). Without the head
    /// transformers gives no image embedding, and neither does this.
    pub fn encode_image(&self, pixel_values: &Tensor, cap: &mut Capture) {
        let wanted = cap.wants_embeds();
        let pooled = self.vision_model.forward(pixel_values, cap, wanted);
        if let Some(p) = &pooled {
            cap.embeds = Some(p.shallow_clone());
        }
        cap.pooled = pooled;
    }
}
