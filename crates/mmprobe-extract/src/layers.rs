//! Building blocks that several families share: linear and layer-norm
//! parameters declared under a checkpoint path, the activations configs name,
//! RMSNorm and the rotary helper.

use serde::Deserialize;
use tch::nn;
use tch::{Kind, Tensor};

/// A linear layer with `weight` [o, i] (and `bias` [o]) under `p`.
pub fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    nn::linear(p, i, o, nn::LinearConfig { bias, ..Default::default() })
}

/// A layer norm over the last dimension, `weight` and `bias` under `p`.
pub fn layer_norm(p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps, ..Default::default() })
}

/// The activation functions transformers' `ACT2FN` names that our checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            // x * sigmoid(1.702 x), as OpenAI's CLIP
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// RMSNorm as Llama and Qwen2 compute it: normalised in f32, scaled in the input's dtype.
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, d: i64, eps: f64) -> Self {
        RmsNorm { weight: p.var("weight", &[d], nn::Init::Const(1.0)), eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (x32 * (var + self.eps).rsqrt()).to_kind(kind)
    }
}

/// The rotary embedding's (-x2, x1) of the two halves of the last dimension.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}
