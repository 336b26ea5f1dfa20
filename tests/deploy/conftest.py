"""Fixtures for the deploy tests: tiny real runs (LoRA on a tiny CNN CLIP, CLIP-Adapter on a tiny
ViT) with a fitted temperature, and an audit gate written by `domainclip audit`."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainclip.datasets.importers.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


@pytest.fixture(scope="session")
def deploy_data(tmp_path_factory) -> Path:
    """60 synthetic 64-px images (every split) with manifest.csv."""
    out = tmp_path_factory.mktemp("deploy_syn")
    return generate_synthetic(out, n=60, size=64, seed=5).manifest_path


def make_run(root: Path, manifest: Path, arch: str, method: str, *extra: str, calibrate: bool = True) -> Path:
    """A real fine-tuning run (4 steps) on a tiny random backbone, temperature fitted.

    arch: "cnn" / "vit" (tiny open_clip) or "hf" (a tiny random HF CLIP directory)."""
    from domainclip.evaluation.evaluate import evaluate
    from domainclip.finetune import finetune, load_config
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    if arch == "hf":
        from domainclip.models.testing import write_tiny_hf_clip

        backbone = f"hf-clip:{write_tiny_hf_clip(root / 'hf', image_size=32)}"
    else:
        backbone = save_backbone(tiny_open_clip_backbone(arch, image_size=64, seed=2), root / "bb")
    cfg = load_config(None, [
        f"backbone.spec={backbone}", f"data.manifest={manifest}", f"eval.prompts={PROMPTS}",
        f"method.name={method}", "train.max_steps=4", "train.batch_size=8", "eval.every_steps=2",
        "optim.warmup_steps=1", "train.progress=false",
        # whole-image runs: 64 px images at the HF model's 32 px input would make `auto` tile,
        # and tiled runs are not exportable yet
        "data.fit=letterbox", *extra,
    ])
    run = root / "run"
    finetune(cfg, run)
    if calibrate:
        evaluate(run, fit_temperature=True, n_boot=20)
    return run


def write_gate(run: Path, verdict: str = "pass") -> Path:
    """Run the audit (tiny spec) and set its gate verdict as the test needs (a real audit.json,
    read back through AuditReport)."""
    from domainclip.audit import run_audit
    from domainclip.audit.results import AuditReport
    from tests.audit.conftest import small_spec

    spec = small_spec()
    spec["statistics"]["n_bootstrap"] = 200
    spec["thresholds"]["alpha"] = 0.5
    res = run_audit(run, spec)
    path = Path(res.files["audit"]) if "audit" in res.files else run / "audit" / "small" / "audit.json"
    data = AuditReport.read(path).to_json()
    data["gate"]["verdict"] = verdict
    AuditReport.from_json(data, str(path)).write(path)  # still a valid audit.json
    return path


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, deploy_data) -> Path:
    run = make_run(tmp_path_factory.mktemp("lora"), deploy_data, "cnn", "lora")
    write_gate(run, "pass")
    return run
