"""Training framing pools (`robustness.pool`) and their disjointness from the audit specs.

A pool is versioned YAML (shipped: ``configs/framings/{generic,industrial,medical}.yaml``)::

    name: industrial
    version: "industrial-framings-1"
    domain: industrial
    description: free text
    invariant:                 # expectation "invariant": the finding's probability must not move
      intensity: ["extensive {finding} across the surface", ...]
      hedging: ["perhaps {finding} on this surface", ...]
    lower:                     # expectation "lower": negations must lower it
      negation: ["a surface free of {finding}", ...]

Kinds (intensity, urgency, hedging, register, paraphrase, negation, ...) are free names that group
templates for reports. `fill: prompt` (default `sentence`) makes each template a phrase around the
name that fills the prompt set's own template, so the domain's context stays and only the framing
changes: "extensive {finding}" in "a metal surface with {label}" gives "a metal surface with
extensive scratches". The generic pool is written so: as whole sentences ("an image with
extensive scratches") it also taught invariance to dropping the context, and on the synthetic
benchmark that raised the audit's shifts above the plain recipe's (README). `{finding}` (aliases `{defect}`, `{label}`) is replaced by a class name.

Disjointness is the point of robust training: the audit (`domainclip audit`, the specs in
``configs/audits/``) must measure wordings the model never trained on. Two rules:
  * no pool template equals an audit template (after `normalise_template`): a ConfigError when a
    pool is loaded for training (`check_pool`), against every shipped spec and `robustness.held_out`;
  * no pool uses a *key framing word* of a spec (`key_framing_words`: the words of its non-reference
    templates that its reference template lacks, without function words): enforced for the shipped
    pools by tests/finetune/test_robustness.py, a logged warning for a user's pool.
This module reads the specs' `framings`/`reference` keys only (the audit layer sits above
fine-tuning; `domainclip audit` validates the rest of a spec).
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainclip.configschema import check_keys
from domainclip.errors import ConfigError
from domainclip.io import load_yaml
from domainclip.resources import CONFIGS_DIR, resolve_config_path
from domainclip.templates import Slot, Template

log = logging.getLogger(__name__)

POOL_DIR = CONFIGS_DIR / "framings"
AUDIT_DIR = CONFIGS_DIR / "audits"
SHIPPED_POOLS = ("generic", "industrial", "medical")
EXPECTATIONS = ("invariant", "lower")
FINDING = Slot("finding", ("defect", "label"))
# fill: sentence = a template is a whole prompt; prompt = a phrase around the name that fills the
# prompt set's own template ("extensive {finding}" -> "a metal surface with extensive scratches")
FILLS = ("sentence", "prompt")
_TOP_KEYS = ("name", "version", "domain", "description", "fill", *EXPECTATIONS)
# Function words never count as framing words (articles, prepositions, conjunctions, pronouns,
# auxiliaries): "a steel surface with {defect}" and "a surface free of {finding}" may share them.
STOPWORDS = frozenset(
    [
        "a", "an", "the", "of", "on", "in", "at", "to", "for", "by", "with", "from", "into",
        "onto", "and", "or", "that", "which", "who", "it", "its", "this", "these", "is", "are",
        "was", "be", "been", "has", "have", "had",
    ]
)
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


@dataclass(frozen=True)
class PoolFraming:
    """One training wording: its kind (intensity, hedging, negation, ...), template, expectation."""

    kind: str
    template: Template
    expect: str = "invariant"

    def fill(self, name: str) -> str:
        return self.template.fill(finding=name)


@dataclass(frozen=True)
class FramingPool:
    """A validated training framing pool (see the module docstring)."""

    name: str
    version: str
    framings: tuple[PoolFraming, ...]
    domain: str = ""
    source: str = "<dict>"
    fill: str = "sentence"

    @property
    def invariant(self) -> list[PoolFraming]:
        return [f for f in self.framings if f.expect == "invariant"]

    @property
    def negated(self) -> list[PoolFraming]:
        return [f for f in self.framings if f.expect == "lower"]

    def describe(self) -> dict[str, Any]:
        """What a run records about the pool (result.json info.robustness.pool)."""
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "fill": self.fill,
            "n_invariant": len(self.invariant),
            "n_negated": len(self.negated),
        }


def pool_path(name_or_path: str) -> Path:
    """The file of a shipped pool name (`industrial`) or a path (`configs/framings/x.yaml`, any file)."""
    if name_or_path in SHIPPED_POOLS:
        return POOL_DIR / f"{name_or_path}.yaml"
    path = resolve_config_path(name_or_path)
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, SHIPPED_POOLS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"robustness.pool: {name_or_path!r} is neither a shipped framing pool "
            f"({', '.join(SHIPPED_POOLS)}){hint} nor a pool YAML file; name one of those or give "
            "the path of your own (format: domainclip/finetune/framings.py)"
        )
    return path


def load_pool(name_or_path: str) -> FramingPool:
    """Load and validate a pool. Raises ConfigError naming the file and key of any problem."""
    path = pool_path(name_or_path)
    src = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: a framing pool must be a mapping (name, version, invariant, lower)")
    check_keys(data, _TOP_KEYS, src)
    for key in ("name", "version"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{src}: `{key}` must be a non-empty string")
    framings: list[PoolFraming] = []
    for expect in EXPECTATIONS:
        framings += _parse_group(data.get(expect) or {}, expect, src)
    fill = data.get("fill", "sentence")
    if fill not in FILLS:
        raise ConfigError(
            f"{src}: `fill` must be one of {', '.join(FILLS)} (sentence: each template is a whole "
            f"prompt; prompt: a phrase that fills the prompt set's templates), got {fill!r}"
        )
    pool = FramingPool(
        data["name"], data["version"], tuple(framings), str(data.get("domain") or ""), src, fill
    )
    if not pool.invariant:
        raise ConfigError(f"{src}: `invariant` needs at least one template (the consistency term)")
    return pool


def _parse_group(raw: Any, expect: str, src: str) -> list[PoolFraming]:
    """`invariant:` / `lower:` -> framings (kind -> list of templates)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: `{expect}` must map kinds (e.g. hedging) to lists of templates")
    out = []
    for kind, templates in raw.items():
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list) or not templates:
            raise ConfigError(f"{src}: {expect}.{kind} must be a non-empty list of templates")
        for i, text in enumerate(templates):
            where = f"{expect}.{kind}[{i}]"
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{src}: {where} must be a non-empty string, got {text!r}")
            t = Template.parse(
                text.strip(), (FINDING,), source=src, where=where,
                missing_hint="so every class would get the same text; write it like "
                "'perhaps {finding} on this surface'",
            )
            out.append(PoolFraming(str(kind), t, expect))
    return out


# ---------------------------------------------------------------------------------------------
# Disjointness from the audit specs


def normalise_template(text: str) -> str:
    """Lower case, one placeholder spelling ({finding}), single spaces, no trailing punctuation."""
    text = re.sub(r"\{(defect|label|finding)\}", "{finding}", text.lower())
    return " ".join(text.split()).rstrip(" .;:,!")


def template_words(text: str) -> set[str]:
    """The words of a template (lower case, placeholders removed; hyphenated words kept whole)."""
    return set(_WORD.findall(re.sub(r"\{[^}]*\}", " ", text.lower())))


@dataclass(frozen=True)
class SpecTemplates:
    """The framing templates of one audit spec (`reference` is the reference framing's template)."""

    source: str
    reference: str
    framings: dict[str, str]

    def key_words(self) -> set[str]:
        """Words of the non-reference framings that the reference lacks, without function words."""
        ref = template_words(self.reference)
        out: set[str] = set()
        for text in self.framings.values():
            if text != self.reference:
                out |= template_words(text) - ref - STOPWORDS
        return out


def shipped_specs() -> list[Path]:
    """Every audit spec shipped in the package (configs/audits/*.yaml)."""
    return sorted(AUDIT_DIR.glob("*.yaml"))


def read_spec_templates(name_or_path: str | Path) -> SpecTemplates:
    """The framing templates of an audit spec (a shipped name such as `synthetic`, or a path)."""
    path = Path(name_or_path)
    if not path.suffix and (AUDIT_DIR / f"{name_or_path}.yaml").is_file():
        path = AUDIT_DIR / f"{name_or_path}.yaml"
    path = resolve_config_path(path)
    if not path.is_file():
        raise ConfigError(
            f"robustness.held_out: audit spec {str(name_or_path)!r} not found (a shipped spec name "
            "or the path of a spec YAML)"
        )
    data = load_yaml(path)
    raw = data.get("framings") if isinstance(data, dict) else None
    if isinstance(raw, list):
        raw = {e.get("name"): e for e in raw if isinstance(e, dict)}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: not an audit spec (no `framings`); check it with `domainclip audit`")
    framings = {
        str(k): (v.get("template") if isinstance(v, dict) else v) for k, v in raw.items()
    }
    framings = {k: v for k, v in framings.items() if isinstance(v, str)}
    ref = framings.get(str(data.get("reference")), "")
    return SpecTemplates(str(path), ref, framings)


def key_framing_words(specs: list[SpecTemplates]) -> dict[str, list[str]]:
    """key framing word -> the spec files it comes from."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        for word in spec.key_words():
            out.setdefault(word, []).append(spec.source)
    return out


def check_pool(pool: FramingPool, held_out: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Refuse a pool template equal to an audit template; return (and log) the key framing words
    of the specs that the pool uses (shipped pools have none: a test enforces it).

    Args:
        held_out: audit specs besides the shipped ones (names or paths).

    Raises:
        ConfigError: naming the pool file, its template, the spec file and the framing.
    """
    specs = [read_spec_templates(p) for p in (*shipped_specs(), *held_out)]
    audit = {
        normalise_template(t): (s.source, name) for s in specs for name, t in s.framings.items()
    }
    for f in pool.framings:
        hit = audit.get(normalise_template(f.template.text))
        if hit is not None:
            raise ConfigError(
                f"{pool.source}: template {f.template.text!r} ({f.expect}.{f.kind}) is the audit "
                f"template of framing {hit[1]!r} in {hit[0]}; training on it would let the audit "
                "measure a memorised wording. Reword it or drop it from the pool"
            )
    keys = key_framing_words(specs)
    used = sorted({w for f in pool.framings for w in template_words(f.template.text)} & set(keys))
    if used:
        log.warning(
            "%s uses framing words of the audit specs (%s): the audit then partly measures wordings "
            "the model trained on", pool.source, ", ".join(used),
        )
    return used
