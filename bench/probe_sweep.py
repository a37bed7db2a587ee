"""Probe-sweep benchmark: mmprobe vs scikit-learn on the same matrices.

    .venv/bin/python bench/probe_sweep.py [--rows 5000] [--dim 768] [--layers 13]

Writes 13 layers of 768-d activations of 5,000 samples with a 4-class concept
as an mmprobe store *from Python* (pyarrow, no manifest: a store made by
another tool), then times (a) scikit-learn's LogisticRegression (lbfgs) with
5-fold stratified CV on every layer and (b) `mmprobe probe` on the store, with
the same C, the same folds (a `fold` column) and no bootstrap. Reports accuracies side by side and the time ratio.
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent


def make_store(store: Path, rows: int, dim: int, layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 4
    rng.shuffle(y)
    mats = []
    base = rng.normal(0, 1, (rows, dim)).astype(np.float32)
    for layer in range(layers):
        # The concept grows more separable with depth; features drift between layers.
        means = rng.normal(0, 0.01 + 0.006 * layer, (4, dim))
        x = (0.7 * base + 0.7 * rng.normal(0, 1, (rows, dim)) + means[y]).astype(np.float32)
        mats.append(x)
        d = store / "acts/tower=vision/site=resid" / f"layer={layer}" / "selector=cls"
        d.mkdir(parents=True, exist_ok=True)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        pq.write_table(pa.table({"sample": pa.array(np.arange(rows), pa.uint32()),
                                 "pos": pa.array(np.zeros(rows), pa.int32()), "emb": emb}), d / "part-000-000000.parquet")
    folds = np.zeros(rows, dtype=np.int64)
    for f, (_, te) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(rows), y)):
        folds[te] = f
    pq.write_table(pa.table({"sample": pa.array(np.arange(rows), pa.uint32()),
                             "concept": pa.array([f"c{v}" for v in y]), "fold": pa.array(folds)}), store / "samples.parquet")
    return mats, y, folds


def sklearn_sweep(mats, y, c, folds):
    accs = []
    for x in mats:
        correct = 0
        for f in range(folds.max() + 1):
            tr, te = folds != f, folds == f
            s = StandardScaler().fit(x[tr])
            m = LogisticRegression(C=c, solver="lbfgs", max_iter=100).fit(s.transform(x[tr]), y[tr])
            correct += (m.predict(s.transform(x[te])) == y[te]).sum()
        accs.append(correct / len(y))
    return accs


def sklearn_repeated(mats, y, c, repeats):
    """Repeated stratified 5-fold CV (seeds 0..repeats-1): the work mmprobe's --repeats does."""
    for x in mats:
        for r in range(repeats):
            for tr, te in StratifiedKFold(5, shuffle=True, random_state=r).split(np.zeros(len(y)), y):
                s = StandardScaler().fit(x[tr])
                LogisticRegression(C=c, solver="lbfgs", max_iter=100).fit(s.transform(x[tr]), y[tr]).predict(
                    s.transform(x[te]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--C", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=5, help="also time repeated CV (0: skip)")
    args = ap.parse_args()
    work = ROOT / "bench/out/probe-sweep"
    store = work / "store"
    if store.exists():
        import shutil
        shutil.rmtree(store)
    mats, y, folds = make_store(store, args.rows, args.dim, args.layers)

    t0 = time.perf_counter()
    sk = sklearn_sweep([m.astype(np.float64) for m in mats], y, args.C, folds)
    t_sk = time.perf_counter() - t0

    cmd = [str(ROOT / "target/release/mmprobe"), "probe", "--store", str(store), "--concept", "concept",
           "--C", str(args.C), "--folds", "5", "--fold-column", "fold", "--bootstrap", "0", "--out", str(work / "results")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t_mm = time.perf_counter() - t0
    ours = pl.read_parquet(work / "results/probes.parquet").sort("layer")["accuracy"].to_list()

    print(f"rows {args.rows}, dim {args.dim}, layers {args.layers}, 4 classes, 5-fold, C={args.C}, {os.cpu_count()} cores")
    print("| layer | sklearn accuracy | mmprobe accuracy | diff |\n|---|---|---|---|")
    for layer, (a, b) in enumerate(zip(sk, ours)):
        print(f"| {layer} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    worst = max(abs(a - b) for a, b in zip(sk, ours))
    print(f"\nscikit-learn {t_sk:.1f} s, mmprobe {t_mm:.1f} s: mmprobe is {t_sk / t_mm:.2f}x faster; max |accuracy diff| {worst:.4f}")
    summary = dict(sklearn_s=t_sk, mmprobe_s=t_mm, max_diff=worst)
    if args.repeats > 0:
        # The cost of repeats: seeded folds, --repeats 1 vs R, and scikit-learn doing the same R x 5 fits.
        times = {}
        for r in (1, args.repeats):
            cmd = [str(ROOT / "target/release/mmprobe"), "probe", "--store", str(store), "--concept", "concept",
                   "--C", str(args.C), "--folds", "5", "--repeats", str(r), "--out", str(work / f"results-r{r}")]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[r] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sklearn_repeated([m.astype(np.float64) for m in mats], y, args.C, args.repeats)
        t_skr = time.perf_counter() - t0
        print(f"repeated CV: mmprobe --repeats 1 {times[1]:.1f} s, --repeats {args.repeats} {times[args.repeats]:.1f} s "
              f"({times[args.repeats] / times[1]:.2f}x); scikit-learn {args.repeats} x 5-fold {t_skr:.1f} s: "
              f"mmprobe is {t_skr / times[args.repeats]:.2f}x faster")
        summary.update(mmprobe_repeats_1_s=times[1], mmprobe_repeats_s=times[args.repeats], sklearn_repeats_s=t_skr)
    (work / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
