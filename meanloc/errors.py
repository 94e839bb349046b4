"""The exceptions the CLI turns into a one-line error, and the one table of exit codes.

Every command follows `EXIT_CODES`; docs/troubleshooting.md prints the same table
(tests/test_hostile_inputs.py checks that the two agree). Raise the exception that says what
went wrong and let `meanloc.cli.main` map it; a command never picks an exit code of its own,
except `EXIT_CHECK_FAILED` from a command whose job is a check (`bank verify`) and a training run
that ended without a model (`TrainingCollapsedError`).
Python 3.8 compatible.
"""

from typing import Dict

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_ARTIFACT_MISMATCH = 3
EXIT_MISSING_DEPENDENCY = 4
EXIT_INTERNAL_ERROR = 70
EXIT_IN_USE = 75
EXIT_INTERRUPTED = 130

EXIT_CODES: Dict[int, str] = {
    EXIT_OK: "success (a stream that skipped bad frames or images still succeeds, and says how many it skipped)",
    EXIT_CHECK_FAILED: "a check ran and found problems (`meanloc bank verify`), or training ended without a model "
    "(collapsed embeddings, or no validation result above chance: `meanloc train`)",
    EXIT_BAD_INPUT: "bad input: a wrong option, a missing, unreadable, damaged or unsafe file (truncated, "
    "corrupt, pickled objects, bad images), no usable data, or an existing output without --overwrite",
    EXIT_ARTIFACT_MISMATCH: "a readable file that is not the meanloc artifact the command needs (a foreign ONNX, "
    "checkpoint or engine, another kind of manifest), or artifacts that do not belong together (bank vs "
    "model, engine vs TensorRT/GPU, calibration cache vs ONNX)",
    EXIT_MISSING_DEPENDENCY: "a Python package or library the command needs is not installed",
    EXIT_INTERNAL_ERROR: "internal error: a bug in meanloc (set MEANLOC_DEBUG=1 for the traceback and report it)",
    EXIT_IN_USE: "the output folder is in use by another meanloc process (its lock names the pid); retry when it "
    "has finished",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); outputs hold whole records up to the interruption",
}


class MeanlocError(Exception):
    """A problem with the user's input or environment, explained in one sentence.

    Raise it (or a subclass) wherever bad input is detected; `meanloc.cli.main` prints
    `meanloc: error: <message>` and exits with `exit_code`, never with a traceback.
    """

    exit_code = EXIT_BAD_INPUT


class ArtifactMismatchError(MeanlocError):
    """A foreign artifact, or two artifacts that must belong together but do not (bank vs model, ...)."""

    exit_code = EXIT_ARTIFACT_MISMATCH


class MissingDependencyError(MeanlocError):
    """A package the command needs is not installed; the message says what to install."""

    exit_code = EXIT_MISSING_DEPENDENCY


class FolderInUseError(MeanlocError):
    """Another live process holds the lock of the folder this command would write."""

    exit_code = EXIT_IN_USE


def first_sentence(text: str) -> str:
    """The first sentence of a library's message, to quote inside ours without cutting it mid-word."""
    words = " ".join(str(text).split())
    for index in range(len(words)):
        if words[index] in ".!?" and (index + 1 == len(words) or words[index + 1] == " "):
            return words[: index + 1]
    return words
