//! Building blocks that several families share: linear, embedding,
//! convolution and layer-norm parameters declared under a checkpoint path
//! (as zeros when a checkpoint fills them next), the linear layer's CPU
//! kernel, the activations configs name, the patch embedding of vision
//! transformers, RMSNorm and the rotary helper.

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::LocalKey;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::runtime::DType;

thread_local! {
    /// Set while a loader declares a model that a checkpoint fills next.
    static CHECKPOINT_FILLS: Cell<bool> = const { Cell::new(false) };
    /// The kernel f32 linear layers of a frozen model run on, on a CPU.
    static CPU_LINEAR: Cell<CpuLinear> = const { Cell::new(CpuLinear::Auto) };
}

/// Declares a model with `declare` whose every parameter a checkpoint
/// overwrites next ([`crate::weights::Checkpoint::load_into`] refuses a
/// variable the checkpoint lacks): the [`linear`], [`embedding`] and
/// [`conv2d`] helpers make their parameters as zeros instead of drawing them
/// (norms are ones and zeros either way; CLIP's one-row class embedding is
/// still drawn). On a CPU, drawing costs about 5 s a billion parameters (35 s
/// before a 7B decoder loads), zeroing a tenth of that. Models built outside
/// (the zoo's, which train) are drawn as tch draws them.
pub(crate) fn declare_for_checkpoint<T>(declare: impl FnOnce() -> T) -> T {
    with_thread_local(&CHECKPOINT_FILLS, true, declare)
}

/// Runs `f` with this thread's `cell` set to `value`, and puts the old value
/// back after it, also when `f` panics.
fn with_thread_local<T: Copy + 'static, R>(cell: &'static LocalKey<Cell<T>>, value: T, f: impl FnOnce() -> R) -> R {
    struct Reset<T: Copy + 'static>(&'static LocalKey<Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Reset<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _reset = Reset(cell, cell.with(|c| c.replace(value)));
    f()
}

/// `init`, or zeros inside [`declare_for_checkpoint`].
fn init_unless_filled(init: nn::Init) -> nn::Init {
    if CHECKPOINT_FILLS.with(Cell::get) { nn::Init::Const(0.) } else { init }
}

/// Which kernel multiplies the rows of an f32 linear layer on a CPU when no
/// gradient is wanted (a loaded, frozen model). Elsewhere (a GPU, 16-bit
/// dtypes, training) libtorch's `linear` runs as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLinear {
    /// oneDNN from [`ONEDNN_MIN_ROWS`] rows, libtorch's `linear` below.
    Auto,
    /// libtorch's `linear` at every size: MKL's GEMM on x86, as transformers runs.
    Blas,
    /// oneDNN at every size, so that tests can check the path on tiny models.
    OneDnn,
}

/// From this many rows (batch x tokens) oneDNN's GEMM beat MKL's on the CPU
/// we measured (an AMD EPYC, 2 threads): 1.08x to 1.55x at 1,024 to 2,048
/// rows for every shape tried, 768 x 3,072 to 896 x 151,936. Below, it was
/// 0.2x to 1.25x at 16 to 512 rows, slower for most shapes, where reordering
/// the weight on every call costs more than the product saves.
pub const ONEDNN_MIN_ROWS: i64 = 1024;

/// Runs `f` with f32 linear layers on this thread's CPU computed as `how` says.
pub fn with_cpu_linear<T>(how: CpuLinear, f: impl FnOnce() -> T) -> T {
    with_thread_local(&CPU_LINEAR, how, f)
}

/// A linear layer as the checkpoint holds it: `weight` [o, i] (tch's `ws`)
/// and `bias` [o] (`bs`).
#[derive(Debug)]
pub struct Linear {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        linear_forward(xs, &self.ws, self.bs.as_ref())
    }
}

/// x [.., i] times `weight` [o, i] transposed, plus `bias` [o]: libtorch's
/// `linear`, or oneDNN's where [`CpuLinear`] picks it.
pub fn linear_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    onednn_linear(x, weight, bias).unwrap_or_else(|| x.linear(weight, bias))
}

/// The product through oneDNN, or none where it does not apply. libtorch's
/// f32 `linear` on a CPU is MKL's GEMM, plus a copy of the broadcast bias
/// into the output first; oneDNN is reached, with the bias fused, as a 1x1
/// convolution over the rows viewed as one channels-last image [1, i, rows,
/// 1], whose output is again the rows, channels last: no copy either way for
/// contiguous rows. The sums are f32 in another order (the parity tests run
/// this path too). Under [`CpuLinear::OneDnn`] a failure panics, so that a
/// test forcing the path cannot pass on the other one.
pub(crate) fn onednn_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let how = CPU_LINEAR.with(Cell::get);
    if how == CpuLinear::Blas
        || x.device() != Device::Cpu
        || x.kind() != Kind::Float
        || weight.kind() != Kind::Float
        || x.requires_grad()
        || weight.requires_grad()
        || bias.is_some_and(|b| b.requires_grad() || b.kind() != Kind::Float)
    {
        return None;
    }
    let size = x.size();
    let (&i, lead) = size.split_last()?;
    let rows: i64 = lead.iter().product();
    let forced = how == CpuLinear::OneDnn;
    let &[o, wi] = weight.size().as_slice() else { return None };
    if (!forced && rows < ONEDNN_MIN_ROWS) || rows == 0 || wi != i {
        return None;
    }
    if !has_onednn() {
        assert!(!forced, "oneDNN's linear was forced, and this libtorch has no oneDNN");
        return None;
    }
    let image = x.reshape([1, rows, 1, i]).permute([0, 3, 1, 2]);
    let kernel = weight.reshape([o, i, 1, 1]);
    let y = match image.f_mkldnn_convolution(&kernel, bias, [0, 0], [1, 1], [1, 1], 1) {
        Ok(y) => y,
        Err(e) if forced => panic!("oneDNN's linear was forced and failed: {e}"),
        // libtorch's linear then runs: the same product, or the same error said its way.
        Err(_) => return None,
    };
    let mut out = lead.to_vec();
    out.push(o);
    Some(y.permute([0, 2, 3, 1]).reshape(out))
}

/// Whether this libtorch was built with oneDNN (x86 and ARM wheels are).
fn has_onednn() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(tch::utils::has_mkldnn)
}

/// A linear layer with `weight` [o, i] (and `bias` [o]) under `p`.
pub fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> Linear {
    let mut config = nn::LinearConfig { bias, ..Default::default() };
    if CHECKPOINT_FILLS.with(Cell::get) {
        // Without a bias init, tch draws the bias (uniform within 1/sqrt(i)).
        config.ws_init = nn::Init::Const(0.);
        config.bs_init = Some(nn::Init::Const(0.));
    }
    let nn::Linear { ws, bs } = nn::linear(p, i, o, config);
    Linear { ws, bs }
}

/// An embedding table `weight` [n, d] under `p`.
pub fn embedding(p: nn::Path, n: i64, d: i64) -> nn::Embedding {
    let mut config = nn::EmbeddingConfig::default();
    config.ws_init = init_unless_filled(config.ws_init);
    nn::embedding(p, n, d, config)
}

/// A 2-D convolution `weight` [o, i, k, k] (and `bias` [o]) under `p`.
pub fn conv2d(p: nn::Path, i: i64, o: i64, k: i64, mut config: nn::ConvConfig) -> nn::Conv2D {
    config.ws_init = init_unless_filled(config.ws_init);
    config.bs_init = init_unless_filled(config.bs_init);
    nn::conv2d(p, i, o, k, config)
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
            // x * sigmoid(1.702 x), as OpenAI's CLIP. Without gradients, in place on
            // one new tensor (a product's operands commute, so the values are the
            // same); autograd needs the sigmoid's output kept.
            Activation::QuickGelu if !x.requires_grad() => {
                let mut y = x * 1.702;
                let _ = y.sigmoid_();
                let _ = y.g_mul_(x);
                y
            }
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

/// How a vision transformer's patch embedding, a convolution whose stride is
/// its kernel (no padding; CLIP's without bias, SigLIP's with one), is
/// computed. The checkpoint's weight is the same [hidden, channels, p, p]
/// tensor in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchCompute {
    /// libtorch's convolution with libtorch's settings, as transformers
    /// computes it. On CUDA that is cuDNN, which runs f32 in TF32 by default.
    /// What training and 16-bit runs use.
    #[default]
    Conv,
    /// The image cut into non-overlapping p x p patches, each flattened
    /// (channel, row, column) and multiplied by the flattened kernel: one GEMM
    /// in IEEE f32 on every device (no cuDNN, no TF32); on a CPU, oneDNN's
    /// where [`CpuLinear`] picks it.
    Matmul,
    /// The convolution with cuDNN explicitly allowed TF32 (`--allow-tf32`).
    ConvTf32,
}

impl PatchCompute {
    /// What an extraction in `dtype` uses: exact in f32 unless TF32 is
    /// allowed; 16-bit dtypes as before.
    pub fn for_run(dtype: DType, allow_tf32: bool) -> Self {
        match (dtype, allow_tf32) {
            (DType::F32, false) => PatchCompute::Matmul,
            (DType::F32, true) => PatchCompute::ConvTf32,
            (DType::F16 | DType::Bf16, _) => PatchCompute::Conv,
        }
    }
}

/// pixel_values [B, C, H, W] through the patch convolution `conv` (stride =
/// kernel), as [B, (H/p)(W/p), hidden], row-major over the grid.
pub fn patch_embedding(conv: &nn::Conv2D, pixel_values: &Tensor, how: PatchCompute) -> Tensor {
    let w = &conv.ws;
    let (d, c, p, _) = w.size4().expect("the patch embedding weight is [hidden, channels, p, p]");
    let grid = |y: Tensor| y.flatten(2, -1).transpose(1, 2);
    match how {
        PatchCompute::Conv => grid(conv.forward(pixel_values)),
        PatchCompute::ConvTf32 => grid(pixel_values.internal_convolution(
            w,
            conv.bs.as_ref(),
            [p, p],
            [0, 0],
            [1, 1],
            false,
            [0, 0],
            1,
            false,
            false,
            true,
            true,
        )),
        PatchCompute::Matmul => {
            let (b, _, h, wd) = pixel_values.size4().expect("pixel values are [batch, channels, height, width]");
            // As the convolution, a remainder narrower than a patch is dropped.
            let (gh, gw) = (h / p, wd / p);
            let x = pixel_values.narrow(2, 0, gh * p).narrow(3, 0, gw * p);
            let x = x.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * p * p]);
            let w = w.reshape([d, c * p * p]);
            onednn_linear(&x, &w, conv.bs.as_ref()).unwrap_or_else(|| {
                let y = x.matmul(&w.transpose(0, 1));
                match &conv.bs {
                    Some(bias) => y + bias,
                    None => y,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_a_checkpoint_fills_is_declared_as_zeros_and_any_other_as_tch_draws_it() {
        let zero = |t: &Tensor| t.abs().sum(Kind::Double).double_value(&[]) == 0.0;
        let vs = nn::VarStore::new(Device::Cpu);
        let conv_config = nn::ConvConfig { stride: 4, ..Default::default() };
        let (l, e, c) = declare_for_checkpoint(|| {
            (
                linear(vs.root() / "l", 6, 5, true),
                embedding(vs.root() / "e", 7, 3),
                conv2d(vs.root() / "c", 3, 4, 2, conv_config),
            )
        });
        for t in [&l.ws, l.bs.as_ref().unwrap(), &e.ws, &c.ws, c.bs.as_ref().unwrap()] {
            assert!(zero(t), "declared for a checkpoint: zeros");
        }
        // Outside (and after) the scope, tch's draws: nonzero, a linear's weight
        // within sqrt(6 / fan_in) (Kaiming, ReLU gain) and its bias within
        // 1/sqrt(fan_in). (Not compared seed for seed: other tests draw from the
        // same global generator in parallel.)
        let (l, e) = (linear(vs.root() / "drawn", 6, 5, true), embedding(vs.root() / "drawn_e", 7, 3));
        for (t, bound) in [(&l.ws, 1.0), (l.bs.as_ref().unwrap(), 1.0 / 6f64.sqrt())] {
            assert!(!zero(t) && t.abs().max().double_value(&[]) <= bound + 1e-6, "drawn as tch draws");
        }
        assert!(!zero(&e.ws));
        // A panic while declaring leaves the flag as it was.
        let _ = std::panic::catch_unwind(|| declare_for_checkpoint(|| panic!("bad config")));
        assert!(!zero(&linear(vs.root() / "after", 6, 5, true).ws));
    }

    #[test]
    fn a_frozen_f32_linear_of_many_rows_runs_on_onednn_as_exact_f32() {
        tch::manual_seed(0);
        let x = Tensor::randn([4, ONEDNN_MIN_ROWS / 4, 96], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([40, 96], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([40], (Kind::Float, Device::Cpu));
        let exact = x.to_kind(Kind::Double).linear(&w.to_kind(Kind::Double), Some(&b.to_kind(Kind::Double)));
        let onednn = onednn_linear(&x, &w, Some(&b)).expect("1,024 rows of f32 take oneDNN");
        assert_eq!(onednn.size(), [4, ONEDNN_MIN_ROWS / 4, 40]);
        let blas = with_cpu_linear(CpuLinear::Blas, || linear_forward(&x, &w, Some(&b)));
        for (what, y) in [("oneDNN", &onednn), ("BLAS", &blas)] {
            let d = (y.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
            assert!(d < 1e-4, "{what}: max |diff| from f64 {d:e}");
        }
        let no_bias = onednn_linear(&x, &w, None).unwrap();
        assert!(no_bias.allclose(&x.linear(&w, None::<&Tensor>), 1e-5, 1e-4, false));

        let few = x.narrow(1, 0, 3);
        assert!(onednn_linear(&few, &w, Some(&b)).is_none(), "fewer rows: libtorch's linear");
        let forced = with_cpu_linear(CpuLinear::OneDnn, || onednn_linear(&few, &w, Some(&b)));
        assert!(forced.expect("forced").allclose(&few.linear(&w, Some(&b)), 1e-5, 1e-4, false));
        assert!(with_cpu_linear(CpuLinear::Blas, || onednn_linear(&x, &w, Some(&b))).is_none());
        // Training keeps libtorch's linear and its gradients.
        let trained = w.copy().set_requires_grad(true);
        assert!(onednn_linear(&x, &trained, Some(&b)).is_none());
        assert!(onednn_linear(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double), None).is_none());
        // Inputs that are not contiguous rows give the same product: a
        // transpose (copied by the reshape) and a narrowed width (a view whose
        // rows are 96 apart).
        let t = x.transpose(0, 1);
        let got = onednn_linear(&t, &w, Some(&b)).unwrap();
        assert!(got.allclose(&onednn.transpose(0, 1), 1e-5, 1e-4, false));
        let narrow = x.narrow(2, 0, 64);
        let w64 = w.narrow(1, 0, 64);
        let got = onednn_linear(&narrow, &w64, Some(&b)).expect("a narrowed width");
        assert!(got.allclose(&narrow.linear(&w64, Some(&b)), 1e-5, 1e-4, false));
        // A weight of another width is libtorch's to refuse, in its words.
        assert!(onednn_linear(&x, &w64, Some(&b)).is_none());
    }

    #[test]
    fn quick_gelu_gives_the_same_values_with_and_without_gradients() {
        let x = Tensor::randn([4, 37], (Kind::Float, Device::Cpu)) * 3.0;
        let plain = &x * (&x * 1.702).sigmoid();
        let fast = tch::no_grad(|| Activation::QuickGelu.apply(&x));
        assert!(fast.equal(&plain), "in place: the same values");
        let leaf = x.copy().set_requires_grad(true);
        let y = Activation::QuickGelu.apply(&leaf);
        assert!(y.equal(&plain));
        y.sum(Kind::Float).backward();
        assert!(leaf.grad().defined(), "gradients flow");
    }

    #[test]
    fn every_patch_compute_is_the_convolution_with_a_bias_too() {
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root(), 3, 8, 4, nn::ConvConfig { stride: 4, bias: true, ..Default::default() });
        vs.set_kind(Kind::Double);
        let _ = tch::no_grad(|| conv.bs.as_ref().unwrap().shallow_clone().normal_(0.0, 1.0));
        let x = Tensor::randn([2, 3, 13, 18], (Kind::Double, Device::Cpu));
        let want = patch_embedding(&conv, &x, PatchCompute::Conv);
        assert_eq!(want.size(), [2, 12, 8]);
        for how in [PatchCompute::Matmul, PatchCompute::ConvTf32] {
            let d = (patch_embedding(&conv, &x, how) - &want).abs().max().double_value(&[]);
            assert!(d < 1e-12, "{how:?}: max |diff| {d:e}");
        }
    }
}
