"""Python baseline for bench/run_extract_bench.py: what a researcher writes
today with transformers and pyarrow. Same work as mmprobe's run: every image
through the CLIP vision tower with output_hidden_states, the CLS row of all
13 hidden states plus the projected embedding, streamed to Parquet.

    python bench/extract_baseline.py MODEL DATA.csv OUT [BATCH]
"""

import csv
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import CLIPImageProcessorPil, CLIPModel
from transformers.image_utils import load_image


def main():
    model_dir, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    rows = list(csv.DictReader(open(data)))
    paths = [data.parent / r["image"] for r in rows]
    proc = CLIPImageProcessorPil.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()
    writers = {}

    def write(name, samples, emb):
        emb = emb.float().contiguous().numpy()
        arr = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({"sample": pa.array(samples, pa.uint32()), "emb": arr})
        if name not in writers:
            (out / name).mkdir(parents=True, exist_ok=True)
            writers[name] = pq.ParquetWriter(out / name / "part-0.parquet", table.schema, compression="zstd")
        writers[name].write_table(table)

    with torch.no_grad():
        for start in range(0, len(paths), batch):
            ids = list(range(start, min(start + batch, len(paths))))
            images = [load_image(str(paths[i])) for i in ids]
            pixels = proc(images, return_tensors="pt")["pixel_values"]
            res = model.vision_model(pixel_values=pixels, output_hidden_states=True)
            for layer, h in enumerate(res.hidden_states):
                write(f"layer={layer}", ids, h[:, 0])
            write("embeds", ids, model.visual_projection(res.pooler_output))
    for w in writers.values():
        w.close()


if __name__ == "__main__":
    main()
