"""Exception hierarchy. The CLI prints `DomainClipError` messages without a traceback."""


class DomainClipError(Exception):
    """Base class for user-facing errors: the message must say what is wrong and what to do."""


class ConfigError(DomainClipError):
    """An invalid configuration value, unknown key or malformed spec."""


class DataError(DomainClipError):
    """A manifest, image or data-set problem (the message names the file and row)."""


class BackboneError(DomainClipError):
    """A backbone cannot be built or loaded (missing weights, unreachable hub, bad spec)."""
