"""TensorRT for meanloc: the one import (with its install hint and version gate) and the one logger.

- `import_tensorrt()` is how every meanloc module gets `tensorrt`: one install hint, and one gate
  for every precision and every use. meanloc supports 8.5 (JetPack 5), 8.6 (JetPack 6.0) and 10.x
  (JetPack 6.1/6.2, x86). 11 removed the FP16/INT8 builder flags, implicit quantization and the
  calibrators, supports no JetPack 6 (deployment.md §1), and nothing here has been tested on it.
- `tensorrt_logger(trt)` is the process-wide `trt.ILogger`. TensorRT keeps a single logger pointer
  while any builder, runtime or refitter lives ("TensorRT maintains only a single logger pointer at
  any given time ... the existing value ... will be used instead", NVIDIA/TensorRT#1475), so a logger
  made per build would silently receive nothing while a backend's runtime is alive. Like Polygraphy
  (`get_trt_logger`, backend/trt/util.py) meanloc makes one; `capture_tensorrt_log` attaches a
  per-build buffer to it for as long as a build runs. Outside a capture, warnings and errors go to
  stderr. TensorRT may call `log` from its own threads ("The Logger object implementation must be
  thread safe", NvInferRuntimeBase.h), hence the lock.

Python 3.8, torch-free; `tensorrt` is imported only when asked for.
"""

import contextlib
import re
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple

from meanloc.errors import MeanlocError, MissingDependencyError

INSTALL_HINT = (
    "on a Jetson TensorRT comes with JetPack (sudo apt install python3-libnvinfer; create the venv with "
    "--system-site-packages); on an x86 GPU machine: pip install 'tensorrt>=10,<11'"
)
OLDEST_SUPPORTED = (8, 5)
FIRST_UNSUPPORTED_MAJOR = 11
# ILogger.Severity values (NvInferRuntimeBase.h): smaller is more severe.
SEVERITY_NAMES = {0: "INTERNAL_ERROR", 1: "ERROR", 2: "WARNING", 3: "INFO", 4: "VERBOSE"}
WARNING = 2
INFO = 3


def version_tuple(version: str) -> Tuple[int, int, int]:
    """'10.3.0.26' -> (10, 3, 0)."""
    parts = [int(p) for p in re.findall(r"\d+", str(version))[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def check_supported_version(version: str) -> None:
    """Refuse, in one line, a TensorRT meanloc does not support (any precision, build or run)."""
    major, minor, _ = version_tuple(version)
    if (major, minor) < OLDEST_SUPPORTED:
        raise MeanlocError(
            "TensorRT {} is too old: meanloc needs 8.5 (JetPack 5), 8.6 (JetPack 6.0) or 10.x (JetPack 6.1/6.2, "
            "x86)".format(version)
        )
    if major >= FIRST_UNSUPPORTED_MAJOR:
        raise MeanlocError(
            "TensorRT {} is not supported: TensorRT 11 removed the FP16/INT8 builder flags and INT8 calibration, "
            "and supports no JetPack 6; install TensorRT 10.x (pip install 'tensorrt>=10,<11')".format(version)
        )


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line MeanlocError saying how to install a supported one
    (MissingDependencyError, exit 4, when it is not installed at all)."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("TensorRT is not installed: " + INSTALL_HINT) from None
    except Exception as exc:  # a broken CUDA/numpy install makes the bindings raise other errors
        raise MeanlocError(
            "TensorRT is installed but does not import ({}: {})".format(type(exc).__name__, exc)
        ) from None
    check_supported_version(str(getattr(tensorrt, "__version__", "0")))
    return tensorrt


def enum_name(value: Any) -> str:
    """`DataType.FLOAT` -> 'FLOAT' (pybind11 enums have `.name`)."""
    return str(getattr(value, "name", value)).split(".")[-1]


class TensorRTLog:
    """The lines TensorRT logged while a capture was open ("[WARNING] text"), most severe first on demand."""

    def __init__(self, min_severity: int, echo: Optional[Callable[[str], None]]) -> None:
        self.min_severity = min_severity
        self.echo = echo
        self.lines: List[str] = []

    def add(self, severity: int, message: str) -> None:
        if severity > self.min_severity:
            return
        line = "[{}] {}".format(SEVERITY_NAMES.get(severity, str(severity)), message)
        self.lines.append(line)
        if self.echo is not None and severity <= WARNING:
            self.echo(line)

    def errors(self) -> List[str]:
        return [line for line in self.lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]

    def warnings(self) -> List[str]:
        return [line for line in self.lines if line.startswith("[WARNING]")]


_lock = threading.Lock()
_captures: List[TensorRTLog] = []
_logger: Any = None
_logger_module: Any = None


def _stderr(line: str) -> None:
    print("TensorRT: " + line, file=sys.stderr, flush=True)


def tensorrt_logger(trt: Any) -> Any:
    """The one `trt.ILogger` of this process (made on first use, per imported tensorrt module)."""
    global _logger, _logger_module
    with _lock:
        if _logger is not None and _logger_module is trt:
            return _logger

        class ProcessLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)  # pybind11 trampolines must be initialised explicitly

            def log(self, severity: Any, msg: str) -> None:
                # Called by TensorRT through a noexcept C++ function: it must never raise.
                try:
                    level = int(severity)
                    with _lock:
                        captures = list(_captures)
                    for capture in captures:
                        capture.add(level, str(msg))
                    if not captures and level <= WARNING:
                        _stderr("[{}] {}".format(SEVERITY_NAMES.get(level, level), msg))
                except Exception:  # pragma: no cover - defensive: a logging failure must not kill TensorRT
                    pass

        _logger = ProcessLogger()
        _logger_module = trt
        return _logger


@contextlib.contextmanager
def capture_tensorrt_log(
    min_severity: int = WARNING, echo: Optional[Callable[[str], None]] = None
) -> Iterator[TensorRTLog]:
    """Collect what TensorRT logs (at `min_severity` or worse) until the block ends."""
    capture = TensorRTLog(min_severity, echo)
    with _lock:
        _captures.append(capture)
    try:
        yield capture
    finally:
        with _lock:
            _captures.remove(capture)
