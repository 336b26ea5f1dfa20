"""Text templates with named placeholders, and the one way to make a class name readable.

Prompt sets (`{label}`), audit specs (`{finding}`) and the folder importer (`{class}`) all turn a
class name into a sentence through a template. They share this one type: a template is parsed
once when its config is read (so a typo fails there, naming the file, the key and the bad
placeholder), knows which placeholders it uses, and is filled later without re-validation.

Syntax: `{name}` is a placeholder; literal braces are written `{{` and `}}` (Python's
`str.format` rules, which is also how the text is filled). A `Slot` is one placeholder with its
accepted synonyms: `Slot("label", ("finding", "defect"))` accepts all three spellings and fills
them with the same value.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from domainclip.errors import ConfigError, DomainClipError


def humanise(name: str) -> str:
    """A class name as words: underscores and hyphens become spaces, whitespace is collapsed.

    >>> humanise("rolled-in_scale")
    'rolled in scale'
    """
    return " ".join(name.replace("_", " ").replace("-", " ").split())


@dataclass(frozen=True)
class Slot:
    """One placeholder a template may use: its name and the synonyms accepted for it."""

    name: str
    synonyms: tuple[str, ...] = ()

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)

    def describe(self) -> str:
        """'{label}' or '{label} (or {finding}, {defect})' for error messages."""
        own = "{" + self.name + "}"
        if not self.synonyms:
            return own
        return f"{own} (or {', '.join('{' + s + '}' for s in self.synonyms)})"


def _field_names(text: str) -> list[str]:
    """Names of the `{...}` fields in `text` ("" for a bare `{}`). Raises ValueError if malformed."""
    return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


@dataclass(frozen=True)
class Template:
    """A parsed template.

    Attributes:
        text: the template as written (serialise this).
        slots: the placeholders it may use.
        fields: names of the slots it uses (canonical names, first-use order, no repeats).
    """

    text: str
    slots: tuple[Slot, ...] = field(repr=False)
    fields: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        text: str,
        slots: Sequence[Slot],
        *,
        source: str,
        where: str,
        error: type[DomainClipError] = ConfigError,
        missing_hint: str | None = None,
    ) -> Template:
        """Parse and validate `text`.

        Args:
            slots: the allowed placeholders (with synonyms).
            source: the file (or "<dict>") the template comes from; where: its key, e.g.
                "templates[0]". Both start every error message.
            error: the exception type to raise (the caller's ConfigError/DataError subclass).
            missing_hint: when given, a template without any placeholder is an error; the hint
                says why and what to write instead.

        Raises:
            error: malformed braces, an unknown placeholder (named, with the allowed ones), or
                no placeholder when one is required.
        """
        try:
            names = _field_names(text)
        except ValueError as exc:
            raise error(
                f"{source}: {where} {text!r} is malformed ({exc}); write literal braces as {{{{ }}}}"
            ) from exc
        canonical = {s: slot.name for slot in slots for s in slot.spellings}
        bad = [repr(n) if n else "{}" for n in names if n not in canonical]
        if bad:
            allowed = ", ".join(slot.describe() for slot in slots) or "none"
            raise error(
                f"{source}: {where} {text!r} has unknown placeholder(s) {', '.join(bad)}; "
                f"allowed: {allowed}"
            )
        if missing_hint is not None and not names:
            raise error(
                f"{source}: {where} {text!r} has no {{{slots[0].name}}} placeholder, "
                f"{missing_hint}"
            )
        used = tuple(dict.fromkeys(canonical[n] for n in names))
        return cls(text=text, slots=tuple(slots), fields=used)

    def fill(self, **values: str) -> str:
        """The text with each slot (and its synonyms) replaced by `values[slot.name]`.

        Raises:
            KeyError: a slot the template uses has no value (a programming error, not user input).
        """
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise KeyError(f"template {self.text!r} needs a value for {', '.join(missing)}")
        mapping = {
            s: values[slot.name] for slot in self.slots if slot.name in values for s in slot.spellings
        }
        return self.text.format(**mapping)

    def __str__(self) -> str:
        return self.text
