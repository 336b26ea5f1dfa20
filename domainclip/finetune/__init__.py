"""Fine-tuning: LoRA / CLIP-Adapter / Tip-Adapter / linear probe / full fine-tuning of a Backbone.

    from domainclip.finetune import load_config, finetune
    cfg = load_config("configs/demo_synthetic_lora.yaml", ["data.manifest=/tmp/syn/manifest.csv"])
    result = finetune(cfg, "runs/demo")          # RunResult: run_dir, best_metrics, params, timings
    bb = domainclip.runs.Run(result.run_dir).load()   # Backbone with the adapters applied

Names are imported lazily so `import domainclip.finetune.config` stays light.
"""

from __future__ import annotations

from domainclip.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FinetuneConfig": "config",
    "load_config": "config",
    "RunResult": "run",
    "finetune": "run",
    "CheckpointError": "errors",
    "TrainingDiverged": "errors",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
