"""Errors shown to the user as one line. A leaf module: every layer imports it, it imports nothing."""


class ConfigError(ValueError):
    """A configuration that cannot run; its message is shown to the user as one line."""
