"""Errors that mean "the user asked for something impossible": the CLI maps them to exit 2."""


class InputError(Exception):
    """Bad input (config, data path, impossible partition). One line, names the problem."""


class ConfigError(InputError):
    pass


class DataError(InputError):
    pass


class NonFiniteLossError(RuntimeError):
    """A client's loss became NaN/inf; the run stops and keeps its last good checkpoint."""
