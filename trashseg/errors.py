"""Errors that carry a message meant for the user: what was wrong, what was expected, the fix."""


class UserError(Exception):
    """Bad input or configuration. The CLI prints the message and exits with status 2."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid."""


class DataError(UserError, ValueError):
    """A dataset, annotation file or prediction folder cannot be used as given."""
