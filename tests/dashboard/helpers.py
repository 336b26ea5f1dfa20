"""Helpers to read what an AppTest run rendered."""

from __future__ import annotations

from typing import Any

from streamlit.testing.v1 import AppTest

_TEXT_KINDS = (
    "title",
    "header",
    "subheader",
    "markdown",
    "caption",
    "text",
    "info",
    "warning",
    "error",
    "success",
    "code",
    "json",
)


def page_text(at: AppTest) -> str:
    """Every piece of text on the page: headings, captions, alerts, metrics, tables, options."""
    parts: list[str] = []
    for kind in _TEXT_KINDS:
        parts += [str(e.value) for e in at.get(kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    parts += [df.value.to_csv() for df in at.dataframe]
    for w in (*at.selectbox, *at.multiselect, *at.radio):
        parts += [str(o) for o in w.options]
    parts += [c for im in at.image for c in im.captions]
    parts += [str(h.proto) for h in at.get("html")]
    return "\n".join(parts)


def metrics(at: AppTest) -> dict[str, str]:
    """Metric label -> displayed value."""
    return {m.label: m.value for m in at.metric}


def widget(at: AppTest, kind: str, label: str) -> Any:
    """The first widget of `kind` ("selectbox", "radio", ...) with this label."""
    for w in at.get(kind):
        if w.label == label:
            return w
    raise AssertionError(f"no {kind} labelled {label!r}; have {[w.label for w in at.get(kind)]}")


def captions(at: AppTest) -> list[str]:
    """Captions of every image on the page."""
    return [c for im in at.image for c in im.captions]


def no_exceptions(at: AppTest) -> None:
    """Fail with the app's own traceback text when a page raised."""
    assert not at.exception, [e.value for e in at.exception]
