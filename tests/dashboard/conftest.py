"""A tiny but real runs directory for the dashboard tests, built once per session.

Everything in it is produced by the library itself: a tiny random open_clip backbone (saved with
`save_backbone`), 12 synthetic defect images (`generate_synthetic`) whose manifest is extended
with two metadata columns (``sex`` for subgroups, ``patient_name`` to prove it is never shown)
and one row whose image is missing (a skip for the Data page), a LoRA run and a linear-probe run
(`domainclip.finetune.finetune`), an evaluation with a fitted temperature
(`domainclip.evaluation.evaluate.evaluate`) and a framing audit with the shipped synthetic spec
(`domainclip.audit.run_audit`; subgroups extended with the two metadata columns).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from domainclip.dashboard import DATA_ROOTS_ENV, RUNS_ENV
from domainclip.privacy import pseudonym_key

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "domainclip" / "dashboard" / "app.py"
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"
PATIENT_NAMES = ("Jane Roe", "John Doe", "Max Mustermann")
AUDIT_SPEC = "synthetic"


@dataclass(frozen=True)
class DashRuns:
    """Paths of the session's runs directory."""

    root: Path  # the runs directory (given to the app)
    lora: Path  # LoRA run with an evaluation and a fitted temperature
    probe: Path  # linear-probe run (for the two-run comparison)
    manifest: Path  # the manifest both runs were trained on
    base: Path  # tmp folder holding runs/, data/, backbone/

    @property
    def data(self) -> Path:
        """The data folder (outside the runs directory: the app needs it as a data root)."""
        return self.base / "data"


def serve(monkeypatch: pytest.MonkeyPatch, runs: Path, *data_roots: Path) -> None:
    """Point the app at `runs`, allowing reads under `data_roots` (`--data-root`)."""
    monkeypatch.setenv(RUNS_ENV, str(runs))
    monkeypatch.setenv(DATA_ROOTS_ENV, os.pathsep.join(str(d) for d in data_roots))


def _manifest_with_meta(data_dir: Path) -> Path:
    from domainclip.datasets import read_manifest, write_manifest

    m = read_manifest(data_dir / "manifest.csv")
    rows = []
    for i, r in enumerate(m.rows):
        r.meta["sex"] = "F" if i % 2 else "M"
        r.meta["patient_name"] = PATIENT_NAMES[i % len(PATIENT_NAMES)]
        rows.append(r)
    missing = rows[0].__class__(
        image="images/does_not_exist.png",
        text="a scratch on a metal surface",
        label=["scratch"],
        group="lost-1",
        split="train",
        meta={"sex": "F", "patient_name": PATIENT_NAMES[0]},
    )
    return write_manifest([*rows, missing], data_dir / "manifest_meta.csv")


def _finetune(run: Path, backbone: Path, manifest: Path, method: str) -> None:
    from domainclip.finetune import finetune, load_config

    cfg = load_config(
        None,
        [
            f"backbone.spec={backbone}",
            f"data.manifest={manifest}",
            f"eval.prompts={PROMPTS}",
            f"method.name={method}",
            "train.max_steps=4",
            "train.batch_size=4",
            "eval.every_steps=2",
            "optim.warmup_steps=1",
            "train.progress=false",
        ],
    )
    finetune(cfg, run)


@pytest.fixture(scope="session")
def dash_runs(tmp_path_factory: pytest.TempPathFactory) -> DashRuns:
    from domainclip.audit import load_audit_spec, run_audit
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from domainclip.evaluation.evaluate import evaluate
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    base = tmp_path_factory.mktemp("dashboard")
    backbone = save_backbone(tiny_open_clip_backbone("cnn"), base / "backbone")
    generate_synthetic(base / "data", n=12, size=64, seed=0)
    manifest = _manifest_with_meta(base / "data")
    root = base / "runs"
    lora, probe = root / "lora", root / "probe"
    _finetune(lora, backbone, manifest, "lora")
    _finetune(probe, backbone, manifest, "linear_probe")
    evaluate(lora, split="test", fit_temperature=True, n_boot=50, subgroups=["sex", "patient_name"])
    spec = load_audit_spec(AUDIT_SPEC).to_dict()
    spec["subgroups"] = [*spec["subgroups"], "sex", "patient_name"]
    # the audit refuses fewer replicates than its Holm correction over 24 tests can resolve
    spec["statistics"]["n_bootstrap"] = 1000
    run_audit(lora, spec, split=None)
    return DashRuns(root=root, lora=lora, probe=probe, manifest=manifest, base=base)


@pytest.fixture
def app(dash_runs: DashRuns, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The dashboard on the session's runs directory (its data folder allowed), first page
    rendered."""
    serve(monkeypatch, dash_runs.root, dash_runs.data)
    pseudonym_key(dash_runs.root)  # as `domainclip dashboard` does before starting the app
    at = AppTest.from_file(str(APP), default_timeout=180)
    return at.run()
