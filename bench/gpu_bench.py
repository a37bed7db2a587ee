"""The GPU extraction benchmark: mmprobe and the transformers pipeline in one run.

    bench/gpu_extract.sh pack            # here: stripped mmprobe + loader_bench into .device/
    bench/gpu_extract.sh run             # on the GPU machine (the `device` tool), carrying .device

Same work on both sides, random-init CLIP ViT-B/32 (transformers' default
CLIPConfig sizes), N JPEGs of 320x240 made here:
- CLS of all 13 hidden states + the projected embedding, batch 256, f32 and bf16:
  `mmprobe extract --towers vision --sites resid,embeds --select cls,pooled` against
  transformers + torch DataLoader(num_workers = cores - 1, pin_memory) + pyarrow zstd;
- the bare forward (random pixels already on the GPU), f32 and bf16, with and
  without copying the 13 CLS rows to the CPU: the ceiling;
- every token of every layer (`--select all --sites resid`, batch 64): mmprobe in
  bf16 and f32 (zstd parts, the default) and in bf16 kept as f16 in uncompressed
  parts (`--store-dtype f16 --compression none`, the fastest to write), against
  the same transformers pipeline writing the same rows (bf16, zstd), and against
  the disk's raw write rate (dd, O_DIRECT) measured here;
- a random LLaVA with a 0.5B-class decoder (make_llava.py's `make_half_b`: a
  ViT-B/16 tower, 196 image tokens, Qwen2-0.5B's shapes as a Llama), bf16, every
  decoder layer at the last token and the mean of the image tokens
  (`--towers decoder --sites resid --select last,mean_image`), against
  transformers' LlavaModel + DataLoader + pyarrow doing the same;
- the loader alone (examples/loader_bench) on every core.
Prints one table; writes it as JSON to $OUT/gpu_bench.json after every line, and
goes on to the next measurement when one fails. Rates of bytes on disk include
an `os.sync()` after the run, so the page cache does not stand in for the disk.
"""

import csv
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/mmprobe-gpu-bench"))
OUT = Path(os.environ.get("OUT", WORK))
N = int(os.environ.get("BENCH_N", "20000"))
N_ALL = int(os.environ.get("BENCH_N_ALL", "2000"))
N_LLAVA = int(os.environ.get("BENCH_N_LLAVA", "2000"))
BATCH_ALL = int(os.environ.get("BENCH_BATCH_ALL", "64"))
BATCH_LLAVA = int(os.environ.get("BENCH_BATCH_LLAVA", "32"))
PROMPT = "USER: <image>\nWhat colour is the shape? ASSISTANT:"
BATCH = int(os.environ.get("BENCH_BATCH", "256"))
REPS = int(os.environ.get("BENCH_REPS", "20"))
# BENCH_DEVICE=cpu (with small BENCH_N, BENCH_BATCH, BENCH_REPS) checks the script where there is no GPU.
DEVICE = os.environ.get("BENCH_DEVICE", "cuda:0")
CORES = os.cpu_count() or 1
RESULTS = []


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def note(what, value, unit, extra=""):
    RESULTS.append({"what": what, "value": value, "unit": unit, "extra": extra})
    print(f"{what:<58} {value:>10.1f} {unit} {extra}", flush=True)
    # Written each time: a later step that fails leaves what ran before it.
    json.dump(RESULTS, open(OUT / "gpu_bench.json", "w"), indent=1)


def attempt(what, f, *args, **kw):
    """Runs one measurement; a failure is noted and the script goes on (the GPU time is not spent twice)."""
    try:
        return f(*args, **kw)
    except Exception as e:  # noqa: BLE001 -- any failure of one step
        note(f"{what} FAILED: {type(e).__name__}: {str(e)[:200]}", 0.0, "-")
        return None


def make_image(i):
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:240, 0:320]
    base = np.stack([x * 255 / 319, y * 255 / 239, np.full_like(x, rng.integers(0, 256))], -1)
    img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(WORK / "images" / f"{i:05d}.jpg", quality=90)


def dataset(n, prompt=None):
    path = WORK / (f"data-{n}.csv" if prompt is None else f"data-{n}-prompt.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "label"] + ([] if prompt is None else ["prompt"]))
        for i in range(n):
            w.writerow([i, f"images/{i:05d}.jpg", i % 4] + ([] if prompt is None else [prompt]))
    return path


def make_model():
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    d = WORK / "clip-vit-b32"
    if (d / "config.json").exists():
        return d
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(d)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(d)
    return d


def make_llava():
    sys.path.insert(0, str(ROOT / "scripts" / "fixtures"))
    from make_llava import make_half_b

    d = WORK / "llava-half-b"
    if not (d / "config.json").exists():
        make_half_b(d)
    return d


def disk_rate():
    f = WORK / "dd.bin"
    mib = int(os.environ.get("BENCH_DD_MIB", "4096"))
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=16M", f"count={mib // 16}", "oflag=direct"], check=True,
                   capture_output=True)
    dt = time.perf_counter() - t0
    f.unlink()
    note(f"disk raw write (dd {mib} MiB, O_DIRECT)", mib / dt, "MiB/s")
    return mib / dt


def bare_forward(model_dir, dtype):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(model_dir, torch_dtype=dtype).to(DEVICE).eval()
    px = torch.randn(BATCH, 3, 224, 224, device=DEVICE, dtype=dtype)
    name = "f32" if dtype == torch.float32 else "bf16"
    with torch.no_grad():
        for copy in (False, True):
            for _ in range(3):
                model.vision_model(pixel_values=px, output_hidden_states=True)
            sync()
            reps = REPS
            t0 = time.perf_counter()
            for _ in range(reps):
                res = model.vision_model(pixel_values=px, output_hidden_states=True)
                if copy:
                    torch.stack([h[:, 0] for h in res.hidden_states], 1).float().cpu()
            sync()
            rate = reps * BATCH / (time.perf_counter() - t0)
            note(f"bare forward {name}" + (" + CLS x13 to CPU" if copy else ""), rate, "img/s")
    del model
    empty_cache()


class Images(torch.utils.data.Dataset):
    """Images through a processor in the DataLoader's workers; with `prompt`, the prompt's token ids too."""

    def __init__(self, paths, proc, prompt=None):
        self.paths, self.proc, self.prompt = paths, proc, prompt

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from transformers.image_utils import load_image

        image = load_image(str(self.paths[i]))
        if self.prompt is None:
            return i, self.proc(image, return_tensors="pt")["pixel_values"][0]
        x = self.proc(images=image, text=self.prompt, return_tensors="pt")
        return i, x["input_ids"][0], x["pixel_values"][0]


class Parts:
    """pyarrow writers, one file per partition: sample (u32), pos (i32), emb (fixed-size list of f32), zstd."""

    def __init__(self, out):
        self.out, self.writers = out, {}
        out.mkdir(parents=True, exist_ok=True)

    def write(self, name, sample, pos, emb):
        emb = emb.float().numpy()
        arr = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({"sample": pa.array(sample, pa.uint32()), "pos": pa.array(pos, pa.int32()), "emb": arr})
        if name not in self.writers:
            # Level 3, as mmprobe's writer (polars' default); pyarrow's own default is 1.
            self.writers[name] = pq.ParquetWriter(self.out / f"{name}.parquet", table.schema, compression="zstd",
                                                  compression_level=3)
        self.writers[name].write_table(table)

    def close(self):
        for w in self.writers.values():
            w.close()


def empty_cache():
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()


def baseline(model_dir, data, dtype, out, all_tokens=False):
    from transformers import CLIPImageProcessorPil, CLIPModel

    t0 = time.perf_counter()
    rows = list(csv.DictReader(open(data)))
    paths = [data.parent / r["image"] for r in rows]
    proc = CLIPImageProcessorPil.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir, torch_dtype=dtype).to(DEVICE).eval()
    batch = BATCH_ALL if all_tokens else BATCH
    loader = torch.utils.data.DataLoader(Images(paths, proc), batch_size=batch, num_workers=CORES - 1,
                                         pin_memory=DEVICE.startswith("cuda"), prefetch_factor=4)
    parts = Parts(out)
    t1 = time.perf_counter()
    with torch.no_grad():
        for ids, px in loader:
            px = px.to(DEVICE, non_blocking=True).to(dtype)
            res = model.vision_model(pixel_values=px, output_hidden_states=True)
            ids = ids.tolist()
            if all_tokens:
                # Every token of every layer, one partition per layer: rows (sample, pos).
                hs = torch.stack(res.hidden_states, 0).float().cpu()  # [13, B, T, D]
                t = hs.shape[2]
                sample = [i for i in ids for _ in range(t)]
                pos = list(range(t)) * len(ids)
                for layer in range(hs.shape[0]):
                    parts.write(f"layer={layer}", sample, pos, hs[layer].reshape(-1, hs.shape[3]))
                continue
            cls = torch.stack([h[:, 0] for h in res.hidden_states], 1).float().cpu()
            emb = model.visual_projection(res.pooler_output).float().cpu()
            for layer in range(cls.shape[1]):
                parts.write(f"layer={layer}", ids, [0] * len(ids), cls[:, layer])
            parts.write("embeds", ids, [-1] * len(ids), emb)
    parts.close()
    t2 = time.perf_counter()
    name = "f32" if dtype == torch.float32 else "bf16"
    what = "all tokens x13" if all_tokens else "CLS x13"
    note(f"transformers + DataLoader({CORES - 1}) + pyarrow, {what} {name}", len(paths) / (t2 - t1), "img/s",
         f"(loop; {len(paths) / (t2 - t0):.1f} img/s with start-up)")
    del model
    empty_cache()
    return len(paths) / (t2 - t1)


class LeftPadded:
    """Collates prompts padded on the left (a class, so that spawned workers can pickle it)."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, items):
        n = max(len(s) for _, s, _ in items)
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for r, (_, s, _) in enumerate(items):
            ids[r, n - len(s):], mask[r, n - len(s):] = s, 1
        return [i for i, _, _ in items], ids, mask, torch.stack([p for _, _, p in items])


def baseline_llava(model_dir, data, dtype, out):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    t0 = time.perf_counter()
    rows = list(csv.DictReader(open(data)))
    paths = [data.parent / r["image"] for r in rows]
    proc = LlavaProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, torch_dtype=dtype).to(DEVICE).eval()
    image_id = model.config.image_token_index
    loader = torch.utils.data.DataLoader(Images(paths, proc, PROMPT), batch_size=BATCH_LLAVA, num_workers=CORES - 1,
                                         pin_memory=DEVICE.startswith("cuda"), prefetch_factor=4,
                                         collate_fn=LeftPadded(proc.tokenizer.pad_token_id))
    parts = Parts(out)
    t1 = time.perf_counter()
    with torch.no_grad():
        for ids, input_ids, mask, px in loader:
            input_ids, mask = input_ids.to(DEVICE, non_blocking=True), mask.to(DEVICE, non_blocking=True)
            px = px.to(DEVICE, non_blocking=True).to(dtype)
            # LlavaModel: the decoder's hidden states without the vocabulary head.
            res = model.model(input_ids=input_ids, attention_mask=mask, pixel_values=px, output_hidden_states=True,
                              use_cache=False)
            hs = torch.stack(res.hidden_states, 0)  # [L+1, B, T, D]
            image = (input_ids == image_id).to(hs.dtype)[None, :, :, None]
            last = hs[:, :, -1].float().cpu()
            mean_image = ((hs * image).float().sum(2) / image.float().sum(2)).cpu()
            for layer in range(hs.shape[0]):
                parts.write(f"last-{layer}", ids, [-1] * len(ids), last[layer])
                parts.write(f"mean_image-{layer}", ids, [-1] * len(ids), mean_image[layer])
    parts.close()
    t2 = time.perf_counter()
    name = "f32" if dtype == torch.float32 else "bf16"
    note(f"transformers LlavaModel + DataLoader({CORES - 1}) + pyarrow, {name}", len(paths) / (t2 - t1), "img/s",
         f"(loop; {len(paths) / (t2 - t0):.1f} img/s with start-up)")
    del model
    empty_cache()
    return len(paths) / (t2 - t1)


def mmprobe(label, args, n):
    env = dict(os.environ)
    t0 = time.perf_counter()
    p = subprocess.run([str(ROOT / ".device/mmprobe"), "extract", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(p.stdout[-1500:], p.stderr[-1500:], flush=True)
    if p.returncode != 0:
        note(f"mmprobe {label} FAILED", 0.0, "img/s")
        return 0.0
    # "extracted N samples on DEV in S s (R samples/s)": its own clock, model loading included.
    rate, stages = 0.0, ""
    for line in p.stdout.splitlines():
        if line.startswith("extracted ") and "samples/s" in line:
            rate = float(line.split("(")[1].split(" ")[0])
        # "time: setup ..; loader .. at work, ..; model ..; writer ..": which stage the others wait for.
        if line.startswith("time: "):
            stages = "; " + line
    note(f"mmprobe {label}", rate, "img/s", f"(process wall {wall:.1f} s for {n}: {n / wall:.1f} img/s{stages})")
    return rate


def store_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "no GPU"
    print(gpu, f"{CORES} cores", torch.__version__, flush=True)
    (WORK / "images").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    with mp.Pool(CORES) as pool:
        pool.map(make_image, range(N), chunksize=256)
    print(f"{N} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
    data, data_all = dataset(N), dataset(N_ALL)
    model = make_model()
    disk = disk_rate()

    lb = subprocess.run([str(ROOT / ".device/loader_bench"), str(WORK / "images"), str(CORES), "1"],
                        capture_output=True, text=True)
    print(lb.stdout, lb.stderr[-500:], flush=True)

    for dtype in (torch.float32, torch.bfloat16):
        attempt(f"bare forward {dtype}", bare_forward, model, dtype)
    common = ["--model", str(model), "--towers", "vision", "--sites", "resid,embeds", "--select", "cls,pooled",
              "--batch-size", str(BATCH), "--device", DEVICE, "--force"]
    for dt in ("bf16", "f32"):
        mmprobe(f"CLS x13 + embeds {dt}", [*common, "--data", str(data), "--dtype", dt,
                                             "--out", str(WORK / f"store-{dt}")], N)
    for dtype in (torch.bfloat16, torch.float32):
        attempt(f"baseline CLS {dtype}", baseline, model, data, dtype, WORK / f"baseline-{dtype}")

    def on_disk(what, path, t0):
        """Bytes of the parts under `path` over the wall time since t0, the flush to disk included."""
        os.sync()
        wall = time.perf_counter() - t0
        b = store_bytes(path)
        note(f"{what}: store bytes / wall (synced)", b / 2**20 / wall, "MiB/s",
             f"({b / 2**30:.2f} GiB; disk raw {disk:.0f} MiB/s: {b / 2**20 / wall / disk:.2f}x)")
        shutil.rmtree(path, ignore_errors=True)

    every = ["--model", str(model), "--towers", "vision", "--sites", "resid", "--select", "all",
             "--batch-size", str(BATCH_ALL), "--device", DEVICE, "--force", "--data", str(data_all)]
    for i, (label, args) in enumerate((("bf16", ["--dtype", "bf16"]), ("f32", ["--dtype", "f32"]),
                                       ("bf16 as f16, uncompressed", ["--dtype", "bf16", "--store-dtype", "f16",
                                                                      "--compression", "none"]))):
        store = WORK / f"store-all-{i}"
        os.sync()
        t0 = time.perf_counter()
        mmprobe(f"all tokens x13 {label}", [*every, *args, "--out", str(store)], N_ALL)
        on_disk(f"mmprobe all tokens {label}", store, t0)
    out = WORK / "baseline-all"
    os.sync()
    t0 = time.perf_counter()
    if attempt("baseline all tokens", baseline, model, data_all, torch.bfloat16, out, all_tokens=True):
        on_disk("transformers all tokens bf16", out, t0)

    llava = attempt("make the 0.5B-class LLaVA", make_llava)
    if llava:
        data_llava = dataset(N_LLAVA, PROMPT)
        mmprobe("LLaVA 0.5B decoder x25 last,mean_image bf16",
                ["--model", str(llava), "--towers", "decoder", "--sites", "resid", "--select", "last,mean_image",
                 "--batch-size", str(BATCH_LLAVA), "--device", DEVICE, "--dtype", "bf16", "--force",
                 "--data", str(data_llava), "--out", str(WORK / "store-llava")], N_LLAVA)
        attempt("baseline LLaVA", baseline_llava, llava, data_llava, torch.bfloat16, WORK / "baseline-llava")


if __name__ == "__main__":
    main()
