"""Transformer-like activations for the store dtype benchmark (bench/README.md, "Store dtypes").

Hidden states of a random-init CLIP ViT-B/32 vision tower (transformers' default
CLIPVisionConfig: width 768, 12 layers, seed 0) on the first 200 bundled shapes
images and their mirror images: 400 images x 50 tokens = 20,000 rows per layer,
written as f32 part-like files OUT/vit_layer6.parquet and OUT/vit_layer12.parquet
(columns sample, pos, emb) for `--from` of the store_dtypes example.

    .venv/bin/python bench/store_dtypes_acts.py /tmp/store-dtypes-acts
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

ROOT = Path(__file__).resolve().parent.parent


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig()).eval()
    files = sorted((ROOT / "datasets/shapes/images").glob("*.png"))[:200]
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(3, 1, 1)
    pixels = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC)
        t = torch.tensor(np.asarray(im)).permute(2, 0, 1).float() / 255
        pixels.append((t - mean) / std)
    x = torch.stack(pixels)
    x = torch.cat([x, x.flip(-1)])
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    tokens = hidden[0].shape[1]
    for layer in (6, 12):
        a = hidden[layer].reshape(-1, hidden[layer].shape[-1]).numpy().astype(np.float32)
        n = a.shape[0]
        print(f"layer {layer}: {a.shape}, std {a.std():.3f}, max |x| {np.abs(a).max():.3f}")
        table = pa.table(
            {
                "sample": pa.array(np.repeat(np.arange(n // tokens), tokens).astype(np.uint32)),
                "pos": pa.array(np.tile(np.arange(tokens), n // tokens).astype(np.int32)),
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), a.shape[1]),
            }
        )
        pq.write_table(table, out / f"vit_layer{layer}.parquet", compression="zstd")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/store-dtypes-acts"))
