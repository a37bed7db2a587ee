"""Peak memory of `mmprobe geometry` against the number of layers.

    .venv/bin/python bench/geometry_memory.py [--rows 5000] [--dim 4096] [--layers 13 33]

Writes a store from Python (pyarrow, no manifest) of L decoder layers of
`dim`-wide activations of `rows` samples (random floats), for each L given,
and runs `mmprobe geometry` on it (CKA between every pair of layers on its
default 1000-sample subsample) under `wait4()`, reporting wall time and peak
RSS. A scaling measurement, not a race: the last column is what holding
every layer as f64 (as geometry did before) would take.
"""

import argparse
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def make_store(store: Path, rows: int, dim: int, layers: int):
    if store.exists():
        shutil.rmtree(store)
    rng = np.random.default_rng(0)
    for layer in range(layers):
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        d = store / "acts/tower=decoder/site=resid" / f"layer={layer}" / "selector=last"
        d.mkdir(parents=True, exist_ok=True)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        table = pa.table({"sample": pa.array(np.arange(rows), pa.uint32()),
                          "pos": pa.array(np.full(rows, -1), pa.int32()), "emb": emb})
        pq.write_table(table, d / "part-000-000000.parquet", compression="none")
    pq.write_table(pa.table({"sample": pa.array(np.arange(rows), pa.uint32())}), store / "samples.parquet")


def run_measured(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    out = p.stdout.read().decode()
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, out.strip().splitlines()[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--layers", type=int, nargs="+", default=[13, 33])
    ap.add_argument("--keep", action="store_true", help="keep the stores (bench/out/geometry-memory/store-L)")
    args = ap.parse_args()
    work = ROOT / "bench/out/geometry-memory"
    print(f"rows {args.rows}, dim {args.dim}, {os.cpu_count()} cores")
    print("| layers | store GiB | wall s | peak RSS MiB | all layers as f64 would be GiB |\n|---|---|---|---|---|")
    for layers in args.layers:
        store = work / f"store-{layers}"
        if not (args.keep and store.exists()):
            make_store(store, args.rows, args.dim, layers)
        size = sum(f.stat().st_size for f in store.rglob("*.parquet")) / 2**30
        cmd = [str(ROOT / "target/release/mmprobe"), "geometry", "--store", str(store),
               "--out", str(work / f"results-{layers}")]
        wall, rss, last = run_measured(cmd)
        print(f"| {layers} | {size:.2f} | {wall:.1f} | {rss:.0f} | {layers * args.rows * args.dim * 8 / 2**30:.1f} |")
        print(f"    ({last})")
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
