"""`domainclip predict RUN (--images DIR | --data MANIFEST) --out FILE.csv|.jsonl` on PyTorch.

Images stream through a DataLoader (workers decode and preprocess with the run's own transform,
`resolve_model(...).preprocess`); one batch of pixels is in memory at a time. A bad image becomes
an output row with its reason and is counted. Probabilities: the run's class task
(`evaluation.task.ZeroShotTask`, heads included) and its calibrator. The ONNX Runtime twin is
`domainclip.deploy.onnx_runtime.predict_onnx`; both write through `domainclip.deploy.output`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.deploy import output as out_mod
from domainclip.deploy.provenance import load_task, provenance


class _Images(Dataset):
    """InputItem -> (item, Tensor[3, S, S]) or (item, (reason, message)) for a bad image."""

    def __init__(self, items: list[out_mod.InputItem], transform: Any) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[out_mod.InputItem, Any]:
        item = self.items[i]
        try:
            return item, self.transform(load_image(item.path))
        except ImageReadError as exc:
            return item, (exc.reason, str(exc).split(": ", 1)[-1])
        except (OSError, ValueError) as exc:
            return item, ("decode", str(exc))


def _collate(batch: list) -> list:
    return batch


@torch.no_grad()
def predict_run(opts: Any) -> dict[str, Any]:
    """Score images with a run (see the module docstring); `opts` are the CLI options (run,
    images, data, split, out, batch_size, workers, prompt, review_below, allow_ungated,
    allow_uncalibrated, checkpoint, device, progress). Returns the provenance written."""
    t = load_task(opts.run, opts.checkpoint, opts.device)
    prov = provenance(t)
    what = f"run {t.run.root}"
    out_mod.check_gate(prov["gate"], opts.allow_ungated, what)
    out_mod.check_calibrated(t.calibration, opts.allow_uncalibrated, what,
                             f"fit one with `domainclip evaluate {t.run.root} --fit-temperature`")
    items = out_mod.list_inputs(
        opts.images, opts.data, opts.split, bool(getattr(opts, "show_paths", False))
    )
    bb, cal, classes, multi = t.resolved.backbone, t.resolved.calibrator, t.classes, t.ps.multi_label
    prompts = list(opts.prompt or [])
    prompt_feats = bb.encode_texts(prompts) if prompts else None
    threshold, threshold_source = out_mod.review_threshold(opts.review_below, t.calibration)
    rules = out_mod.DecisionRules(t.calibration, str(t.run.root / "calibration.json"))
    writer = out_mod.PredictionWriter(opts.out, out_mod.columns_for(classes, len(prompts), rules))
    loader = DataLoader(_Images(items, t.resolved.preprocess), batch_size=opts.batch_size,
                        num_workers=opts.workers, collate_fn=_collate)
    bar = out_mod.Progress(len(items), opts.progress)
    try:
        for batch in loader:
            ok = [(item, x) for item, x in batch if isinstance(x, torch.Tensor)]
            writer.write(out_mod.error_row(item, *x) for item, x in batch if not isinstance(x, torch.Tensor))
            if ok:
                pixels = torch.stack([x for _, x in ok]).to(bb.device)
                feats = bb.encode_images(pixels, batch_size=len(ok))
                probs = cal.probabilities(t.task.logits(bb, feats), multi)
                sims = (feats @ prompt_feats.T).numpy() if prompt_feats is not None else None
                writer.write(out_mod.score_rows([i for i, _ in ok], probs, classes, multi, threshold,
                                                rules, sims))
            bar.update(len(batch))
    finally:
        bar.close()
    prov.update(
        backend="pytorch",
        allow_ungated=bool(opts.allow_ungated),
        allow_uncalibrated=bool(opts.allow_uncalibrated),
        review_below={"value": threshold, "source": threshold_source},
        prompts=prompts,
        classes=classes,
        input=dict(t.resolved.input),
    )
    writer.close(prov)
    return {**prov, "counts": {"n_scored": writer.n_ok, "n_failed": writer.n_failed},
            "output": str(Path(opts.out))}
