"""Errors raised by the explainers (all are `DomainClipError`s, so the CLI prints them cleanly)."""

from __future__ import annotations

from domainclip.errors import DomainClipError


class ExplainError(DomainClipError):
    """An explanation cannot be computed (bad input, empty text, unsupported model)."""


class MethodNotApplicableError(ExplainError):
    """The chosen method does not apply to this backbone; the message names the alternatives."""
