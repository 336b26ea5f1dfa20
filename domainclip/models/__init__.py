"""Backbones: one factory returning model + transforms + tokenizer for every supported family.

Names are re-exported lazily (`domainclip.lazy`) so that importing a submodule that needs no torch
(e.g. `domainclip.models.cli` while the `domainclip` parser is built) does not import torch: the
ONNX Runtime predictor (`domainclip predict --onnx`) runs where torch is not installed.
"""

from domainclip.lazy import lazy_exports

_EXPORTS = {
    "Backbone": "backbone",
    "load_backbone": "backbone",
    "load_tokenizer": "backbone",
    "parse_spec": "backbone",
    "save_backbone": "backbone",
    "TextTokenizer": "tokenizer",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
