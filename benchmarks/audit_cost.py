"""What does a prompt-framing audit cost compared with just embedding its images?

    .venv/bin/python benchmarks/audit_cost.py [--images 64] [--repeats 3] [--backbone default]

An audit of M images under K framings embeds each image once and each distinct prompt once, then
does arithmetic on a [K, M, C] score table. Its cost should therefore be close to embedding the M
images (read, preprocess, encode), which any evaluation pays anyway. Target: <= 1.2x.

Measured in one process, after one warm-up audit (imports of scipy/matplotlib and first-call
allocations are paid once per process, not per audit; the warm-up's time is printed too):
  embed      read + preprocess + encode the M images in batches of 32 (plain code, no audit)
  audit      run_audit(...) with the shipped synthetic spec (6 framings x 5 findings), all
             statistics, without writing files
  audit+io   the same plus audit.json, scores.csv, two PNG plots, report.md/.html and junit.xml
Times are medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


class _Counting:
    """Counts the images and texts that reach a backbone's encoders (delegates everything)."""

    def __init__(self, bb) -> None:
        self.bb = bb
        self.images = 0
        self.texts = 0

    def install(self) -> None:
        enc_i, enc_t = self.bb.encode_images, self.bb.encode_texts

        def images(pixels, batch_size=64):
            self.images += len(pixels)
            return enc_i(pixels, batch_size)

        def texts(t, batch_size=128):
            self.texts += len(t)
            return enc_t(t, batch_size)

        self.bb.encode_images, self.bb.encode_texts = images, texts


def embed_only(bb, manifest: Path) -> float:
    """Seconds to read, preprocess and encode every image of the manifest (batches of 32)."""
    from domainclip.datasets import load_image, read_manifest
    from domainclip.datasets.transforms import eval_transform

    man = read_manifest(manifest)
    tf = eval_transform(bb)
    t0 = time.perf_counter()
    paths = [man.image_path(r) for r in man.rows]
    for i in range(0, len(paths), 32):
        pixels = torch.stack([tf(load_image(p)) for p in paths[i : i + 32]])
        bb.encode_images(pixels, batch_size=32)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from domainclip.audit import load_audit_spec, run_audit
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from domainclip.models import load_backbone

    spec = load_audit_spec("synthetic")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_synthetic(data, n=args.images, seed=0)
        manifest = data / "manifest.csv"
        t0 = time.perf_counter()
        bb = load_backbone(args.backbone)
        print(f"backbone {args.backbone}: loaded in {time.perf_counter() - t0:.1f} s")
        counter = _Counting(bb)
        counter.install()

        t0 = time.perf_counter()
        run_audit(bb, spec, manifest, split=None, out_dir=Path(tmp) / "warmup")
        warmup = time.perf_counter() - t0
        embed_only(bb, manifest)  # warm the plain path too

        embed, audit, audit_io, timing = [], [], [], None
        for r in range(args.repeats):
            embed.append(embed_only(bb, manifest))
            counter.images = counter.texts = 0
            t0 = time.perf_counter()
            run_audit(bb, spec, manifest, split=None)
            audit.append(time.perf_counter() - t0)
            n_img, n_txt = counter.images, counter.texts
            t0 = time.perf_counter()
            res = run_audit(bb, spec, manifest, split=None, out_dir=Path(tmp) / f"out{r}")
            audit_io.append(time.perf_counter() - t0)
            timing = res.data["timing"]

    e, a, aio = (statistics.median(x) for x in (embed, audit, audit_io))
    # Paired ratios (each audit against the embedding run right before it) resist the drift of
    # a shared machine better than a ratio of medians.
    r_a = statistics.median(x / y for x, y in zip(audit, embed, strict=True))
    r_io = statistics.median(x / y for x, y in zip(audit_io, embed, strict=True))
    k = len(spec.framings)
    print(
        f"{args.images} images x {k} framings x {len(spec.findings)} findings, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    print(
        f"encoder calls per audit: {n_img} images, {n_txt} texts "
        f"(= M; distinct prompts of the spec)"
    )
    print(f"embed images only : {e:7.2f} s")
    print(f"audit (no files)  : {a:7.2f} s   ratio {r_a:.2f}x  (target <= 1.2x)")
    print(f"audit + all files : {aio:7.2f} s   ratio {r_io:.2f}x")
    print(
        "per repeat (embed / audit / audit+files): "
        + "; ".join(
            f"{x:.1f} / {y:.1f} / {z:.1f}" for x, y, z in zip(embed, audit, audit_io, strict=True)
        )
    )
    print("ratios are medians of per-repeat ratios")
    print(f"first audit in this process (imports, warm-up): {warmup:.2f} s")
    print("last audit's own breakdown: " + ", ".join(f"{k} {v}" for k, v in timing.items()))


if __name__ == "__main__":
    main()
