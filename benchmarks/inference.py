"""Inference speed and int8 parity: PyTorch eager vs ONNX Runtime fp32 and int8.

    .venv/bin/python benchmarks/inference.py RUN [--export DIR] [--n 256] [--threads 2] [--json OUT]

RUN is a fine-tuning run (e.g. the default model's NEU-DET LoRA run, or the demo's run); without
--export it is exported to a temporary folder with `--quantize int8` first. Speed: image features
of the same N images (the run's test split, then val/train to fill N), preprocessed once, batch 1
and 32, timed after one warm-up batch; images/s = N / wall seconds; intra-op threads = --threads
for both PyTorch and ONNX Runtime. Parity on the run's test split: cosine of ONNX vs PyTorch image
features (min, mean), top-1 agreement of the class decision and accuracy of each (labels from the
manifest). Goals (issue 16): ORT fp32 >= 1.3x PyTorch, int8 >= 2x at cosine >= 0.99, top-1
agreement >= 99%, accuracy change <= 1 point. The numbers are printed whatever they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domainclip.datasets.imageio import ImageReadError, load_image  # noqa: E402
from domainclip.datasets.manifest import read_manifest  # noqa: E402
from domainclip.deploy.export import export_onnx  # noqa: E402
from domainclip.deploy.onnx_runtime import OnnxModel, cosine, preprocess  # noqa: E402
from domainclip.deploy.provenance import load_task  # noqa: E402


def _images(run_manifest: str, n: int | None, splits=("test", "val", "train")) -> tuple[list, list]:
    man = read_manifest(run_manifest)
    imgs, labels = [], []
    for split in splits:
        for row in (r for r in man.rows if r.split == split):
            try:
                imgs.append(load_image(man.image_path(row)))
            except ImageReadError:
                continue
            labels.append(row.label[0] if row.label else None)
            if n is not None and len(imgs) >= n:
                return imgs, labels
    return imgs, labels


def _rate(fn, pixels: np.ndarray, batch: int) -> float:
    fn(pixels[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        fn(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - t0)


def _speed(task, models: dict[str, OnnxModel], pixels: np.ndarray) -> dict[str, dict[int, float]]:
    bb = task.resolved.backbone
    mean, std = torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def eager(x: np.ndarray) -> np.ndarray:
        return bb.model.encode_image((torch.from_numpy(x) - mean) / std).numpy()

    out = {"pytorch": {b: _rate(eager, pixels, b) for b in (1, 32)}}
    for name, m in models.items():
        out[f"ort_{name}"] = {b: _rate(m.encode_images, pixels, b) for b in (1, 32)}
    return out


def _parity(task, models: dict[str, OnnxModel], pixels: np.ndarray, labels: list) -> dict:
    bb = task.resolved.backbone
    mean, std = torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)
    ref = bb.encode_images((torch.from_numpy(pixels) - mean) / std).numpy()
    any_model = next(iter(models.values()))
    classes = any_model.classes
    truth = np.array([classes.index(x) if x in classes else -1 for x in labels])
    top_ref = any_model.class_logits(ref).argmax(1)
    out = {"n": len(pixels), "pytorch_accuracy": float((top_ref == truth).mean())}
    for name, m in models.items():
        feats = m.encode_images(pixels)
        top = m.class_logits(feats).argmax(1)
        cos = cosine(feats, ref)
        out[name] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                     "top1_agreement": float((top == top_ref).mean()), "accuracy": float((top == truth).mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--export", help="an existing export of RUN (with int8 graphs)")
    ap.add_argument("--n", type=int, default=256, help="images for the speed runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    export = Path(args.export) if args.export else Path(tempfile.mkdtemp()) / "onnx"
    if not args.export:
        export_onnx(args.run, export, quantize="int8", allow_uncalibrated=True)
    task = load_task(args.run)
    manifest_json = json.loads((export / "manifest.json").read_text())
    models = {p: OnnxModel.load(export, p, args.threads) for p in ("fp32", "int8") if p in manifest_json["graphs"]}
    inp = manifest_json["input"]
    prep = lambda imgs: np.stack([preprocess(im, inp["image_size"], inp["fit"], tuple(inp["fill"])) for im in imgs])  # noqa: E731
    imgs, _ = _images(task.run.setting("data.manifest"), args.n)
    speed = _speed(task, models, prep(imgs))
    test_imgs, test_labels = _images(task.run.setting("data.manifest"), None, ("test",))
    parity = _parity(task, models, prep(test_imgs), test_labels)
    print(f"run {args.run}  ({task.run.setting('backbone.spec')}, {inp['image_size']} px, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f})")
    print(f"{'backend':<12} {'batch 1 img/s':>14} {'batch 32 img/s':>15} {'x PyTorch (1 / 32)':>20}")
    for name, r in speed.items():
        ratio = f"{r[1] / speed['pytorch'][1]:.2f} / {r[32] / speed['pytorch'][32]:.2f}"
        print(f"{name:<12} {r[1]:>14.1f} {r[32]:>15.1f} {ratio:>20}")
    print(f"parity on {parity['n']} test images (PyTorch accuracy {parity['pytorch_accuracy']:.4f}):")
    for name in models:
        p = parity[name]
        print(f"  {name}: cosine min {p['cosine_min']:.5f} mean {p['cosine_mean']:.5f}, top-1 agreement "
              f"{p['top1_agreement']:.4f}, accuracy {p['accuracy']:.4f} "
              f"({100 * (p['accuracy'] - parity['pytorch_accuracy']):+.2f} points)")
    if args.json:
        Path(args.json).write_text(json.dumps({"speed": speed, "parity": parity,
                                               "int8": manifest_json["graphs"].get("int8")}, indent=2))


if __name__ == "__main__":
    main()
