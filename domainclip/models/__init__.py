"""Backbones: one factory returning model + transforms + tokenizer for every supported family."""

from domainclip.models.backbone import (
    Backbone,
    load_backbone,
    load_tokenizer,
    parse_spec,
    save_backbone,
)
from domainclip.models.tokenizer import TextTokenizer

__all__ = [
    "Backbone",
    "TextTokenizer",
    "load_backbone",
    "load_tokenizer",
    "parse_spec",
    "save_backbone",
]
