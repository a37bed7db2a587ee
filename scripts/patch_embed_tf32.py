#!/usr/bin/env python3
"""The CLIP patch embedding on a CUDA device, the three ways mmprobe can run it:
cuDNN's convolution in TF32 (`--allow-tf32`, and PyTorch's default), the same
convolution in IEEE f32, and the GEMM over flattened patches that `--dtype f32`
uses. Prints each one's relative error against float64 (max |y - ref| / max |ref|)
and its median time over 50 runs (CUDA events). For scripts/device_check.sh.
"""

import sys

import torch

SIZES = [  # name, batch, image side, patch, width
    ("ViT-B/32 224", 64, 224, 32, 768),
    ("ViT-B/16 224", 64, 224, 16, 768),
    ("ViT-L/14 336", 64, 336, 14, 1024),
]


def conv_precision(p):
    torch.backends.cudnn.conv.fp32_precision = p


def as_gemm(x, w):
    b, c, h, wd = x.shape
    d, _, p, _ = w.shape
    gh, gw = h // p, wd // p
    x = x[:, :, : gh * p, : gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, -1)
    return x @ w.reshape(d, -1).t()


def as_conv(x, w):
    return torch.nn.functional.conv2d(x, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)


def timed(f, runs=50):
    for _ in range(5):
        f()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[runs // 2]


def main():
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{'size':14} {'way':22} {'rel error':>10} {'median ms':>10}")
    for name, b, side, p, d in SIZES:
        x = torch.randn(b, 3, side, side, device="cuda", generator=gen)
        w = torch.randn(d, 3, p, p, device="cuda", generator=gen) * 0.02
        ref = as_gemm(x.double(), w.double())
        scale = ref.abs().max().item()
        ways = [
            ("conv, cuDNN TF32", "tf32", as_conv),
            ("conv, cuDNN IEEE f32", "ieee", as_conv),
            ("GEMM f32 (mmprobe)", "ieee", as_gemm),
        ]
        for way, precision, f in ways:
            conv_precision(precision)
            with torch.no_grad():
                y = f(x, w)
                err = (y.double() - ref).abs().max().item() / scale
                ms = timed(lambda: f(x, w))
            print(f"{name:14} {way:22} {err:10.2e} {ms:10.3f}")
    conv_precision("tf32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
