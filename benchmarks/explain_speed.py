"""How long does each explanation take on the default model (224 px, CPU)?

    .venv/bin/python benchmarks/explain_speed.py [--repeats 3] [--threads 2] [--vit]

Targets (issue 5): GradCAM well under a second per image; IG with 32 steps (batched through
`internal_batch_size`) in a few seconds. Times exclude model loading; each row is measured
--repeats times after one warm-up call (first-call allocations and lazy imports are paid once
per process) and reported as min and median wall time, plus the CPU seconds the process used
(min). The load average is printed because on a shared machine other processes inflate wall
times: read the min, and compare with the CPU seconds (on an idle machine with N threads, wall is
roughly CPU / N or more).

--vit adds the attention methods on an untrained open_clip ViT-B-32 (224 px, 88M parameters),
since the default model's CNN tower has none.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float, float, float]:
    """(min wall, median wall, min CPU seconds of this process, first-call wall)."""
    t0 = time.perf_counter()
    fn()  # warm-up
    warm = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), statistics.median(times), min(cpu), warm


def _image(size: int) -> Path:
    """A synthetic steel image with a drawn defect (the demo data generator)."""
    import tempfile

    from domainclip.datasets.importers.synthetic import generate_synthetic

    out = Path(tempfile.mkdtemp(prefix="explain_bench_"))
    generate_synthetic(out, n=2, size=size, seed=1, classes=("scratch",))
    return out / "images" / "0000.png"


def _rows(bb, x, prompt: str, repeats: int, methods: list[tuple[str, dict]]) -> list[tuple]:
    from domainclip.explain import ImageExplainer

    ex = ImageExplainer(bb)
    rows = []
    for method, opts in methods:
        timing = _time(lambda m=method, o=opts: ex.explain(x, prompt, m, **o), repeats)
        label = method + (" " + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else "")
        rows.append((label, *timing))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--vit", action="store_true", help="also time a ViT-B-32 tower")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from domainclip.explain import (
        deletion_insertion,
        method_explainer,
        prepare_image,
        randomisation_check,
        text_sensitivity_check,
        token_attribution,
    )
    from domainclip.models import load_backbone

    prompt = "a long scratch across the middle of a metal surface"
    t0 = time.perf_counter()
    bb = load_backbone("default")
    print(f"default model loaded in {time.perf_counter() - t0:.2f} s")
    x = prepare_image(bb, _image(224)).pixels
    rows = _rows(
        bb,
        x,
        prompt,
        args.repeats,
        [
            ("gradcam", {}),
            ("ig", {"steps": 32, "internal_batch_size": 8}),
            ("ig", {"steps": 32, "internal_batch_size": 16}),
            ("ig", {"steps": 32, "internal_batch_size": 32}),
            ("occlusion", {}),
        ],
    )
    rows.append(
        ("tokens (LIG, 32 steps)",)
        + _time(lambda: token_attribution(bb, x, prompt, steps=32), args.repeats)
    )
    gradcam = method_explainer("gradcam")
    smap = gradcam(bb, x, prompt)
    rows.append(
        ("sanity: randomisation (full)",)
        + _time(lambda: randomisation_check(gradcam, bb, x, prompt, mode="full"), args.repeats)
    )
    rows.append(
        ("sanity: text (2 prompts)",)
        + _time(lambda: text_sensitivity_check(gradcam, bb, x, prompt), args.repeats)
    )
    rows.append(
        ("sanity: deletion+insertion (16)",)
        + _time(lambda: deletion_insertion(bb, x, prompt, smap), args.repeats)
    )
    if args.vit:
        vit = load_backbone("open_clip:ViT-B-32@random")
        xv = prepare_image(vit, _image(224)).pixels
        vit_rows = _rows(
            vit,
            xv,
            prompt,
            args.repeats,
            [("gradcam", {}), ("rollout", {}), ("chefer", {}), ("ig", {"steps": 32})],
        )
        rows += [(f"ViT-B-32 {r[0]}",) + r[1:] for r in vit_rows]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load:.2f}, repeats {args.repeats}"
    )
    print(f"{'what':42} {'min s':>8} {'median s':>9} {'cpu s':>8} {'1st call':>8}")
    for label, best, med, cpu, warm in rows:
        print(f"{label:42} {best:8.3f} {med:9.3f} {cpu:8.3f} {warm:8.3f}")
    gc = next(r for r in rows if r[0] == "gradcam")
    ig = min((r for r in rows if r[0].startswith("ig steps=32")), key=lambda r: r[1])
    print(
        f"\nGradCAM {gc[1]:.3f} s (target < 1 s): {'OK' if gc[1] < 1 else 'MISSED'}; "
        f"best IG-32 {ig[1]:.2f} s ({ig[0]}) (target: a few seconds)"
    )
    assert np.isfinite(smap).all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
