"""Runs: the one contract between the commands that write a fine-tuning run and those that read it.

`Run(path)` owns the layout (`domainclip.runs.layout`), reads the config, finds checkpoints,
returns the run's calibrator and loads the adapted model. `resolve_model(...)` turns what a user
names (a run directory, a backbone spec or a Backbone) into a model plus the calibrator its
probabilities use; evaluate, audit, explain, the dashboard and the card all go through it.

`domainclip.runs.layout` sits at the bottom of the import layers (the trainer writes runs with
it); `Run` sits above the fine-tuning code it uses to load weights. Importing the layout must
therefore not import `Run`: this package resolves `Run` and friends lazily.
"""

from domainclip.lazy import lazy_exports
from domainclip.runs.layout import RunLayout, is_run

_LAZY = ("ResolvedModel", "Run", "export_merged", "load_adaptation", "load_model", "resolve_model",
         "weights_sha256")
__all__ = ["RunLayout", "is_run", *_LAZY]
__getattr__ = lazy_exports(__name__, dict.fromkeys(_LAZY, "run"))
