"""User-facing errors: one exception type the CLI turns into a clear message and exit status 2."""


class MalmError(Exception):
    """A problem with what the user handed malm (a file, an option, a bundle), not a bug.

    The message must name the input and say what was wrong with it.
    """


class BundleError(MalmError):
    """A bundle that is missing, tampered with, truncated or of an unknown format."""


class ImageError(MalmError):
    """An image that cannot be decoded or is refused (e.g. above the pixel limit)."""


class ConfigError(MalmError, ValueError):
    """An invalid configuration value or key (from a preset, a config file or `--set`)."""
