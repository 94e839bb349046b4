"""The `meanloc` command.

Each subcommand lives in a small `*_cli` module next to the stage it drives. Only the chosen
one is imported, so `meanloc localize` on a Jetson never imports torch, and `meanloc --help`
is instant. A command module exposes `configure(parser)`, which adds its options (and its own
sub-subcommands) and sets `handler` to a function `handler(args) -> int`.
"""

import argparse
import importlib
import os
import sys
from typing import Dict, List, Optional, Tuple

from meanloc import __version__
from meanloc.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_MISSING_DEPENDENCY,
    MeanlocError,
)

# name -> (module that configures it, one-line help). Order is the order users meet them.
COMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": ("meanloc.demo_cli", "run the whole pipeline on the embedded synthetic world"),
    "data": ("meanloc.training.data_cli", "synthesise cross-view datasets from a (synthetic or real) orthophoto"),
    "model": ("meanloc.training.model_cli", "inspect MEAN presets: parameters and MACs per module"),
    "train": ("meanloc.training.train_cli", "train MEAN (single process or torchrun DDP)"),
    "eval": ("meanloc.training.eval_cli", "Recall@K / AP evaluation on University-1652, SUES-200 or synthetic data"),
    "export": ("meanloc.export.export_cli", "export a checkpoint to ONNX, or ONNX to a TensorRT engine"),
    "calibrate": ("meanloc.calibration.calibrate_cli", "INT8 calibration: TensorRT cache and Q/DQ ONNX models"),
    "report": ("meanloc.calibration.report_cli", "accuracy reports (precision: FP32 vs FP16/INT8)"),
    "bank": ("meanloc.runtime.bank_cli", "build, inspect, verify and merge satellite embedding banks"),
    "localize": ("meanloc.runtime.localize_cli", "run the onboard localization loop on a video, camera or synthetic flight"),
    "profile": ("meanloc.runtime.profiling.profile_cli", "latency profiling of backends and engines"),
    "doctor": ("meanloc.doctor_cli", "show what this machine has (backends, versions, GPU, Jetson); --selftest"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meanloc",
        description="Drone geo-localization without GNSS (MEAN embeddings + satellite tile bank).",
        epilog="Run `meanloc <command> --help` for the options of a command. "
        "Set MEANLOC_DEBUG=1 to see tracebacks.",
    )
    parser.add_argument("--version", action="version", version="meanloc " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def build_command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one subcommand (imports only that command's module)."""
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="meanloc " + name, description=help_text)
    module.configure(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return EXIT_BAD_INPUT
        parser.parse_args(argv)  # prints help/version, or the "invalid choice" error
        return EXIT_BAD_INPUT
    try:
        parser = build_command_parser(argv[0])
        args = parser.parse_args(argv[1:])
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        return int(handler(args) or 0)
    except BaseException as exc:  # the one place where exceptions become exit codes
        if isinstance(exc, SystemExit):
            raise
        code, message = exit_status(exc)
        if os.environ.get("MEANLOC_DEBUG") and code != EXIT_INTERRUPTED:
            raise
        print(message, file=sys.stderr)
        return code


def exit_status(exc: BaseException) -> Tuple[int, str]:
    """(exit code, the line to print) for an exception that ended a command (see errors.EXIT_CODES)."""
    if isinstance(exc, MeanlocError):
        return exc.exit_code, "meanloc: error: " + as_sentence(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "meanloc: interrupted."
    if isinstance(exc, ModuleNotFoundError):
        return EXIT_MISSING_DEPENDENCY, (
            "meanloc: error: this command needs the Python package '{}', which is not installed "
            "(see README: installation extras).".format(exc.name))
    if isinstance(exc, OSError):
        where = " ({})".format(exc.filename) if exc.filename else ""
        return EXIT_BAD_INPUT, "meanloc: error: " + as_sentence("{}{}".format(exc.strerror or exc, where))
    if isinstance(exc, ValueError):
        return EXIT_BAD_INPUT, "meanloc: error: " + as_sentence(str(exc))
    # A bug, not bad input: still one line, but say how to see more.
    return EXIT_INTERNAL_ERROR, "meanloc: internal error: {}: {} (set MEANLOC_DEBUG=1 for the traceback).".format(
        type(exc).__name__, " ".join(str(exc).split()))


def as_sentence(text: str) -> str:
    """One line that ends like a sentence: whitespace runs (newlines too) collapse to one space."""
    text = " ".join(text.split()) or "unknown error"
    return text if text.endswith((".", "!", "?")) else text + "."
