"""`meanloc doctor`: real CLI runs on this machine, a Jetson-like report, and a machine with nothing."""

import importlib.util
import json
import subprocess
import sys

import onnxruntime

from meanloc.runtime import doctor_cli


def _doctor(*args):
    return subprocess.run(
        [sys.executable, "-m", "meanloc", "doctor", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_doctor_text_lists_every_backend_with_versions_or_install_hints():
    result = _doctor("--no-dla")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    by_label = {line[:20].strip(): line[20:].strip() for line in lines}
    assert by_label["backend onnxruntime"].startswith(onnxruntime.__version__)
    assert "CPUExecutionProvider" in by_label["backend onnxruntime"]
    if importlib.util.find_spec("tensorrt") is None:
        assert by_label["backend tensorrt"].startswith("MISSING tensorrt")
        assert "python3-libnvinfer" in by_label["backend tensorrt"]
    # On this ORT build the automatic choice for ONNX is its best provider.
    assert ".onnx -> onnxruntime [" in by_label["auto choice"]
    for label in ("meanloc", "CPU", "GPU", "Jetson", "backend torch", "numpy", "OpenCV"):
        assert label in by_label, label


def test_doctor_json_is_one_object_matching_this_machine():
    result = _doctor("--json", "--no-dla")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    backends = {entry["name"]: entry for entry in report["backends"]}
    assert set(backends) == {"tensorrt", "onnxruntime", "torch"}
    assert backends["onnxruntime"]["available"] is True
    assert report["environment"]["onnxruntime_providers"] == onnxruntime.get_available_providers()
    if importlib.util.find_spec("tensorrt") is None:
        assert backends["tensorrt"]["available"] is False and "tensorrt" in backends["tensorrt"]["missing"]
        assert "pip install 'tensorrt>=10,<11'" in backends["tensorrt"]["install_hint"]


def test_jetson_report_shows_board_jetpack_gpu_and_dla():
    env = {
        "meanloc_version": "0.1.0", "python_version": "3.10.12", "system": "Linux", "machine": "aarch64",
        "cpu_model": "ARMv8 Processor rev 1 (v8l)", "gpu": "Orin (sm_87)", "gpu_probe": "cuda-python",
        "cuda_runtime_version": "12.6", "cuda_driver_version": "12.6", "dla_cores": 2,
        "jetson_model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t_release": "36.4.3", "jetpack_version": "6.2",
        "numpy_version": "1.26.4", "opencv_version": "4.8.0", "opencv_gstreamer": True,
    }
    backends = [
        {"name": "tensorrt", "available": True, "version": "10.3.0", "detail": "CUDA binding: cuda-python"},
        {"name": "onnxruntime", "available": False, "version": None, "detail": None, "missing": ["onnxruntime"],
         "install_hint": "pip install onnxruntime"},
    ]
    text = "\n".join(doctor_cli.format_report({"environment": env, "backends": backends}))
    assert "Orin (sm_87), CUDA runtime 12.6, driver 12.6 (via cuda-python)" in text
    assert "DLA cores            2" in text
    assert "NVIDIA Jetson AGX Orin Developer Kit, L4T 36.4.3, JetPack 6.2" in text
    assert "backend tensorrt     10.3.0 (CUDA binding: cuda-python)" in text
    assert "backend onnxruntime  MISSING onnxruntime - pip install onnxruntime" in text
    assert "OpenCV               4.8.0 with GStreamer" in text


def test_doctor_survives_a_machine_without_any_backend(monkeypatch, capsys):
    for name in ("onnxruntime", "cv2", "tensorrt", "pycuda", "pycuda.driver", "cuda", "cuda.bindings",
                 "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # unimportable
    monkeypatch.setenv("PATH", "")  # and no nvidia-smi
    monkeypatch.setattr("meanloc.runtime.trt_env.distribution_version", lambda name: None)
    assert doctor_cli.run(doctor_cli.argparse.Namespace(json=False, no_dla=False)) == 0
    out = capsys.readouterr().out
    assert "GPU                  none found" in out
    assert "backend onnxruntime  MISSING onnxruntime - pip install onnxruntime" in out
    assert "backend tensorrt     MISSING tensorrt, pycuda or cuda-python" in out
    assert "backend torch        MISSING torch" in out
    assert "OpenCV               MISSING" in out
    assert "auto choice          .engine -> tensorrt (missing); .onnx -> onnxruntime (missing)" in out
