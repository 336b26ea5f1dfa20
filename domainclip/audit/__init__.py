"""Prompt-framing audit, deployment gate and model card.

Public API (re-exported lazily so `import domainclip.audit` stays cheap):

    run_audit(model_or_run, spec, manifest=None, split="test", out_dir=None, compare=None) -> AuditResult
    load_audit_spec(path_or_name_or_dict) -> AuditSpec
    write_card(run_dir, out=None, html=False) -> Path
    PlantedBiasBackbone (domainclip.audit.testing): a backbone with a known framing bias
"""

from __future__ import annotations

from domainclip.lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "AuditResult": "api",
    "run_audit": "api",
    "AuditSpec": "spec",
    "AuditSpecError": "spec",
    "Finding": "spec",
    "Framing": "spec",
    "Thresholds": "spec",
    "load_audit_spec": "spec",
    "parse_audit_spec": "spec",
    "ScoreTable": "scores",
    "PlantedBiasBackbone": "testing",
    "write_card": "card",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
