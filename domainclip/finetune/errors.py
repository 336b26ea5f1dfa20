"""Fine-tuning errors (all `DomainClipError`: the CLI prints them without a traceback)."""

from domainclip.errors import DomainClipError


class CheckpointError(DomainClipError):
    """A run directory or checkpoint is missing, incomplete, or does not match the config."""


class TrainingDiverged(DomainClipError):
    """The loss or the gradients became NaN/inf; the last good checkpoint was kept."""
