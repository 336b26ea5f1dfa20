"""Audit specs: which findings, which wordings ("framings"), which subgroups, which gate thresholds.

A spec is versioned YAML data in ``configs/audits/`` (see the files there for complete examples)::

    name: synthetic                       # used for the output folder RUN/audit/<name>/
    version: "synthetic-audit-1"          # bump whenever a text or threshold changes
    description: free text
    findings:                             # data label -> readable name put into the templates
      scratch: scratches
      clean: {name: "no visible defects", framed: false,
              text: "a clean metal surface with no visible defects"}
    reference: neutral                    # the framing every other one is compared with
    framings:                             # name -> template with the one placeholder {finding}
      neutral: "a metal surface with {finding}"
      alarming: "a metal surface with severe, critical {finding}"
      negated: {template: "a metal surface without {finding}", expect: lower}
    subgroups: [texture]                  # metadata columns for breakdowns
    thresholds:                           # the deployment gate; null switches a check off
      max_abs_mean_shift: 0.05            # |mean shift| of the target-class probability ...
      alpha: 0.05                         # ... counts only when significant at this level
      max_flip_rate: 0.02                 # top-1 decision changes vs the reference
      max_ece: 0.10                       # expected calibration error under each framing
    statistics: {n_bootstrap: 2000, seed: 0, min_cell_images: 10, ece_bins: 15}

``{defect}`` is accepted as an alias of ``{finding}`` so industrial templates read naturally; any
other placeholder is an error. A finding with ``framed: false`` is a control class (e.g. "clean",
"No Finding"): its prompt is the same under every framing, because "severe, critical no visible
defects" is not a sentence; it still competes in each framing's softmax. A framing with
``expect: lower`` (negation) is reported but not gated: a model that understands negation *should*
lower the score, so its shift is shown as a negation check, not as a bias.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from domainclip.configschema import build, check_keys, option
from domainclip.errors import ConfigError
from domainclip.io import load_yaml
from domainclip.resources import CONFIGS_DIR, resolve_config_path
from domainclip.templates import Slot, Template, humanise

FINDING = Slot("finding", ("defect",))
EXPECTATIONS: tuple[str, ...] = ("invariant", "lower")
_TOP_KEYS = (
    "name",
    "version",
    "description",
    "domain",
    "findings",
    "framings",
    "reference",
    "subgroups",
    "thresholds",
    "statistics",
)
_FINDING_KEYS = ("name", "framed", "text")
_FRAMING_KEYS = ("template", "expect")
SPEC_DIR = CONFIGS_DIR / "audits"


class AuditSpecError(ConfigError):
    """A malformed audit spec (the message names the file and the key)."""


@dataclass(frozen=True)
class Finding:
    """One class of the audit.

    Attributes:
        label: the label as written in the manifest.
        name: readable name substituted into the framing templates.
        framed: False for control classes whose prompt does not change with the framing.
        text: fixed prompt of a control class (default: the reference template with `name`).
    """

    label: str
    name: str
    framed: bool = True
    text: str | None = None


@dataclass(frozen=True)
class Framing:
    """A wording of the findings. expect: "invariant" (gated) or "lower" (negation check only)."""

    name: str
    template: Template
    expect: str = "invariant"

    @property
    def gated(self) -> bool:
        return self.expect == "invariant"

    def fill(self, finding_name: str) -> str:
        return self.template.fill(finding=finding_name)


@dataclass(frozen=True)
class Thresholds:
    """Gate thresholds; None (YAML null) disables a check."""

    max_abs_mean_shift: float | None = option(
        0.05,
        "largest allowed |mean shift| of the target-class probability vs the reference framing "
        "(counts only when significant at alpha); null = off",
        range=(0.0, 1.0, "[]"),
    )
    max_flip_rate: float | None = option(
        0.02,
        "largest allowed fraction of top-1 decisions that change vs the reference; null = off",
        range=(0.0, 1.0, "[]"),
    )
    max_ece: float | None = option(
        0.10,
        "largest allowed expected calibration error under each framing; null = off",
        range=(0.0, 1.0, "[]"),
    )
    alpha: float = option(
        0.05, "family-wise level of the (Holm-adjusted) shift tests", range=(0.0, 0.5, "(]")
    )
    performance_floor: bool = option(
        True,
        "fail first when balanced accuracy or macro AUROC under the reference framing is not above "
        "the chance CI (what uniform guessing reaches on the same images)",
    )
    min_balanced_accuracy: float | None = option(
        None, "stated minimum balanced accuracy under the reference framing; null = none",
        range=(0.0, 1.0, "[]"),
    )
    min_macro_auroc: float | None = option(
        None, "stated minimum macro AUROC under the reference framing; null = none",
        range=(0.0, 1.0, "[]"),
    )
    coverage_alpha: float = option(
        0.1, "miscoverage alpha of the conformal sets whose coverage under each framing is "
        "reported (thresholds from the reference framing; audit.coverage)", range=(0.0, 0.5, "()"),
    )
    max_coverage_drop: float | None = option(
        None, "fail an invariant framing whose conformal coverage is below 1 - coverage_alpha - "
        "this (e.g. 0.05); null = off (coverage is still reported)", range=(0.0, 1.0, "[]"),
    )
    max_abs_logodds_shift: float | None = option(
        None,
        "largest allowed |mean shift| of the target class's log-odds (counts only when "
        "significant): catches biases on saturated images whose probabilities cannot move "
        "(0.2 moves a 50% probability by 0.05); null = off",
        range=(0.0, None, "[]"),
    )
    require_power: float | None = option(
        None,
        "every gated shift cell (all images, each class) must be able to detect a mean shift of "
        "this size with 80% power, else the gate fails and names the images needed; must exceed "
        "max_abs_mean_shift (a true shift at the threshold is caught only half the time); "
        "null = power is reported, not required",
        range=(0.0, 1.0, "(]"),
    )


@dataclass(frozen=True)
class StatsOptions:
    """How the audit's statistics are computed."""

    n_bootstrap: int = option(
        2000, "bootstrap resamples per confidence interval", range=(200, None, "[]")
    )
    seed: int = option(0, "seed of the bootstrap", range=(0, None, "[]"))
    min_cell_images: int = option(
        10,
        "smaller class/subgroup cells are reported but not tested (a bootstrap of 3 images says "
        "nothing)",
        range=(2, None, "[]"),
    )
    n_permutations: int = option(
        20000,
        "random sign vectors per sign-flip test (exact enumeration when 2^n is smaller); p-values "
        "below 2 x alpha get ten times as many, so no verdict depends on the seed",
        range=(1000, None, "[]"),
    )
    ece_bins: int = option(15, "equal-width bins of the calibration error", range=(1, None, "[]"))
    max_flip_examples: int = option(
        12, "decision flips kept as examples per framing", range=(0, None, "[]")
    )


@dataclass(frozen=True)
class AuditSpec:
    """A validated audit spec (see the module docstring for the YAML format)."""

    name: str
    version: str
    findings: tuple[Finding, ...]
    framings: tuple[Framing, ...]
    reference: str
    subgroups: tuple[str, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    statistics: StatsOptions = field(default_factory=StatsOptions)
    description: str = ""
    domain: str = ""
    source: str = "<dict>"

    @property
    def n_gated_shift_tests(self) -> int:
        """Gated mean-shift cells: (1 + findings) per gated framing other than the reference."""
        n_gated = sum(1 for f in self.framings if f.gated and f.name != self.reference)
        return n_gated * (1 + len(self.findings))

    @property
    def labels(self) -> list[str]:
        return [f.label for f in self.findings]

    @property
    def framing_names(self) -> list[str]:
        return [f.name for f in self.framings]

    def framing(self, name: str) -> Framing:
        for f in self.framings:
            if f.name == name:
                return f
        raise AuditSpecError(f"{self.source}: no framing named {name!r}")

    def prompt(self, finding: Finding, framing: Framing) -> str:
        """The text for one finding under one framing (control classes ignore the framing)."""
        if finding.framed:
            return framing.fill(finding.name)
        if finding.text is not None:
            return finding.text
        return self.framing(self.reference).fill(finding.name)

    def prompts(self, framing: Framing) -> list[str]:
        """Texts of all findings under `framing`, in finding order."""
        return [self.prompt(f, framing) for f in self.findings]

    def with_findings(self, labels: list[str]) -> AuditSpec:
        """A copy restricted to `labels` (spec order kept)."""
        keep = tuple(f for f in self.findings if f.label in set(labels))
        return dataclasses.replace(self, findings=keep)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that `load_audit_spec` reads back."""
        findings: dict[str, Any] = {}
        for f in self.findings:
            entry: dict[str, Any] = {"name": f.name}
            if not f.framed:
                entry["framed"] = False
            if f.text is not None:
                entry["text"] = f.text
            findings[f.label] = entry
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "domain": self.domain,
            "findings": findings,
            "reference": self.reference,
            "framings": {
                f.name: {"template": f.template.text, "expect": f.expect} for f in self.framings
            },
            "subgroups": list(self.subgroups),
            "thresholds": asdict(self.thresholds),
            "statistics": asdict(self.statistics),
        }


# ----------------------------------------------------------------------------------------------
# Field parsing


@contextlib.contextmanager
def _spec_errors() -> Iterator[None]:
    """Report the shared config checks' errors (`domainclip.configschema`, `domainclip.io`) as
    AuditSpecError, the audit's own type (a ConfigError too)."""
    try:
        yield
    except AuditSpecError:
        raise
    except ConfigError as exc:
        raise AuditSpecError(str(exc)) from exc


def _unknown(d: Mapping, valid: tuple[str, ...], where: str, src: str) -> None:
    """Unknown keys of section `where` ("the spec" = top level), with did-you-mean suggestions."""
    prefix = "" if where == "the spec" else f"{where}."
    with _spec_errors():
        check_keys(d, valid, src, prefix)


def _text(value: Any, where: str, src: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AuditSpecError(f"{src}: {where} must be a non-empty string, got {value!r}")
    return value.strip()


def _check_template(template: Any, where: str, src: str) -> Template:
    return Template.parse(
        _text(template, where, src),
        (FINDING,),
        source=src,
        where=where,
        error=AuditSpecError,
        missing_hint="so every finding would get the same text; write it like "
        "'a chest x-ray showing {finding}'",
    )


def _parse_findings(raw: Any, src: str) -> tuple[Finding, ...]:
    if isinstance(raw, list):
        items: list[tuple[Any, Any]] = []
        for i, entry in enumerate(raw):
            if isinstance(entry, str):
                items.append((entry, None))
            elif isinstance(entry, dict) and "label" in entry:
                rest = {k: v for k, v in entry.items() if k != "label"}
                items.append((entry["label"], rest))
            else:
                raise AuditSpecError(
                    f"{src}: findings[{i}] must be a label or a mapping with `label`, got {entry!r}"
                )
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        raise AuditSpecError(
            f"{src}: `findings` must map data labels to readable names (or list the labels)"
        )
    out: list[Finding] = []
    for label, value in items:
        label = _text(label, "a finding label", src)
        where = f"findings.{label}"
        if value is None or isinstance(value, str):
            value = {"name": value} if value else {}
        if not isinstance(value, dict):
            raise AuditSpecError(
                f"{src}: {where} must be a readable name or a mapping with {', '.join(_FINDING_KEYS)}"
            )
        _unknown(value, _FINDING_KEYS, where, src)
        name = _text(value.get("name") or humanise(label), f"{where}.name", src)
        if "{" in name or "}" in name:
            raise AuditSpecError(f"{src}: {where}.name {name!r} must not contain braces")
        framed = value.get("framed", True)
        if not isinstance(framed, bool):
            raise AuditSpecError(f"{src}: {where}.framed must be true or false, got {framed!r}")
        text = value.get("text")
        if text is not None:
            if framed:
                raise AuditSpecError(
                    f"{src}: {where}.text is only for control findings (framed: false); framed "
                    "findings take their text from the framing templates"
                )
            text = _text(text, f"{where}.text", src)
        if any(f.label == label for f in out):
            raise AuditSpecError(f"{src}: finding {label!r} is listed twice")
        out.append(Finding(label=label, name=name, framed=framed, text=text))
    if len(out) < 2:
        raise AuditSpecError(
            f"{src}: `findings` needs at least two classes (decisions are a softmax over them)"
        )
    if not any(f.framed for f in out):
        raise AuditSpecError(
            f"{src}: every finding has framed: false, so no framing changes any text"
        )
    return tuple(out)


def _parse_framings(raw: Any, src: str) -> tuple[Framing, ...]:
    if isinstance(raw, list):  # list form: [{name: ..., template: ...}, ...]
        pairs = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict) or "name" not in entry:
                raise AuditSpecError(
                    f"{src}: framings[{i}] must be a mapping with `name` and `template`"
                )
            pairs.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise AuditSpecError(f"{src}: `framings` must map framing names to templates")
    out: list[Framing] = []
    for name, value in pairs:
        name = _text(name, "a framing name", src)
        where = f"framings.{name}"
        if any(f.name == name for f in out):
            raise AuditSpecError(f"{src}: framing {name!r} is named twice; give each a unique name")
        if isinstance(value, str):
            value = {"template": value}
        if not isinstance(value, dict):
            raise AuditSpecError(f"{src}: {where} must be a template string or a mapping")
        _unknown(value, _FRAMING_KEYS, where, src)
        template = _check_template(value.get("template"), f"{where}.template", src)
        expect = value.get("expect", "invariant")
        if expect not in EXPECTATIONS:
            raise AuditSpecError(
                f"{src}: {where}.expect must be one of {', '.join(EXPECTATIONS)}, got {expect!r}"
            )
        same = [f.name for f in out if f.template == template]
        if same:
            raise AuditSpecError(
                f"{src}: framings {same[0]!r} and {name!r} have the same template {template.text!r}"
            )
        out.append(Framing(name=name, template=template, expect=expect))
    if len(out) < 2:
        raise AuditSpecError(f"{src}: `framings` needs a reference and at least one other framing")
    return tuple(out)


def _parse_section(cls: type, raw: Any, key: str, src: str) -> Any:
    """`thresholds` / `statistics`: keys, types and ranges checked by the shared config schema."""
    with _spec_errors():
        return build(cls, raw, src, f"{key}.")


def parse_audit_spec(data: Any, src: str = "<dict>") -> AuditSpec:
    """Validate plain data (a parsed YAML mapping) into an `AuditSpec`.

    Raises:
        AuditSpecError: naming `src` and the offending key.
    """
    if not isinstance(data, dict):
        raise AuditSpecError(
            f"{src}: an audit spec must be a mapping with name, findings, framings, ..."
        )
    _unknown(data, _TOP_KEYS, "the spec", src)
    for key in ("name", "version", "findings", "framings", "reference"):
        if data.get(key) in (None, ""):
            raise AuditSpecError(f"{src}: `{key}` is required")
    name = _text(str(data["name"]), "name", src)
    if any(c in name for c in "/\\") or name.startswith("."):
        raise AuditSpecError(f"{src}: name {name!r} must be usable as a folder name")
    framings = _parse_framings(data["framings"], src)
    reference = _text(str(data["reference"]), "reference", src)
    names = [f.name for f in framings]
    if reference not in names:
        raise AuditSpecError(
            f"{src}: reference {reference!r} is not one of the framings ({', '.join(names)})"
        )
    if next(f for f in framings if f.name == reference).expect != "invariant":
        raise AuditSpecError(f"{src}: the reference framing {reference!r} cannot be a negation")
    thresholds = _parse_section(Thresholds, data.get("thresholds"), "thresholds", src)
    rp, tau = thresholds.require_power, thresholds.max_abs_mean_shift
    if rp is not None and tau is not None and rp <= tau:
        raise AuditSpecError(
            f"{src}: thresholds.require_power = {rp} must exceed thresholds.max_abs_mean_shift = "
            f"{tau}: a cell fails only when its estimate exceeds the threshold, so a true shift of "
            f"exactly {tau} is caught half the time and no cell could ever reach 80% power; use "
            f"e.g. {round(2 * tau, 3)}"
        )
    subgroups = data.get("subgroups") or []
    if isinstance(subgroups, str):
        subgroups = [subgroups]
    if not isinstance(subgroups, list) or not all(isinstance(s, str) and s for s in subgroups):
        raise AuditSpecError(f"{src}: `subgroups` must be a list of metadata column names")
    return AuditSpec(
        name=name,
        version=str(data["version"]),
        findings=_parse_findings(data["findings"], src),
        framings=framings,
        reference=reference,
        subgroups=tuple(dict.fromkeys(subgroups)),
        thresholds=thresholds,
        statistics=_parse_section(StatsOptions, data.get("statistics"), "statistics", src),
        description=str(data.get("description") or ""),
        domain=str(data.get("domain") or ""),
        source=src,
    )


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A spec file path, or the name of a spec shipped in configs/audits/ (e.g. "neu_det")."""
    path = resolve_config_path(name_or_path)
    if path.is_file():
        return path
    candidate = SPEC_DIR / f"{name_or_path}.yaml"
    if not path.suffix and candidate.is_file():
        return candidate
    shipped = sorted(p.stem for p in SPEC_DIR.glob("*.yaml")) if SPEC_DIR.is_dir() else []
    raise AuditSpecError(
        f"audit spec {str(name_or_path)!r} not found: pass a YAML file"
        + (f" or one of the shipped specs: {', '.join(shipped)}" if shipped else "")
    )


def load_audit_spec(source: str | Path | Mapping[str, Any] | AuditSpec) -> AuditSpec:
    """Load and validate a spec from a YAML file, a shipped spec name, a mapping, or pass one through."""
    if isinstance(source, AuditSpec):
        return source
    if isinstance(source, Mapping):
        return parse_audit_spec(dict(source))
    path = resolve_spec_path(source)
    with _spec_errors():  # a key named twice (both lines named), invalid YAML, unreadable file
        data = load_yaml(path)
    return parse_audit_spec(data, str(path))
