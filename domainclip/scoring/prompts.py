"""Versioned prompt sets for zero-shot classification (YAML data in configs/prompts/).

A prompt set turns class names into the texts whose averaged embeddings act as classifier
weights. Format::

    version: "neu_det-1"            # required: bump it whenever a text changes (results cite it)
    mode: single_label              # or multi_label (default single_label)
    description: free text
    templates:                      # single_label: a list of templates with a {label} placeholder
      - "a photo of {label} on a steel surface"
    # multi_label (CheXzero style): a positive and a negative template list, paired per finding
    #   templates: {positive: ["{label}"], negative: ["no {label}"]}
    classes:                        # optional; when present, only these classes are covered
      pitted_surface:
        names: ["pitted surface", "pits"]          # synonyms substituted into {label} (default: the
                                                   #   class name with _ and - as spaces)
        prompts: ["a steel surface full of small pits"]   # extra texts for this class (positive)
        negative_prompts: ["a smooth steel surface"]      # multi_label only: extra negative texts
    negative_labels: ["No Finding"] # multi_label only: data labels meaning "none of the classes"

`{label}` is the placeholder; `{finding}` and `{defect}` are accepted as synonyms so that
CheXzero-style and industrial templates read naturally. Any other `{...}` is an error naming it.
Literal braces are written `{{` and `}}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainclip.configschema import check_keys
from domainclip.errors import ConfigError
from domainclip.io import load_yaml
from domainclip.templates import Slot, Template, humanise

LABEL = Slot("label", ("finding", "defect"))
MODES: tuple[str, ...] = ("single_label", "multi_label")
_TOP_KEYS = ("version", "mode", "description", "templates", "classes", "negative_labels", "name")
_CLASS_KEYS = ("names", "prompts", "negative_prompts")


class PromptError(ConfigError):
    """A malformed prompt set, or classes/labels that a prompt set does not cover."""


@dataclass(frozen=True)
class ClassPrompts:
    """Per-class prompt settings. names: synonyms for {label}; prompts / negative_prompts: extra texts
    (templates too: a placeholder in them is filled with the class's first name)."""

    names: tuple[str, ...] = ()
    prompts: tuple[Template, ...] = ()
    negative_prompts: tuple[Template, ...] = ()


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt set.

    Attributes:
        version: the set's version string (reported with every result that used it).
        mode: "single_label" (softmax over classes) or "multi_label" (per-class positive vs negative).
        templates: single-label templates, or the positive templates in multi-label mode.
        negative_templates: multi-label negative templates (empty in single-label mode).
        classes: per-class settings; empty means "any class name, used as written".
        negative_labels: multi-label data labels that mean "none of the classes" (e.g. "No Finding").
        source: where it was loaded from (file path or "<dict>").
    """

    version: str
    mode: str
    templates: tuple[Template, ...]
    negative_templates: tuple[Template, ...] = ()
    classes: Mapping[str, ClassPrompts] = field(default_factory=dict)
    negative_labels: tuple[str, ...] = ()
    description: str = ""
    source: str = "<dict>"

    @property
    def multi_label(self) -> bool:
        return self.mode == "multi_label"

    @property
    def class_names(self) -> list[str]:
        """Classes the set declares (empty when it covers any class name)."""
        return list(self.classes)

    def covers(self, label: str) -> bool:
        """True when the set has prompts for `label` (or declares no classes at all)."""
        return not self.classes or label in self.classes

    def uncovered(self, labels: Iterable[str]) -> list[str]:
        """Labels (sorted, unique) that no prompt covers; negative_labels count as covered."""
        return sorted({lab for lab in labels if not self.covers(lab)} - set(self.negative_labels))

    def _check_covered(self, classes: Sequence[str]) -> None:
        if not classes:
            raise PromptError(f"{self.source}: no classes given to build prompts for")
        missing = self.uncovered(classes)
        if missing:
            raise PromptError(
                f"{self.source} (version {self.version}) has no prompts for class(es) "
                f"{', '.join(map(repr, missing))}; it covers {', '.join(map(repr, self.classes))}. "
                "Add them under `classes:` or use a prompt set written for this data."
            )

    def _texts(self, classes: Sequence[str], negative: bool) -> dict[str, list[str]]:
        """Per class: templates x names, then the class's extra prompts filled with its first name."""
        self._check_covered(classes)
        templates = self.negative_templates if negative else self.templates
        out = {}
        for c in classes:
            cp = self.classes.get(c, ClassPrompts())
            names = cp.names or (humanise(c),)
            texts = [t.fill(label=name) for t in templates for name in names]
            extra = cp.negative_prompts if negative else cp.prompts
            texts += [p.fill(label=names[0]) for p in extra]
            out[c] = list(dict.fromkeys(texts))  # drop duplicates, keep order
        return out

    def class_texts(self, classes: Sequence[str]) -> dict[str, list[str]]:
        """Texts per class: templates x names, plus the class's extra prompts (positives in multi-label).

        Raises:
            PromptError: listing every class the set does not cover.
        """
        return self._texts(classes, negative=False)

    def negative_texts(self, classes: Sequence[str]) -> dict[str, list[str]]:
        """Multi-label only: the negative texts per class ("no {label}")."""
        if not self.multi_label:
            raise PromptError(f"{self.source}: negative texts exist only in multi_label mode")
        return self._texts(classes, negative=True)

    def to_dict(self) -> dict[str, Any]:
        """The set as plain data (round-trips through `load_prompt_set`)."""
        templates: Any = [t.text for t in self.templates]
        if self.multi_label:
            templates = {
                "positive": [t.text for t in self.templates],
                "negative": [t.text for t in self.negative_templates],
            }
        d: dict[str, Any] = {"version": self.version, "mode": self.mode, "templates": templates}
        if self.description:
            d["description"] = self.description
        if self.classes:
            d["classes"] = {
                c: {k: [str(x) for x in getattr(cp, k)] for k in _CLASS_KEYS if getattr(cp, k)}
                for c, cp in self.classes.items()
            }
        if self.negative_labels:
            d["negative_labels"] = list(self.negative_labels)
        return d


def _templates(value: Any, where: str, src: str, need_placeholder: bool) -> tuple[Template, ...]:
    """A string or list of strings as validated templates (`need_placeholder`: each needs {label})."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise PromptError(f"{src}: {where} must be a list of strings, got {type(value).__name__}")
    hint = (
        "so it would be the same text for every class; put class-specific texts under "
        "classes.<name>.prompts instead"
    )
    out = []
    for i, t in enumerate(value):
        if not isinstance(t, str) or not t.strip():
            raise PromptError(f"{src}: {where}[{i}] must be a non-empty string, got {t!r}")
        out.append(
            Template.parse(
                t,
                (LABEL,),
                source=src,
                where=f"{where}[{i}]",
                error=PromptError,
                missing_hint=hint if need_placeholder else None,
            )
        )
    return tuple(out)


def _check_keys(d: Mapping, valid: Sequence[str], src: str, where: str = "") -> None:
    """Refuse keys outside `valid` with a did-you-mean (a typo would otherwise be ignored)."""
    try:
        check_keys(d, valid, src, f"{where}." if where else "")
    except ConfigError as exc:
        raise PromptError(str(exc)) from None


def _parse_classes(raw: Any, mode: str, src: str) -> dict[str, ClassPrompts]:
    if raw is None:
        return {}
    if isinstance(raw, list):  # plain list of class names
        raw = {c: None for c in raw}
    if not isinstance(raw, dict):
        raise PromptError(f"{src}: `classes` must be a mapping of class name -> settings or a list")
    out = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise PromptError(f"{src}: class names must be non-empty strings, got {name!r}")
        spec = spec or {}
        if not isinstance(spec, dict):
            raise PromptError(
                f"{src}: classes.{name} must be a mapping with {', '.join(_CLASS_KEYS)}"
            )
        _check_keys(spec, _CLASS_KEYS, src, f"classes.{name}")
        if spec.get("negative_prompts") and mode != "multi_label":
            raise PromptError(f"{src}: classes.{name}.negative_prompts needs mode: multi_label")
        names = _templates(spec.get("names", []), f"classes.{name}.names", src, False)
        for n in names:
            if n.fields:
                raise PromptError(
                    f"{src}: classes.{name}.names entry {n.text!r} must not contain placeholders"
                )
        out[name] = ClassPrompts(
            names=tuple(n.text for n in names),
            prompts=_templates(spec.get("prompts", []), f"classes.{name}.prompts", src, False),
            negative_prompts=_templates(
                spec.get("negative_prompts", []), f"classes.{name}.negative_prompts", src, False
            ),
        )
    return out


def _parse(data: Any, src: str) -> PromptSet:
    if not isinstance(data, dict):
        raise PromptError(
            f"{src}: a prompt set must be a mapping with keys version, templates, ..."
        )
    _check_keys(data, _TOP_KEYS, src)
    version = data.get("version")
    if version is None or not str(version).strip():
        raise PromptError(f"{src}: `version` is required (results cite the prompt set by it)")
    mode = str(data.get("mode", "single_label"))
    if mode not in MODES:
        raise PromptError(f"{src}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    raw_t = data.get("templates")
    if raw_t is None:
        raise PromptError(f"{src}: `templates` is required")
    neg: tuple[Template, ...] = ()
    if mode == "multi_label":
        if not isinstance(raw_t, dict) or set(raw_t) != {"positive", "negative"}:
            raise PromptError(
                f"{src}: multi_label templates must be a mapping with exactly `positive` and "
                "`negative` lists (e.g. positive: ['{label}'], negative: ['no {label}'])"
            )
        pos = _templates(raw_t["positive"], "templates.positive", src, True)
        neg = _templates(raw_t["negative"], "templates.negative", src, True)
        if not pos or not neg:
            raise PromptError(f"{src}: templates.positive and templates.negative must not be empty")
    else:
        if isinstance(raw_t, dict):
            raise PromptError(f"{src}: positive/negative templates need mode: multi_label")
        pos = _templates(raw_t, "templates", src, True)
        if not pos:
            raise PromptError(f"{src}: `templates` must not be empty")
    neg_labels = data.get("negative_labels") or []
    if neg_labels and mode != "multi_label":
        raise PromptError(f"{src}: negative_labels needs mode: multi_label")
    if not isinstance(neg_labels, list) or not all(isinstance(x, str) for x in neg_labels):
        raise PromptError(f"{src}: negative_labels must be a list of strings")
    classes = _parse_classes(data.get("classes"), mode, src)
    clash = sorted(set(neg_labels) & set(classes))
    if clash:
        raise PromptError(f"{src}: {', '.join(clash)} cannot be both a class and a negative label")
    return PromptSet(
        version=str(version),
        mode=mode,
        templates=pos,
        negative_templates=neg,
        classes=classes,
        negative_labels=tuple(neg_labels),
        description=str(data.get("description", "")),
        source=src,
    )


def load_prompt_set(path_or_dict: str | Path | Mapping[str, Any] | PromptSet) -> PromptSet:
    """Load and validate a prompt set from a YAML file, a mapping, or pass a PromptSet through.

    Raises:
        PromptError: naming the file and the offending key/template (unknown placeholders, missing
            version, wrong mode structure, ...).
    """
    if isinstance(path_or_dict, PromptSet):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        return _parse(dict(path_or_dict), "<dict>")
    from domainclip.resources import resolve_config_path

    path = resolve_config_path(path_or_dict)
    if not path.is_file():
        raise PromptError(f"prompt set {path} not found (see configs/prompts/ for examples)")
    try:
        data = load_yaml(path)  # duplicate keys are refused, naming both lines
    except ConfigError as exc:
        raise PromptError(str(exc)) from None
    return _parse(data, str(path))
