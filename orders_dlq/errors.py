"""The exceptions the library raises for the CLI to turn into one sentence and an exit code."""

# The exit codes of every script: 2 for an operator mistake, 1 for a run that could not do its job.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The operator asked for something impossible: bad flag, bad .env value, missing schema. Exit 2."""


class ToolFailure(Exception):
    """The run could not do its job: unreachable broker, missing topic, fenced. Exit 1."""


class NotKept(ToolFailure):
    """Dead letters Kafka could not take and the spool could not keep either (a full disk, a file
    made read-only); `cause` is the spool's own error."""

    def __init__(self, sentence: str, cause: str):
        super().__init__(sentence)
        self.cause = cause
