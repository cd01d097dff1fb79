"""The one error type users see: a one-line message naming what is wrong and where."""


class PoisonlabError(ValueError):
    """Bad input (file, shape, value, name or parameter); the CLI prints it as one line and exits 2."""


class DataError(PoisonlabError):
    """A data file is missing, corrupt or holds values outside what its format allows."""


class ConfigError(PoisonlabError):
    """An experiment config or a method parameter is unknown or invalid."""
