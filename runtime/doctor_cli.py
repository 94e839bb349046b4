"""`meanloc doctor`: what this machine has for running meanloc, one line per item.

Backends and their versions, the GPU and its compute capability, DLA cores, the Jetson model,
L4T and JetPack, the CPU, and for every missing piece the command that installs it. It never
fails for want of any of them, and never imports torch. Python 3.8 compatible.
"""

import argparse
import json
from typing import Any, Dict, List, Mapping

OPENCV_HINT = "pip install opencv-python-headless (on Jetson use JetPack's python3-opencv, which has GStreamer)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The environment report's options (the `meanloc doctor` command is meanloc/doctor_cli.py)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--no-dla", action="store_true", help="do not create a TensorRT builder to count DLA cores (faster)"
    )


AUTO_EXAMPLES = ("model.engine", "model.onnx", "model.pt")


def collect(probe_dla: bool = True) -> Dict[str, Any]:
    from .backends import available_backends, best_backend_for
    from .trt_env import describe_environment

    return {
        "environment": describe_environment(probe_dla=probe_dla),
        "backends": available_backends(),
        # What `--backend auto` picks here for each kind of model file.
        "auto": {name.split(".", 1)[1]: best_backend_for(name) for name in AUTO_EXAMPLES},
    }


def format_report(report: Mapping[str, Any]) -> List[str]:
    env = report["environment"]
    lines = [
        _line("meanloc", "{} on Python {} ({} {})".format(
            env["meanloc_version"], env["python_version"], env["system"], env["machine"])),
        _line("CPU", env.get("cpu_model") or "unknown"),
    ]
    if env.get("gpu"):
        cuda = ", CUDA runtime {}".format(env["cuda_runtime_version"]) if env.get("cuda_runtime_version") else ""
        driver = env.get("cuda_driver_version")
        lines.append(_line("GPU", "{}{}{} (via {})".format(
            env["gpu"], cuda, ", driver {}".format(driver) if driver else "", env.get("gpu_probe"))))
    elif env.get("nvidia_smi"):
        smi = env["nvidia_smi"]
        lines.append(_line("GPU", "{} (nvidia-smi, driver {}) but no pycuda or cuda-python: TensorRT engines can be "
                                  "neither built nor run - pip install pycuda".format(smi["gpu_name"], smi["driver_version"])))
    else:
        lines.append(_line("GPU", "none found (no CUDA device via cuda-python, pycuda or nvidia-smi)"))
    if env.get("dla_cores") is not None:
        lines.append(_line("DLA cores", str(env["dla_cores"])))
    if env.get("jetson_model") or env.get("l4t_release"):
        lines.append(_line("Jetson", "{}, L4T {}, JetPack {}".format(
            env.get("jetson_model") or "unknown model", env.get("l4t_release") or "?",
            env.get("jetpack_version") or "unknown")))
    else:
        lines.append(_line("Jetson", "no (no /etc/nv_tegra_release)"))
    for entry in report["backends"]:
        lines.append(_backend_line(entry))
    if report.get("auto"):
        lines.append(_line("auto choice", "; ".join(
            ".{} -> {}".format(suffix, _describe_choice(choice)) for suffix, choice in report["auto"].items())))
    if env.get("tensorrt_version"):
        lines.append(_line("polygraphy", env.get("polygraphy_version")
                           or "MISSING - pip install 'polygraphy>=0.49.1' (to build engines here)"))
    lines.append(_line("numpy", env.get("numpy_version") or "MISSING - pip install 'numpy<2'"))
    if env.get("opencv_version"):
        gstreamer = "with GStreamer" if env.get("opencv_gstreamer") else "without GStreamer (no CSI camera pipelines)"
        lines.append(_line("OpenCV", "{} {}".format(env["opencv_version"], gstreamer)))
    else:
        lines.append(_line("OpenCV", "MISSING - " + OPENCV_HINT))
    return lines


def _backend_line(entry: Mapping[str, Any]) -> str:
    label = "backend " + entry["name"]
    if entry["available"]:
        detail = " ({})".format(entry["detail"]) if entry.get("detail") else ""
        return _line(label, "{}{}".format(entry.get("version") or "installed", detail))
    return _line(label, "MISSING {} - {}".format(", ".join(entry.get("missing", [])), entry.get("install_hint", "")))


def _describe_choice(choice: Mapping[str, Any]) -> str:
    text = choice["backend"]
    if choice.get("providers"):
        text += " [{}]".format(",".join(choice["providers"]))
    return text if choice["available"] else text + " (missing)"


def _line(label: str, text: str) -> str:
    return "{:<20} {}".format(label, text)


def run(args: argparse.Namespace) -> int:
    report = collect(probe_dla=not args.no_dla)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(format_report(report)))
    return 0
