"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class MeanlocError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Raise it (or a subclass) wherever bad input is detected; `meanloc.cli.main` prints
    `meanloc: error: <message>` and exits with `exit_code`, never with a traceback.
    """

    exit_code = 2


class ArtifactMismatchError(MeanlocError):
    """Two artifacts that must belong together do not (bank vs model, engine vs GPU, ...)."""

    exit_code = 3
