"""Errors that carry a message meant for the user: what was wrong, what was expected, the fix."""


class UserError(Exception):
    """Bad input or configuration. The CLI prints the message and exits with status 2."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid."""


class DataError(UserError, ValueError):
    """A dataset, annotation file or prediction folder cannot be used as given."""


class OutputError(UserError, OSError):
    """An output file could not be written (a full disk, no permission). Also an OSError,
    so callers that handle OS errors keep working."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()
