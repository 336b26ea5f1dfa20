"""domainclip: adapt CLIP-style image-text models to medical and industrial imaging.

Importing the package makes the process offline-safe before any third-party import:
albumentations would otherwise ask PyPI for a newer version at import, and Hugging Face
libraries would try the hub. Users can still override both variables explicitly.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone"]


def __getattr__(name: str):
    # Lazy: `import domainclip` stays cheap (the CLI imports torch only when a command needs it).
    if name == "load_backbone":
        from domainclip.models import load_backbone

        return load_backbone
    raise AttributeError(name)
