"""The command line's shared vocabulary: one definition for each option that many commands take.

Like Polygraphy's argument groups (`ModelArgs`, `TrtConfigArgs`), every command adds its model,
data, batch size, threads, output, overwrite and progress options through these functions, so
`--batch-size` is spelled, typed and validated the same in every command. Spellings replaced in
0.1 stay as hidden aliases for one release (`add_hidden_alias`). tests/test_cli_vocabulary.py walks
every command's parser and holds it to this. Python 3.8, stdlib only (the command shell imports it).
"""

import argparse
from typing import Any, Callable, Optional

# The dataset layouts every reader understands ('synthetic' is `meanloc data synth` output, in the
# University-1652 layout).
DATASETS = ("university", "synthetic", "sues200")


def _number(kind: Callable[[str], Any], minimum: float, strict: bool) -> Callable[[str], Any]:
    word = "positive" if strict else "non-negative"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected a {} {}, got {!r}".format(
                word, "integer" if kind is int else "number", text)) from None
        if not (value > minimum if strict else value >= minimum):  # NaN fails both
            raise argparse.ArgumentTypeError("must be {} {:g}, got {!r}".format(">" if strict else ">=", minimum, text))
        return value

    parse.__name__ = "{}_{}".format(word.replace("-", "_"), kind.__name__)
    return parse


positive_int = _number(int, 0, strict=True)
positive_float = _number(float, 0.0, strict=True)
non_negative_float = _number(float, 0.0, strict=False)


def positive_int_list(text: str) -> list:
    """'1,8,32' -> [1, 8, 32]."""
    return [positive_int(part.strip()) for part in text.split(",") if part.strip()] or [positive_int(text)]


def add_hidden_alias(parser: Any, old: str, canonical: argparse.Action) -> None:
    """Accept `old` (a spelling replaced in 0.1) for one release: same destination and validation, not in --help."""
    kwargs = {"dest": canonical.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
    if canonical.nargs == 0:  # a flag
        kwargs.update(action="store_const", const=canonical.const)
    else:
        kwargs.update(type=canonical.type, choices=canonical.choices, nargs=canonical.nargs,
                      metavar=canonical.metavar)
    parser.add_argument(old, **kwargs)


def add_model(parser: Any, help: str, required: bool = True, repeatable: bool = False) -> argparse.Action:
    """--model PATH: what the backends run (.onnx with ONNX Runtime, .engine with TensorRT, a checkpoint with PyTorch)."""
    if repeatable:
        return parser.add_argument("--model", action="append", default=[], metavar="PATH", help=help)
    return parser.add_argument("--model", required=required, default=None, metavar="PATH", help=help)


def add_data(parser: Any, required: bool = True, dataset_default: Optional[str] = "university",
             help: str = "dataset root (University-1652 layout, or SUES-200)") -> argparse.Action:
    """--data ROOT and --dataset LAYOUT."""
    data = parser.add_argument("--data", required=required, default=None, metavar="ROOT", help=help)
    parser.add_argument("--dataset", choices=DATASETS, default=dataset_default,
                        help="dataset layout: {} (default: {})".format(", ".join(DATASETS), dataset_default or
                                                                        "the recipe's"))
    return data


def add_batch_size(parser: Any, default: Optional[int], help: str, old: Optional[str] = None) -> argparse.Action:
    """--batch-size N (> 0); `old`: the spelling it replaces (e.g. --batch), accepted hidden for one release."""
    action = parser.add_argument("--batch-size", type=positive_int, default=default, metavar="N", help=help)
    if old:
        add_hidden_alias(parser, old, action)
    return action


def add_threads(parser: Any, help: str = "CPU threads for inference (default: all cores)") -> argparse.Action:
    """--threads N (> 0)."""
    return parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=help)


def add_out(parser: Any, help: str, required: bool = True, default: Optional[str] = None,
            old: Optional[str] = None) -> argparse.Action:
    """--out PATH: the file or folder the command writes."""
    action = parser.add_argument("--out", required=required and default is None, default=default, metavar="PATH",
                                 help=help)
    if old:
        add_hidden_alias(parser, old, action)
    return action


def add_overwrite(parser: Any, help: str = "replace existing outputs (only once the new ones are complete)") -> argparse.Action:
    """--overwrite: without it no command replaces an existing output."""
    return parser.add_argument("--overwrite", action="store_true", help=help)


def add_progress(parser: Any, old: Optional[str] = None, help: str = "hide progress bars") -> argparse.Action:
    """--no-progress: hide progress bars and build progress (logs and CI)."""
    action = parser.add_argument("--no-progress", action="store_true", help=help)
    if old:
        add_hidden_alias(parser, old, action)
    return action
