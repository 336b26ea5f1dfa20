"""Text quality of a manifest: placeholder and boilerplate texts, texts shared across classes, and
label leakage (the label's own word inside the text).

What is checked, and only this (`data validate` / `data stats` report it, `evaluate` reacts to
leakage):

* **placeholder**: the text matches a template phrase left in by an export ("Replace this",
  "DESCRIPTION OF THE IMAGE", "lorem ipsum", "TBD", "TODO", "insert ... here", "placeholder",
  "n/a", "none", "-") or has fewer than `MIN_WORDS` words;
* **repeated**: one text used by at least `REPEAT_MIN_ROWS` rows and at least `REPEAT_MIN_FRACTION`
  of all rows (boilerplate; texts generated from boxes repeat too, which is worth knowing: a
  repeated text is one retrieval candidate, and the model learns it as a class name);
* **shared across classes**: one text on rows of two or more different labels (the text cannot
  tell them apart);
* **label leakage**: the text contains the row's own label as words: the class name with ``_`` /
  ``-`` as spaces, its simple variants (plural ``s`` / ``es``, singular), and the prompt set's
  synonyms (`names:`), matched as whole words, case-insensitively. Reported per class as the
  fraction of its rows. A text that names its label ("CT abdomen ...") lets text-side scores
  and retrieval read the label instead of the image: `mask_label_words` replaces those words
  with ``[MASK]`` so an evaluation can be repeated without them.

Rows are reported by their manifest row number (1-based data rows), never by file name.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from domainclip.templates import humanise

MIN_WORDS = 3
REPEAT_MIN_ROWS = 5
REPEAT_MIN_FRACTION = 0.02
LEAK_MIN_FRACTION = 0.2  # a class whose texts name it this often is reported as leaking
MASK = "[MASK]"
_EXAMPLE_ROWS = 10
PLACEHOLDER_PATTERNS: tuple[str, ...] = (
    r"\breplace this\b",
    r"\bdescription of the (image|finding)",
    r"\blorem ipsum\b",
    r"\btbd\b",
    r"\btodo\b",
    r"\binsert\b.*\bhere\b",
    r"\bplaceholder\b",
    r"\bto be (added|completed|written)\b",
    r"^\W*(n/?a|none|null|nan|unknown|-+|\?+|x+|\.+)\W*$",
)
_PLACEHOLDER = re.compile("|".join(PLACEHOLDER_PATTERNS), re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class TextQuality:
    """Text-quality findings of a list of rows (see the module docstring).

    Attributes:
        n_rows: rows checked.
        placeholder: row numbers of placeholder-like or very short texts.
        placeholder_texts: up to 5 distinct such texts, each with its row count.
        repeated: text -> row numbers, for texts used by many rows (boilerplate).
        n_distinct_texts: distinct texts; n_rows_sharing: rows whose text another row also has.
        shared_across_classes: text -> {"labels": [...], "rows": [...]} (up to 10 texts).
        n_shared_across_classes: texts on rows of two or more labels.
        leakage: class -> {"n": rows, "n_leaking": rows whose text names the class,
            "fraction", "words": the words found, "rows": the first row numbers}.
        leaking_classes: classes with fraction >= `LEAK_MIN_FRACTION`.
    """

    n_rows: int = 0
    placeholder: list[int] = field(default_factory=list)
    placeholder_texts: dict[str, int] = field(default_factory=dict)
    repeated: dict[str, list[int]] = field(default_factory=dict)
    n_distinct_texts: int = 0
    n_rows_sharing: int = 0
    shared_across_classes: dict[str, dict[str, list]] = field(default_factory=dict)
    n_shared_across_classes: int = 0
    leakage: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaking_classes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """True when anything is worth a reviewer's look."""
        return bool(
            self.placeholder
            or self.repeated
            or self.n_shared_across_classes
            or self.leaking_classes
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flagged": self.flagged}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextQuality:
        """The inverse of `to_dict` (unknown keys ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def caveats(self) -> list[str]:
        """One sentence per finding, for a model card's limitations (empty when clean)."""
        out = []
        if self.placeholder:
            out.append(
                f"{len(self.placeholder)} of {self.n_rows} texts are placeholders or very short "
                "(e.g. an export's 'Replace this' template): the model was trained on them as "
                "descriptions. `domainclip data validate` lists their rows."
            )
        if self.n_shared_across_classes:
            out.append(
                f"{self.n_shared_across_classes} text(s) are used for images of different "
                "classes."
            )
        if self.leaking_classes:
            parts = ", ".join(
                f"{c} ({self.leakage[c]['fraction']:.0%})" for c in self.leaking_classes
            )
            out.append(
                f"Texts name their own label for: {parts}. Retrieval and text-side scores on "
                "them partly measure reading the label word (evaluate reports retrieval with "
                "those words masked)."
            )
        return out

    def format(self) -> list[str]:
        """Lines for `data validate` / `data stats` (row numbers, never file names)."""
        lines = [
            f"text quality: {self.n_distinct_texts} distinct texts in {self.n_rows} rows "
            f"({self.n_rows_sharing} rows share their text with another row)"
        ]
        if self.placeholder:
            texts = "; ".join(f"{_short(t)!r} x{n}" for t, n in self.placeholder_texts.items())
            lines.append(
                f"  placeholder or very short texts (< {MIN_WORDS} words): "
                f"{len(self.placeholder)} rows ({_rows(self.placeholder)}): {texts}"
            )
        for text, rows in list(self.repeated.items())[:5]:
            lines.append(f"  repeated text in {len(rows)} rows ({_rows(rows)}): {_short(text)!r}")
        if len(self.repeated) > 5:
            lines.append(f"  ... and {len(self.repeated) - 5} more repeated texts")
        if self.n_shared_across_classes:
            lines.append(
                f"  texts shared across classes: {self.n_shared_across_classes} (a text that "
                "describes two classes cannot tell them apart)"
            )
            for text, d in list(self.shared_across_classes.items())[:5]:
                lines.append(
                    f"    {_short(text)!r}: labels {', '.join(d['labels'])} "
                    f"(rows {_rows(d['rows'])})"
                )
        for c in self.leaking_classes:
            d = self.leakage[c]
            lines.append(
                f"  label leakage: {d['n_leaking']} of {d['n']} '{c}' texts "
                f"({d['fraction']:.0%}) contain the label ({', '.join(d['words'])}; rows "
                f"{_rows(d['rows'])}): text-side scores can read the label instead of the image"
            )
        if not self.flagged:
            lines.append("  no placeholder, boilerplate, shared or label-naming texts found")
        return lines


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _rows(rows: Sequence[int]) -> str:
    shown = ", ".join(map(str, rows[:_EXAMPLE_ROWS]))
    return shown + (", ..." if len(rows) > _EXAMPLE_ROWS else "")


def is_placeholder(text: str) -> bool:
    """True for a template phrase left in by an export, or a text of fewer than MIN_WORDS words."""
    return bool(_PLACEHOLDER.search(text.strip())) or len(text.split()) < MIN_WORDS


def _variants(word: str) -> set[str]:
    out = {word}
    if len(word) > 2:
        out |= {word + "s", word + "es"}
        if word.endswith("es"):
            out.add(word[:-2])
        if word.endswith("s"):
            out.add(word[:-1])
    return out


def label_phrases(label: str, synonyms: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """The word sequences that count as naming `label`: the class name humanised, its synonyms,
    and each with its last word pluralised / singularised (e.g. "scratches" -> "scratch")."""
    phrases: set[tuple[str, ...]] = set()
    for name in (label, humanise(label), *synonyms):
        words = tuple(_WORD.findall(name.lower()))
        if not words:
            continue
        for last in _variants(words[-1]):
            phrases.add((*words[:-1], last))
    return sorted(phrases, key=lambda p: (-len(p), p))


def _find(words: list[str], phrase: tuple[str, ...]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(words) - n + 1) if tuple(words[i : i + n]) == phrase]


def leaked_words(text: str, phrases: Sequence[tuple[str, ...]]) -> list[str]:
    """The phrases (joined by spaces) of `phrases` found in `text` as whole words."""
    words = _WORD.findall(text.lower())
    return [" ".join(p) for p in phrases if _find(words, p)]


def mask_label_words(text: str, phrases: Sequence[tuple[str, ...]]) -> str:
    """`text` with every occurrence of the phrases (whole words, any case) replaced by MASK."""
    out = text
    for p in phrases:  # longest first (label_phrases' order), so "rolled in scale" beats "scale"
        pattern = r"\b" + r"[\s_\-]+".join(re.escape(w) for w in p) + r"\b"
        out = re.sub(pattern, MASK, out, flags=re.IGNORECASE)
    return out


def label_synonyms(
    labels: Sequence[str], names: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[tuple[str, ...]]]:
    """label -> its phrases (`label_phrases` with the prompt set's `names` synonyms)."""
    names = names or {}
    return {lab: label_phrases(lab, names.get(lab, ())) for lab in labels}


def text_quality(
    rows: Sequence[Any],
    names: Mapping[str, Sequence[str]] | None = None,
    *,
    repeat_min_rows: int = REPEAT_MIN_ROWS,
    repeat_min_fraction: float = REPEAT_MIN_FRACTION,
    leak_min_fraction: float = LEAK_MIN_FRACTION,
) -> TextQuality:
    """Check the texts of manifest rows (objects with `row`, `text`, `label`).

    Args:
        names: class -> synonyms (a prompt set's `names:`), matched besides the class name.
    """
    q = TextQuality(n_rows=len(rows))
    by_text: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_text[r.text.strip()].append(r)
    q.n_distinct_texts = len(by_text)
    q.n_rows_sharing = sum(len(rs) for rs in by_text.values() if len(rs) > 1)
    placeholder_counts: Counter[str] = Counter()
    for text, rs in by_text.items():
        if is_placeholder(text):
            q.placeholder += [r.row for r in rs]
            placeholder_counts[text] = len(rs)
        if len(rs) >= max(repeat_min_rows, repeat_min_fraction * len(rows)):
            q.repeated[text] = sorted(r.row for r in rs)
        labels = sorted({lab for r in rs for lab in (r.label or [])})
        if len({tuple(r.label) for r in rs if r.label}) > 1:
            q.n_shared_across_classes += 1
            if len(q.shared_across_classes) < 10:
                q.shared_across_classes[text] = {"labels": labels, "rows": sorted(r.row for r in rs)}
    q.placeholder.sort()
    q.placeholder_texts = dict(placeholder_counts.most_common(5))
    q.repeated = dict(sorted(q.repeated.items(), key=lambda kv: -len(kv[1])))
    q.leakage = _leakage(rows, names)
    q.leaking_classes = [c for c, d in q.leakage.items() if d["fraction"] >= leak_min_fraction]
    return q


def _leakage(rows: Sequence[Any], names: Mapping[str, Sequence[str]] | None) -> dict[str, dict]:
    labels = sorted({lab for r in rows for lab in (r.label or [])})
    phrases = label_synonyms(labels, names)
    n: Counter[str] = Counter()
    hits: dict[str, list[int]] = defaultdict(list)
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        for lab in r.label or []:
            n[lab] += 1
            words = leaked_words(r.text, phrases[lab])
            if words:
                hits[lab].append(r.row)
                found[lab].update(words)
    return {
        lab: {
            "n": n[lab],
            "n_leaking": len(hits[lab]),
            "fraction": round(len(hits[lab]) / n[lab], 4) if n[lab] else 0.0,
            "words": [w for w, _ in found[lab].most_common(5)],
            "rows": hits[lab][:_EXAMPLE_ROWS],
        }
        for lab in labels
    }
