"""Errors a user can act on, and the process exit codes that report them."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2
# EX_TEMPFAIL: the job was stopped on purpose and should be started again.
EXIT_PREEMPTED = 75
# No step completed in time: the watchdog ended the run.
EXIT_HUNG = 76
# The loss diverged beyond what recovery may fix: a restart would not help.
EXIT_DIVERGED = 77


class ConfigError(ValueError):
    """Bad configuration or input: reported as one line, exit code EXIT_CONFIG_ERROR."""
