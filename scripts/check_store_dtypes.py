"""What pyarrow, polars and DuckDB see in a store's part files (issue 17, `--store-dtype`).

    .venv/bin/python scripts/check_store_dtypes.py STORE_OR_FOLDER [--max-files N]

For every Parquet file under the folder with an `emb` column: the Parquet
physical and logical type of its values, the codec, the `mmprobe.store_dtype`
the writer recorded, and then, per reader, the type it returns and the first
values of the first row. The three readers must all return floats and the same
values (all of them for pyarrow and polars; count, min, max and the first row
for DuckDB); a bf16 part's values must have zero low 16 bits. Exits 1 if any
file fails, so CI can run it.
"""

import argparse
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

SHOW = 4


def short(values) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values[:SHOW]) + ", ...]"


def check(path: Path) -> list[str]:
    problems = []
    meta = pq.ParquetFile(path).metadata
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.startswith("emb"))
    col = meta.schema.column(leaf)
    chunk = meta.row_group(0).column(leaf) if meta.num_row_groups else None
    codec = chunk.compression if chunk is not None else "-"
    encodings = ",".join(chunk.encodings) if chunk is not None else "-"
    print(
        f"{path}  ({meta.num_rows} rows, {path.stat().st_size / 1e6:.1f} MB; mmprobe.store_dtype="
        f"{kv.get('mmprobe.store_dtype', 'absent')}; Parquet {col.physical_type}"
        f"{'(' + str(col.length) + ')' if col.physical_type == 'FIXED_LEN_BYTE_ARRAY' else ''}"
        f" {col.logical_type}; {codec}; {encodings})"
    )

    # pyarrow
    emb = pq.read_table(path, columns=["emb"])["emb"].combine_chunks()
    inner = emb.type.value_type
    ok = pa.types.is_floating(inner)
    reference = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    print(f"  pyarrow  {str(emb.type):45} {short(reference)}")
    if not ok:
        problems.append(f"pyarrow returns {inner}, not a float")

    # polars
    try:
        s = pl.read_parquet(path, columns=["emb"])["emb"]
        values = s.explode().to_numpy().astype(np.float64)
        print(f"  polars   {str(s.dtype):45} {short(values)}")
        if not s.dtype.inner.is_float():
            problems.append(f"polars returns {s.dtype}, not floats")
        if not np.array_equal(values, reference):
            problems.append("polars and pyarrow values differ")
    except Exception as e:  # noqa: BLE001 - report any reader failure
        problems.append(f"polars cannot read it: {e}")

    # DuckDB
    try:
        con = duckdb.connect()
        typ, first = con.execute("SELECT typeof(emb), emb FROM read_parquet(?) LIMIT 1", [str(path)]).fetchone()
        n, lo, hi = con.execute(
            "SELECT count(*), min(v), max(v) FROM (SELECT unnest(emb) AS v FROM read_parquet(?))", [str(path)]
        ).fetchone()
        print(f"  duckdb   {typ:45} {short(first)}  ({n} values in [{lo:.6g}, {hi:.6g}])")
        if typ.rstrip("[]0123456789") not in ("FLOAT", "DOUBLE", "HALF_FLOAT"):
            problems.append(f"DuckDB returns {typ}, not floats")
        width = len(first)
        if (n, float(lo), float(hi)) != (len(reference), reference.min(), reference.max()) or not np.array_equal(
            np.asarray(first, dtype=np.float64), reference[:width]
        ):
            problems.append("DuckDB and pyarrow values differ")
    except Exception as e:  # noqa: BLE001
        problems.append(f"DuckDB cannot read it: {e}")

    if kv.get("mmprobe.store_dtype") == "bf16":
        bits = reference.astype(np.float32).view(np.uint32)
        if np.any(bits & 0xFFFF):
            problems.append("marked bf16 but holds values with non-zero low 16 bits")
    for p in problems:
        print(f"  PROBLEM: {p}")
    if not problems:
        print("  ok: floats, the same values in all three readers")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--max-files", type=int, default=None)
    args = ap.parse_args()
    print(f"pyarrow {pa.__version__}, polars {pl.__version__}, duckdb {duckdb.__version__}")
    files = [
        p
        for p in sorted(args.folder.rglob("*.parquet"))
        if not p.name.startswith(".") and "emb" in pq.ParquetFile(p).schema_arrow.names
    ][: args.max_files]
    if not files:
        sys.exit(f"{args.folder}: no Parquet file with an emb column")
    failed = [f for f in files if check(f)]
    print(f"{len(files) - len(failed)} of {len(files)} files read as the same floats by pyarrow, polars and DuckDB")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
