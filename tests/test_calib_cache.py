"""TensorRT calibration cache text: headers per TensorRT version, exact round trip, name checks,
sidecar manifest."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.calibration_cache import (
    build_cache,
    check_cache_names,
    parse_calibration_cache,
    read_cache_manifest,
    read_calibration_cache,
    trt_version_code,
    write_cache_manifest,
    write_calibration_cache,
)

REPO = Path(__file__).resolve().parents[1]
PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3")


@pytest.mark.parametrize(
    ("version", "header"),
    [
        ("8.5", "TRT-8502-EntropyCalibration2"),  # JetPack 5 ships 8.5.2
        ("8.6", "TRT-8602-EntropyCalibration2"),  # JetPack 6.0 ships 8.6.2
        ("8.6.1", "TRT-8601-EntropyCalibration2"),
        ("10.3", "TRT-100300-EntropyCalibration2"),
        ("10.3.0.26", "TRT-100300-EntropyCalibration2"),  # tensorrt.__version__ style
        ("10.13.2", "TRT-101302-EntropyCalibration2"),
    ],
)
def test_header_encodes_the_tensorrt_version(version, header):
    text = build_cache({"images": 1.0}, version).to_text()
    assert text.splitlines()[0] == header


@pytest.mark.parametrize("version", ["11.0", "7.2", "ten", ""])
def test_versions_without_implicit_int8_caches_are_refused(version):
    with pytest.raises(MeanlocError, match="unsupported TensorRT version"):
        trt_version_code(version)


def test_lines_hold_big_endian_float32_of_amax_over_127(tmp_path):
    amax = {"images": 2.64, "/stage0/Conv_output_0": 17.5, "embedding": 0.31}
    path = tmp_path / "calibration.cache"
    write_calibration_cache(path, build_cache(amax, "10.3"))
    lines = dict(line.split(": ") for line in path.read_text().splitlines()[1:])
    for name, value in amax.items():
        # numpy's big-endian float32, independent of the struct-based writer
        assert lines[name] == np.array([value / 127.0], dtype=">f4").tobytes().hex()


def test_reading_back_gives_the_same_scales(tmp_path):
    rng = np.random.default_rng(3)
    amax = {f"/block{i}/MatMul_output_0": float(v) for i, v in enumerate(rng.uniform(1e-3, 50.0, 200))}
    written = build_cache(amax, "8.5")
    write_calibration_cache(tmp_path / "c.cache", written)
    read = read_calibration_cache(tmp_path / "c.cache")
    assert read == written  # bit-exact scales, same header fields
    assert read.version_code == 8502 and read.algorithm == "EntropyCalibration2"
    np.testing.assert_allclose([read.amax()[k] for k in amax], list(amax.values()), rtol=1e-6)


def test_an_all_zero_tensor_still_gets_a_usable_scale():
    cache = build_cache({"zeros": 0.0}, "10.3")
    assert cache.scales["zeros"] > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "first line must look like"),
        (b"calibration.json\n", "first line must look like"),
        (b"TRT-100300-EntropyCalibration2\nimages 3c23d70a\n", "line 2"),
        (b"TRT-100300-EntropyCalibration2\n", "holds no tensor scales"),
        (b"\xff\xfe", "not ASCII"),
    ],
)
def test_broken_caches_are_one_line_errors(text, message):
    with pytest.raises(MeanlocError, match=message) as info:
        parse_calibration_cache(text, "x.cache")
    assert "\n" not in str(info.value)


def test_bad_ranges_are_refused():
    with pytest.raises(MeanlocError, match="invalid calibration range"):
        build_cache({"a": float("nan")}, "10.3")
    with pytest.raises(MeanlocError, match="no tensor ranges"):
        build_cache({}, "10.3")


def test_name_check_names_missing_and_extra_tensors():
    cache = build_cache({"images": 1.0, "conv_out": 2.0, "from_another_model": 3.0}, "10.3")
    graph_names = {"images", "conv_out", "matmul_out", "weight"}
    with pytest.raises(ArtifactMismatchError) as info:
        check_cache_names(cache, graph_names, {"images", "conv_out", "matmul_out"}, "calibration.cache")
    message = str(info.value)
    assert "matmul_out" in message and "from_another_model" in message and "\n" not in message
    matching = build_cache({"images": 1.0, "conv_out": 2.0, "matmul_out": 1.0}, "10.3")
    check_cache_names(matching, graph_names, {"images", "conv_out", "matmul_out"}, "calibration.cache")


def test_defect_11_a_cache_tensorrt_wrote_on_the_device_is_accepted():
    """TensorRT's own calibration lists the tensors it made itself (#3131, #3659, #4058): they are not
    another graph's names; a foreign ONNX name still is."""
    graph_names = {"images", "conv_out", "matmul_out", "/embeddings/Constant_2_output_0"}
    required = {"images", "conv_out", "matmul_out"}
    written_on_device = (
        "TRT-100300-EntropyCalibration2\n"
        "images: 3c010204\nconv_out: 3d000000\nmatmul_out: 3d100000\n"
        "(Unnamed Layer* 139) [Constant]_output: 3c000000\n"
        "(Unnamed Layer* 140) [Shuffle]_output: 3c000000\n"
        "(Unnamed Layer* 141) [Matrix Multiply]_output_1: 3c000000\n"
        "ONNXTRT_Broadcast_97_output: 3c000000\n"
        "/embeddings/Constant_2_output_0_output: 3c000000\n"
        "conv_out_1: 3c000000\n"
    )
    cache = parse_calibration_cache(written_on_device.encode(), "device.cache")
    check_cache_names(cache, graph_names, required, "device.cache")
    foreign = parse_calibration_cache((written_on_device + "/other/model/MatMul_output_0: 3c000000\n").encode(), "x")
    with pytest.raises(ArtifactMismatchError, match=r"1 cache tensors are not in the ONNX \(/other/model/MatMul_output_0\)"):
        check_cache_names(foreign, graph_names, required, "x")


def test_manifest_describes_the_cache_and_detects_changes(tmp_path):
    path = tmp_path / "calibration.cache"
    cache = build_cache({"images": 2.0}, "8.6")
    write_calibration_cache(path, cache)
    write_cache_manifest(path, cache, onnx_sha256="a" * 64, method="minmax", num_images=32)
    manifest = read_cache_manifest(path, onnx_sha256="a" * 64)
    assert manifest["header"] == "TRT-8602-EntropyCalibration2" and manifest["num_images"] == 32
    with pytest.raises(ArtifactMismatchError, match="another ONNX"):
        read_cache_manifest(path, onnx_sha256="b" * 64)
    write_calibration_cache(path, build_cache({"images": 3.0}, "8.6"))
    with pytest.raises(ArtifactMismatchError, match="cache changed"):
        read_cache_manifest(path)


@pytest.mark.skipif(not PY38.exists(), reason="no Python 3.8 interpreter here")
def test_cache_module_runs_on_python_38_without_numpy_torch_or_onnx(tmp_path):
    # meanloc's top-level folders install under one namespace: mirror that layout for a bare 3.8.
    package = tmp_path / "meanloc"
    shutil.copytree(REPO / "meanloc", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "runtime").symlink_to(REPO / "runtime")
    (package / "calibration").symlink_to(REPO / "calibration")
    script = (
        "import sys\n"
        "from meanloc.runtime.calibration_cache import build_cache, parse_calibration_cache\n"
        "cache = build_cache({'images': 2.5}, '8.5')\n"
        "assert parse_calibration_cache(cache.to_text().encode(), 'x') == cache\n"
        "assert not {'numpy', 'torch', 'onnx'} & set(sys.modules)\n"
    )
    result = subprocess.run(
        [str(PY38), "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
