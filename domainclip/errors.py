"""Exception hierarchy. The CLI prints `DomainClipError` messages without a traceback."""


class DomainClipError(Exception):
    """Base class for user-facing errors: the message must say what is wrong and what to do."""


class ConfigError(DomainClipError):
    """An invalid configuration value, unknown key or malformed spec."""


class DataError(DomainClipError):
    """A manifest, image or data-set problem (the message names the file and row)."""


class BackboneError(DomainClipError):
    """A backbone cannot be built or loaded (missing weights, unreachable hub, bad spec)."""


class ResultFileError(ConfigError):
    """A result file (an evaluation's metrics.json, an audit.json, an explain index.json) cannot be
    used: unreadable, malformed, or written by another domainclip version.

    The message names the file, what is wrong and the command that writes it again. `outdated` is
    True when the file is well-formed but of an older (or newer) schema version: readers show
    that as a warning rather than as damage.
    """

    def __init__(self, message: str, *, outdated: bool = False) -> None:
        super().__init__(message)
        self.outdated = outdated

