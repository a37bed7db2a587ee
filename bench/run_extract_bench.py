"""Extraction benchmark: mmprobe vs the Python baseline, same images, same run.

    .venv/bin/python bench/run_extract_bench.py [--reps R] [--mmprobe PATH ...] [N ...]
                                                (default: 500 5000, R = 1, target/release/mmprobe)

Needs `scripts/setup.sh --dev`, `cargo build --release` and the full-size
random ViT-B/32 checkpoint (`.venv/bin/python scripts/fixtures/make_clip.py --large`).
Each tool extracts resid + cls for all 13 layers and the embeds of N JPEG
images (320x240) on the CPU; wall time and peak RSS come from wait4().
With --reps R the two tools take turns R times per N (a shared machine's speed
drifts over minutes) and the last line per N is the median of the per-turn ratios.
Each --mmprobe binary (say, one built at an earlier commit) takes its turn too,
and gets its own ratio.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "scripts/fixtures/large/clip-vit-base-patch32"
WORK = ROOT / "bench/out"


def images(n: int) -> Path:
    d = WORK / f"images-{n}"
    data = d / "data.csv"
    if data.exists():
        return data
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    lines = ["id,image,label"]
    for i in range(n):
        y, x = np.mgrid[0:240, 0:320]
        base = np.stack([x * 255 / 319, y * 255 / 239, np.full_like(x, rng.integers(0, 256))], -1)
        img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
        lines.append(f"{i},{i:05d}.jpg,{i % 4}")
    data.write_text("\n".join(lines) + "\n")
    return data


def measure(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024  # MiB


def main():
    args = sys.argv[1:]
    reps = 1
    binaries = []
    while args[:1] in (["--reps"], ["--mmprobe"]):
        if args[0] == "--reps":
            reps = int(args[1])
        else:
            binaries.append(Path(args[1]).resolve())
        args = args[2:]
    sizes = [int(a) for a in args] or [500, 5000]
    binaries = binaries or [ROOT / "target/release/mmprobe"]
    names = ["mmprobe"] if len(binaries) == 1 else [f"mmprobe ({b})" for b in binaries]
    print(f"| N | tool | wall s | images/s | peak RSS MiB |\n|---|---|---|---|---|")
    for n in sizes:
        data = images(n)
        tools = [(name, [str(b), "extract", "--model", str(MODEL), "--data", str(data), "--out", str(WORK / f"store-{n}"),
                         "--towers", "vision", "--sites", "resid,embeds", "--select", "cls,pooled", "--batch-size", "32",
                         "--device", "cpu", "--force"]) for name, b in zip(names, binaries)]
        base = [sys.executable, str(ROOT / "bench/extract_baseline.py"), str(MODEL), str(data), str(WORK / f"baseline-{n}"), "32"]
        ratios = {name: [] for name in names}
        for _ in range(reps):
            walls = {}
            for name, cmd in tools + [("python baseline", base)]:
                wall, rss = measure(cmd)
                walls[name] = wall
                print(f"| {n} | {name} | {wall:.1f} | {n / wall:.1f} | {rss:.0f} |", flush=True)
            for name in names:
                ratios[name].append(walls["python baseline"] / walls[name])
        for name, rs in ratios.items():
            rs.sort()
            print(f"N={n}: {name} is {rs[len(rs) // 2]:.2f}x the baseline (median of {reps}; "
                  f"each turn: {', '.join(f'{r:.2f}' for r in rs)})", flush=True)


if __name__ == "__main__":
    main()
