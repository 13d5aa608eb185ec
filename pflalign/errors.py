"""Errors with a meaning for the command line: bad input (exit 2) and runs that stopped early."""


class InputError(Exception):
    """Bad input (config, data path, impossible partition). One line, names the problem."""


class ConfigError(InputError):
    pass


class DataError(InputError):
    pass


class RunStopped(Exception):
    """The run stopped before its end; the message says what happened and how to resume."""

    exit_code = 1


class RunInterrupted(RunStopped):
    """Ctrl-C (SIGINT): the run directory is resumable from its last checkpoint."""

    exit_code = 130


class NonFiniteLossError(RunStopped):
    """A client's loss became NaN/inf; the run stops and keeps its last good checkpoint."""
