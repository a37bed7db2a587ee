"""The README's Python snippet, run against a real store (CI-free check).

    .venv/bin/python scripts/read_store_example.py STORE

Reads one tower/site of an mmprobe store with polars' hive partitioning, joins
the labels from samples.parquet, and checks the shapes against the manifest.
"""

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

store = Path(sys.argv[1])

# --- README snippet -----------------------------------------------------------
acts = pl.scan_parquet(f"{store}/acts/tower=vision/site=resid/**/*.parquet", hive_partitioning=True)
cls = acts.filter((pl.col("selector") == "cls") & (pl.col("layer") == 2)).collect()
samples = pl.read_parquet(f"{store}/samples.parquet")
table = cls.join(samples, on="sample").sort("sample")
X = np.stack(table["emb"].to_numpy())  # (n_samples, width)
# ------------------------------------------------------------------------------

manifest = json.loads((store / "manifest.json").read_text())
rows = manifest["dataset"]["rows"]
assert X.shape[0] == rows, (X.shape, rows)
assert set(acts.collect_schema().names()) >= {"sample", "pos", "emb", "layer", "selector"}
print(f"read {X.shape[0]} x {X.shape[1]} cls activations of layer 2 with labels {[c for c in samples.columns if c not in ('sample', 'id', 'image', 'text')]}")
