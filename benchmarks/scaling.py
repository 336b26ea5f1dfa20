"""How `domainclip predict` scales: PyTorch vs ONNX Runtime fp32 vs int8 at batch 1, 8 and 32.

    .venv/bin/python benchmarks/scaling.py RUN [--export DIR] [--n 64] [--threads 2] [--json OUT]

End to end, as a deployment service runs it once the model is loaded: `predict` on N images of
the run's test split (a folder of links, `--images`), decoding, preprocessing, encoding,
calibrating, conformal sets and writing the CSV included; the model (PyTorch run / ONNX Runtime
sessions) is loaded once per backend (its load is reported separately, with the warm-up). Each backend runs in its own child process (so its memory is its own): one
warm-up batch, then batch 1, 8 and 32 over the same N images. Reported per backend and batch:
images/s (N / wall seconds of the predict call) and latency per batch (wall / number of batches,
ms); per backend, the peak RSS of its process (MiB, `ru_maxrss`: model, runtime and the largest
batch together) and the import + load time. Without --export, RUN is exported (fp32 + int8) to a
temporary folder first (not timed). Takes about 1-3 minutes on 2 cores with N = 64.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCHES = (1, 8, 32)
BACKENDS = ("pytorch", "onnx fp32", "onnx int8")


def _link_images(run: str, n: int, folder: Path) -> int:
    """Symlinks to the first `n` test images of the run's manifest in `folder`; returns how many."""
    from domainclip.deploy.output import list_inputs
    from domainclip.runs import Run

    items = list_inputs(None, Run(run).setting("data.manifest"), "test")[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items):
        (folder / f"{i:05d}{item.path.suffix}").symlink_to(item.path)
    return len(items)


def _child(backend: str, run: str, export: str, images: str, threads: int, out_dir: str) -> dict:
    """One backend in this process: load, warm up, then every batch size. Returns the numbers."""
    t0 = time.perf_counter()
    if backend == "pytorch":
        import torch

        torch.set_num_threads(threads)
        from domainclip.deploy import predict as mod

        mod.load_task = functools.lru_cache(maxsize=None)(mod.load_task)  # load once, as a service would
        predict = mod.predict_run
    else:
        from domainclip.deploy import onnx_runtime as mod

        load = mod.OnnxModel.load
        mod.OnnxModel.load = functools.lru_cache(maxsize=None)(lambda *a: load(*a))
        predict = mod.predict_onnx
    common = dict(images=images, data=None, split=None, prompt=None, review_below=None, allow_ungated=True,
                  allow_uncalibrated=True, progress=False)
    if backend == "pytorch":
        common.update(run=run, onnx=None, workers=0, checkpoint="best", device="cpu")
    else:
        common.update(onnx=export, precision=backend.split()[1], threads=threads)
    n = len(list(Path(images).iterdir()))
    tag = backend.replace(" ", "_")
    predict(SimpleNamespace(**common, batch_size=min(8, n), out=f"{out_dir}/{tag}_warmup.csv"))
    load_s = time.perf_counter() - t0
    out = {"load_and_warmup_s": load_s, "batches": {}}
    for b in BATCHES:
        t = time.perf_counter()
        res = predict(SimpleNamespace(**common, batch_size=b, out=f"{out_dir}/{tag}_b{b}.csv"))
        wall = time.perf_counter() - t
        n_batches = -(-n // b)
        out["batches"][b] = {"images_per_s": res["counts"]["n_scored"] / wall,
                             "latency_ms_per_batch": 1000 * wall / n_batches}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--export", help="an existing export of RUN with int8 graphs")
    ap.add_argument("--n", type=int, default=64, help="test images scored per batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.run, args.export, args.images, args.threads, args.out_dir)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="dc_scaling_"))
    export = args.export
    if export is None:
        from domainclip.deploy.export import export_onnx

        export = str(tmp / "onnx")
        export_onnx(args.run, export, quantize="int8", allow_uncalibrated=True)
    n = _link_images(args.run, args.n, tmp / "images")
    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for backend in BACKENDS:
        proc = subprocess.run(
            [sys.executable, __file__, args.run, "--export", export, "--threads", str(args.threads),
             "--child", backend, "--images", str(tmp / "images"), "--out-dir", str(tmp)],
            capture_output=True, text=True, env=env, check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{backend} failed:\n{proc.stderr[-3000:]}")
        results[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    _print(args, n, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"n": n, "threads": args.threads, "results": results}, indent=2))


def _print(args: argparse.Namespace, n: int, results: dict) -> None:
    print(f"predict on {n} test images of {args.run}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    head = " | ".join(f"batch {b}: img/s, ms/batch" for b in BATCHES)
    print(f"{'backend':<10} | {head} | peak RSS MiB | load+warm-up s")
    base = results["pytorch"]["batches"]
    for name, r in results.items():
        cells = " | ".join(
            f"{_get(r, b)['images_per_s']:.1f} ({_get(r, b)['images_per_s'] / _get({'batches': base}, b)['images_per_s']:.2f}x), "
            f"{_get(r, b)['latency_ms_per_batch']:.0f}"
            for b in BATCHES
        )
        print(f"{name:<10} | {cells} | {r['peak_rss_mib']:.0f} | {r['load_and_warmup_s']:.1f}")


def _get(r: dict, b: int) -> dict:
    """The numbers of batch size `b` (keys are strings after the JSON round trip)."""
    return r["batches"].get(str(b)) or r["batches"][b]


if __name__ == "__main__":
    main()
