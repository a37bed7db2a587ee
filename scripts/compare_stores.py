#!/usr/bin/env python3
"""Worst relative difference between activation stores, per tower and site.

    python3 scripts/compare_stores.py REFERENCE OTHER [OTHER ...] [--json OUT.json]

Every partition (tower, site, layer, selector) of REFERENCE must be in each
OTHER with the same (sample, pos) rows. For each partition:

    partition rel = max |a - b| / max |a|            over the whole partition
    row rel       = max over rows of max_j |a_rj - b_rj| / max_j |a_rj|

where a is REFERENCE and b is OTHER; a tower/site's numbers are the worst over
its layers and selectors (the partition where the worst is found is named).
With logit_lens.parquet in both stores it also reports how often the top-1
token, and the whole top-K list, agree. Needs numpy and pyarrow only.
"""

import argparse
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq


def partitions(store):
    """{(tower, site, layer, selector): [part files]} under STORE/acts."""
    acts = os.path.join(store, "acts")
    out = {}
    for dirpath, _dirs, files in os.walk(acts):
        parts = sorted(f for f in files if f.startswith("part-") and f.endswith(".parquet"))
        if not parts:
            continue
        keys = dict(seg.split("=", 1) for seg in os.path.relpath(dirpath, acts).split(os.sep))
        key = (keys["tower"], keys["site"], int(keys["layer"]), keys["selector"])
        out[key] = [os.path.join(dirpath, f) for f in parts]
    return out


def load(files):
    """(sample, pos, emb [n, d] float64), rows sorted by (sample, pos)."""
    samples, positions, embs = [], [], []
    for f in files:
        t = pq.read_table(f, columns=["sample", "pos", "emb"])
        emb = t.column("emb").combine_chunks()
        width = emb.type.list_size
        samples.append(t.column("sample").to_numpy())
        positions.append(t.column("pos").to_numpy())
        embs.append(np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1, width))
    sample, pos, emb = np.concatenate(samples), np.concatenate(positions), np.concatenate(embs)
    order = np.lexsort((pos, sample))
    return sample[order], pos[order], emb[order]


def compare_acts(ref, other):
    a_parts, b_parts = partitions(ref), partitions(other)
    missing = sorted(set(a_parts) - set(b_parts))
    if missing:
        raise SystemExit(f"{other} lacks partitions of {ref}: {missing[:5]}")
    worst = {}
    for key in sorted(a_parts):
        sa, pa, a = load(a_parts[key])
        sb, pb, b = load(b_parts[key])
        if not (np.array_equal(sa, sb) and np.array_equal(pa, pb)) or a.shape != b.shape:
            raise SystemExit(f"{key}: the stores hold different rows")
        diff = np.abs(a - b)
        scale = np.abs(a).max()
        part_rel = diff.max() / scale if scale > 0 else float(diff.max())
        row_scale = np.abs(a).max(axis=1)
        row_rel = float(np.max(diff.max(axis=1) / np.where(row_scale > 0, row_scale, 1.0)))
        tower, site, layer, selector = key
        w = worst.setdefault(
            (tower, site),
            {"partition_rel": -1.0, "row_rel": -1.0, "max_abs": 0.0, "partitions": 0, "rows": 0},
        )
        w["partitions"] += 1
        w["rows"] += a.shape[0]
        w["max_abs"] = max(w["max_abs"], float(diff.max()))
        if part_rel > w["partition_rel"]:
            w["partition_rel"], w["partition_at"] = float(part_rel), f"layer={layer} selector={selector}"
        if row_rel > w["row_rel"]:
            w["row_rel"], w["row_at"] = row_rel, f"layer={layer} selector={selector}"
    return worst


def lens_table(path, selectors):
    """Logit lens rows as integer columns (sample, layer, selector code, rank) and token ids, sorted."""
    t = pq.read_table(path, columns=["sample", "layer", "selector", "rank", "token_id"])
    sel = np.array([selectors.setdefault(x, len(selectors)) for x in t.column("selector").to_pylist()])
    keys = np.stack([t.column(c).to_numpy().astype(np.int64) for c in ("sample", "layer")] + [sel], axis=1)
    rank = t.column("rank").to_numpy().astype(np.int64)
    order = np.lexsort((rank, keys[:, 2], keys[:, 1], keys[:, 0]))
    return keys[order], rank[order], t.column("token_id").to_numpy()[order]


def compare_lens(ref, other):
    paths = [os.path.join(s, "logit_lens.parquet") for s in (ref, other)]
    if not all(os.path.exists(p) for p in paths):
        return None
    selectors = {}
    (ka, ra, ia), (kb, rb, ib) = (lens_table(p, selectors) for p in paths)
    if not (np.array_equal(ka, kb) and np.array_equal(ra, rb)):
        return {"error": "the logit lens tables hold different rows"}
    same = ia == ib
    top1 = ra == ra.min()
    # One list per (sample, layer, selector); a list agrees when all its ranks do.
    _, list_of_row = np.unique(ka, axis=0, return_inverse=True)
    list_of_row = list_of_row.reshape(-1)
    n_lists = int(list_of_row.max()) + 1
    lists_differ = np.zeros(n_lists, dtype=bool)
    np.logical_or.at(lists_differ, list_of_row, ~same)
    return {
        "lists": n_lists,
        "top1_agree": float(same[top1].mean()),
        "topk_agree": float(1.0 - lists_differ.mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference")
    ap.add_argument("others", nargs="+")
    ap.add_argument("--json", help="also write every number here")
    args = ap.parse_args()
    report = {}
    for other in args.others:
        worst = compare_acts(args.reference, other)
        lens = compare_lens(args.reference, other)
        print(f"{other} against {args.reference}:")
        print(f"  {'tower':8} {'site':7} {'partition rel':>13}  {'row rel':>9}  {'max |diff|':>10}  worst partition")
        for (tower, site), w in sorted(worst.items()):
            print(
                f"  {tower:8} {site:7} {w['partition_rel']:13.2e}  {w['row_rel']:9.2e}  {w['max_abs']:10.2e}"
                f"  {w['partition_at']} ({w['partitions']} partitions, {w['rows']} rows)"
            )
        if lens is not None:
            if "error" in lens:
                print(f"  logit lens: {lens['error']}")
            else:
                print(
                    f"  logit lens: top-1 token agrees on {lens['top1_agree']:.4%} of {lens['lists']} lists, "
                    f"the whole top-K list on {lens['topk_agree']:.4%}"
                )
        report[other] = {
            "acts": {f"{t}/{s}": w for (t, s), w in sorted(worst.items())},
            "logit_lens": lens,
        }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": args.reference, "stores": report}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
