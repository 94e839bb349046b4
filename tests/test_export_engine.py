"""TensorRT engine builder wiring, tested against FakeTensorRTForWiringTests (no TensorRT here).

These tests check the call sequence, version-dependent flags, FP32 pinning, sidecar content,
log-failure detection and cache keying. Whether real TensorRT builds good engines is checked by
tests/test_export_engine_gpu.py (`pytest -m gpu` on a TensorRT host).
"""

import json
import sys

import pytest
import torch
from export_fake_tensorrt import FakeTensorRTForWiringTests, Severity

from meanloc.calibration.cache import build_cache, write_calibration_cache
from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.export.engine_build import build_engine
from meanloc.export.engine_cache import engine_cache_fields, engine_cache_key
from meanloc.export.onnx_export import export_model_onnx
from meanloc.export.onnx_graph import fp32_sensitive_nodes, load_embedding_onnx
from meanloc.runtime.artifacts import sha256_file
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.trt_env import check_engine_sidecar, load_engine_sidecar
from meanloc.training.model import build_model, resolve_config


def _env(trt_version: str, gpu: str = "Orin", sm: str = "8.7", l4t: str | None = "36.4.0") -> dict:
    return {
        "tensorrt_version": trt_version,
        "cuda_runtime_version": "12.6",
        "gpu_name": gpu,
        "compute_capability": sm,
        "l4t_release": l4t,
        "dla_cores": 2,
    }


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(resolve_config("mean-nano")).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
    identity = ModelIdentity("ab" * 32, "mean-nano", 128, PreprocessSpec(size=64))
    folder = tmp_path_factory.mktemp("onnx")
    return {
        opset: export_model_onnx(
            model, identity, folder / f"nano{opset}.onnx", opset=opset, parity=False
        ).path
        for opset in (17, 16)
    }


@pytest.fixture
def use_trt(monkeypatch):
    """Install a fake `tensorrt` module of the given version (and behaviour) for one test."""

    def install(version: str = "10.3.0.26", **behaviour) -> FakeTensorRTForWiringTests:
        fake = FakeTensorRTForWiringTests(version, **behaviour)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    return install


def _build(onnx_path, out, trt, **kwargs):
    kwargs.setdefault("environment", _env(trt.__version__))
    kwargs.setdefault("echo", None)
    return build_engine(onnx_path, out, **kwargs)


def _pinned_layers(fake) -> list[str]:
    return [layer.name for layer in fake.last_build.network.layers if layer.precision_is_set]


def test_fp16_on_trt10_sets_flags_profile_pinning_and_writes_sidecar(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    lines = []
    out = tmp_path / "nano.engine"
    result = _build(
        onnx_files[17],
        out,
        fake,
        precision="fp16",
        min_batch=1,
        opt_batch=4,
        max_batch=8,
        workspace_mb=256,
        echo=lines.append,
    )

    build = fake.last_build
    assert build.network.flags == 0  # EXPLICIT_BATCH is deprecated from 10
    flag_names = {flag.name for flag in build.config.flags}
    assert flag_names == {"FP16", "PREFER_PRECISION_CONSTRAINTS"}
    assert build.config.memory_pool_limits[fake.MemoryPoolType.WORKSPACE] == 256 << 20
    assert build.config.profiles[0].shapes["images"] == [[1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]]
    assert build.config.profiling_verbosity == fake.ProfilingVerbosity.DETAILED
    assert any("Building engine" in line for line in lines)  # IProgressMonitor on 10.x
    # opset 17: native LayerNorm stays FP32 inside TensorRT; only the final L2 norm gets pinned.
    model = load_embedding_onnx(onnx_files[17]).model
    assert sorted(_pinned_layers(fake)) == sorted(fp32_sensitive_nodes(model))
    for layer in build.network.layers:
        if layer.precision_is_set:
            assert layer.precision == fake.float32 and set(layer.output_types.values()) == {fake.float32}

    sidecar = json.loads(result.sidecar_path.read_text())
    assert result.sidecar_path == tmp_path / "nano.engine.json" and not result.reused
    assert sidecar["engine_sha256"] == sha256_file(out)
    assert sidecar["onnx_sha256"] == sha256_file(onnx_files[17])
    assert sidecar["precision"] == "fp16" and sidecar["identity"]["precision"] == "fp16"
    assert sidecar["identity"]["checkpoint_sha256"] == "ab" * 32
    assert sidecar["onnx_identity"]["precision"] == "fp32"
    assert sidecar["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert sidecar["environment"]["tensorrt_version"] == "10.3.0.26"
    assert sidecar["environment"]["gpu_name"] == "Orin" and sidecar["environment"]["dla_core"] is None
    assert sidecar["io"] == [
        {"name": "images", "mode": "input", "shape": [-1, 3, 64, 64], "dtype": "float"},
        {"name": "embedding", "mode": "output", "shape": [-1, 128], "dtype": "float"},
    ]
    assert sidecar["build_flags"]["builder_flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    assert sidecar["build_flags"]["fp32_pinned_layers"] == len(fp32_sensitive_nodes(model))
    assert sidecar["calibration_sha256"] is None and len(sidecar["cache_key"]) == 64
    # The TensorRT backend's own reader and environment check accept it.
    loaded = load_engine_sidecar(str(out))
    check_engine_sidecar(loaded, _env("10.3.0.26"))
    with pytest.raises(ArtifactMismatchError, match="compute capability"):
        check_engine_sidecar(loaded, _env("10.3.0.26", gpu="NVIDIA H100", sm="9.0"))


@pytest.mark.parametrize("rename_layers", [False, True])
def test_trt85_opset16_explicit_batch_and_decomposed_layernorm_pinned(
    onnx_files, tmp_path, use_trt, rename_layers
):
    fake = use_trt("8.5.2.2", rename_layers=rename_layers)
    result = _build(onnx_files[16], tmp_path / "jp5.engine", fake, precision="fp16")
    build = fake.last_build
    assert build.network.flags == 1 << int(fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert not hasattr(build.config, "progress_monitor")
    expected = fp32_sensitive_nodes(load_embedding_onnx(onnx_files[16]).model)
    assert len(_pinned_layers(fake)) == len(expected) > 80  # 10 LayerNorms x 9 ops + the L2 norm
    pinned_types = {layer.type for layer in build.network.layers if layer.precision_is_set}
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Add", "ReduceSum"} <= pinned_types
    assert not {"Conv", "MatMul", "Erf"} & pinned_types
    assert result.sidecar["build_flags"]["network_flags"] == ["EXPLICIT_BATCH"]


def test_fp32_pins_nothing_and_sets_no_precision_flags(onnx_files, tmp_path, use_trt):
    fake = use_trt("8.6.1.6")
    _build(onnx_files[16], tmp_path / "fp32.engine", fake, precision="fp32")
    assert fake.last_build.config.flags == set() and _pinned_layers(fake) == []


def test_opset17_is_refused_on_trt85_and_trt84_is_too_old(onnx_files, tmp_path, use_trt):
    fake = use_trt("8.5.2.2")
    with pytest.raises(MeanlocError, match="--opset 16"):
        _build(onnx_files[17], tmp_path / "x.engine", fake)
    assert not (tmp_path / "x.engine").exists()
    fake = use_trt("8.4.3.1")
    with pytest.raises(MeanlocError, match=r"TensorRT 8\.4\.3\.1 is too old"):
        _build(onnx_files[16], tmp_path / "x.engine", fake)


def test_optimization_level_needs_trt86(onnx_files, tmp_path, use_trt):
    fake = use_trt("8.5.2.2")
    with pytest.raises(MeanlocError, match=r"--opt-level needs TensorRT >= 8.6"):
        _build(onnx_files[16], tmp_path / "a.engine", fake, opt_level=5)
    fake = use_trt("8.6.1.6")
    _build(onnx_files[17], tmp_path / "b.engine", fake, opt_level=5)
    assert fake.last_build.config.builder_optimization_level == 5


def test_trt11_refuses_implicit_int8_and_fp16(onnx_files, tmp_path, use_trt):
    fake = use_trt("11.0.0.1")
    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\nimages: 3c010204\n")
    with pytest.raises(MeanlocError, match=r"removed in 11.*int8-explicit"):
        _build(
            onnx_files[17], tmp_path / "a.engine", fake, precision="int8-implicit", calibration_cache=cache
        )
    with pytest.raises(MeanlocError, match="no FP16 builder flag"):
        _build(onnx_files[17], tmp_path / "b.engine", fake, precision="fp16")
    _build(onnx_files[17], tmp_path / "c.engine", fake, precision="fp32")  # still fine


def _cache_for(onnx_path, version: str, path):
    graph = load_embedding_onnx(onnx_path).model.graph
    names = {"images"} | {
        name for node in graph.node for name in node.output
    }  # activations, as ORT ranges give
    write_calibration_cache(path, build_cache({name: 2.5 for name in names}, version))
    return path


def test_int8_implicit_feeds_the_cache_through_a_calibrator(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    cache = _cache_for(onnx_files[17], "10.3.0", tmp_path / "calib.cache")
    result = _build(
        onnx_files[17], tmp_path / "int8.engine", fake, precision="int8-implicit", calibration_cache=cache
    )
    config = fake.last_build.config
    assert {f.name for f in config.flags} >= {"INT8", "FP16"}
    assert isinstance(config.int8_calibrator, fake.IInt8EntropyCalibrator2)
    assert bytes(config.calibration_cache_read) == cache.read_bytes()
    assert config.calibration_profile is config.profiles[0]
    assert result.sidecar["calibration_sha256"] == sha256_file(cache)


def test_calibration_cache_for_another_trt_or_graph_is_refused(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    old = _cache_for(onnx_files[17], "8.5.2", tmp_path / "jp5.cache")
    with pytest.raises(ArtifactMismatchError, match=r"TRT-8502-EntropyCalibration2.*--trt-version 10.3.0.26"):
        _build(onnx_files[17], tmp_path / "a.engine", fake, precision="int8-implicit", calibration_cache=old)
    other_graph = _cache_for(onnx_files[16], "10.3.0", tmp_path / "opset16.cache")
    with pytest.raises(ArtifactMismatchError, match="does not match the ONNX"):
        _build(
            onnx_files[17],
            tmp_path / "b.engine",
            fake,
            precision="int8-implicit",
            calibration_cache=other_graph,
        )
    assert not list(tmp_path.glob("*.engine*"))


@pytest.mark.parametrize(
    "message",
    [
        "Missing scale and zero-point for tensor /stages.0/Conv_output_0, expect fall back to non-int8 implementation",
        "Setting a default quantization params because quantization data is missing for /norm/Div",
    ],
)
def test_build_log_with_missing_int8_scales_fails_loudly(onnx_files, tmp_path, use_trt, message):
    fake = use_trt("10.3.0.26", build_log=((Severity.INFO, "Detected 1 inputs"), (Severity.WARNING, message)))
    with pytest.raises(MeanlocError, match="missing scales") as info:
        _build(onnx_files[17], tmp_path / "a.engine", fake, precision="fp16")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a.engine").exists() and not (tmp_path / "a.engine.json").exists()


def test_parser_errors_are_listed(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26", parse_errors=("node 3 (Foo): unsupported operator", "node 9: bad weights"))
    with pytest.raises(MeanlocError, match=r"cannot parse.*unsupported operator \| node 9: bad weights"):
        _build(onnx_files[17], tmp_path / "a.engine", fake)


def test_failed_build_is_one_line_with_the_last_error(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26", build_fails=True)
    with pytest.raises(MeanlocError, match=r"failed to build the engine: .*no kernels found"):
        _build(onnx_files[17], tmp_path / "a.engine", fake)
    assert not list(tmp_path.iterdir())


def test_dla_opt_in_with_gpu_fallback(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26", num_dla_cores=2)
    result = _build(
        onnx_files[17], tmp_path / "dla.engine", fake, precision="fp16", min_batch=1, max_batch=1, dla_core=1
    )
    config = fake.last_build.config
    assert config.default_device_type == fake.DeviceType.DLA and config.DLA_core == 1
    assert fake.BuilderFlag.GPU_FALLBACK in config.flags
    assert result.sidecar["environment"]["dla_core"] == 1
    with pytest.raises(MeanlocError, match="fixed batch"):
        _build(onnx_files[17], tmp_path / "b.engine", fake, precision="fp16", max_batch=4, dla_core=0)
    with pytest.raises(MeanlocError, match="DLA runs FP16"):
        _build(onnx_files[17], tmp_path / "b.engine", fake, precision="fp32", max_batch=1, dla_core=0)
    use_trt("10.3.0.26", num_dla_cores=0)
    with pytest.raises(MeanlocError, match="has 0 DLA cores"):
        _build(onnx_files[17], tmp_path / "c.engine", fake, precision="fp16", max_batch=1, dla_core=0)


def test_timing_cache_is_loaded_and_saved(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"previous-timings")
    _build(onnx_files[17], tmp_path / "a.engine", fake, timing_cache=timing)
    assert fake.last_build.config.timing_cache.data == b"previous-timings"
    assert timing.read_bytes().startswith(b"TIMING:previous-timings")

    timing.write_bytes(b"OTHER-DEVICE timings")
    result = _build(onnx_files[17], tmp_path / "b.engine", fake, timing_cache=timing)
    assert fake.last_build.config.timing_cache.data == b""
    assert any("another TensorRT/GPU" in warning for warning in result.warnings)


def test_identical_build_is_reused_and_any_change_rebuilds(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    out = tmp_path / "nano.engine"
    first = _build(onnx_files[17], out, fake)
    fake.last_build = None
    again = _build(onnx_files[17], out, fake)
    assert (
        again.reused and fake.last_build is None and again.sidecar["cache_key"] == first.sidecar["cache_key"]
    )

    _build(onnx_files[17], out, fake, max_batch=16)
    assert fake.last_build is not None  # profile changed
    fake.last_build = None
    _build(onnx_files[17], out, fake, max_batch=16, environment=_env("10.3.0.26", gpu="Other", sm="8.6"))
    assert fake.last_build is not None  # another GPU
    fake.last_build = None
    out.write_bytes(out.read_bytes() + b"tampered")
    _build(onnx_files[17], out, fake, max_batch=16, environment=_env("10.3.0.26", gpu="Other", sm="8.6"))
    assert fake.last_build is not None  # engine no longer matches its sidecar


def test_engine_cache_folder_serves_other_output_paths(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    cache_dir = tmp_path / "cache"
    first = _build(onnx_files[17], tmp_path / "a.engine", fake, cache_dir=cache_dir)
    fake.last_build = None
    second = _build(onnx_files[17], tmp_path / "b.engine", fake, cache_dir=cache_dir)
    assert second.reused and fake.last_build is None
    assert (tmp_path / "b.engine").read_bytes() == (tmp_path / "a.engine").read_bytes()
    assert json.loads((tmp_path / "b.engine.json").read_text())["cache_key"] == first.sidecar["cache_key"]
    _build(onnx_files[17], tmp_path / "c.engine", fake, cache_dir=cache_dir, force=True)
    assert fake.last_build is not None


def test_cache_key_changes_with_every_field():
    base = {
        "onnx_sha256": "a" * 64,
        "precision": "fp16",
        "calibration_sha256": None,
        "profile": {"min": 1, "opt": 4, "max": 8},
        "opt_level": 3,
        "workspace_mb": 1024,
        "environment": {
            "tensorrt_version": "10.3.0",
            "cuda_runtime_version": "12.6",
            "gpu_name": "Orin",
            "compute_capability": "8.7",
            "l4t_release": "36.4.0",
            "dla_core": None,
        },
    }
    key = engine_cache_key(engine_cache_fields(**base))
    assert key == engine_cache_key(engine_cache_fields(**base))
    changes = {
        "onnx_sha256": "b" * 64,
        "precision": "int8-implicit",
        "calibration_sha256": "c" * 64,
        "profile": {"min": 1, "opt": 8, "max": 8},
        "opt_level": 5,
        "workspace_mb": 2048,
    }
    for name, value in changes.items():
        assert engine_cache_key(engine_cache_fields(**{**base, name: value})) != key, name
    for name, value in [
        ("tensorrt_version", "8.5.2"),
        ("cuda_runtime_version", "11.4"),
        ("gpu_name", "Xavier"),
        ("compute_capability", "7.2"),
        ("l4t_release", "35.4.1"),
        ("dla_core", 0),
    ]:
        env = {**base["environment"], name: value}
        assert engine_cache_key(engine_cache_fields(**{**base, "environment": env})) != key, name


def test_missing_tensorrt_says_how_to_install(onnx_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MeanlocError, match=r"apt install python3-libnvinfer.*pip install 'tensorrt>=10,<11'"):
        build_engine(onnx_files[17], tmp_path / "a.engine", environment=_env("none"), echo=None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int4"}, "unknown precision"),
        ({"min_batch": 4, "max_batch": 2}, "1 <= min <= opt <= max"),
        ({"precision": "int8-implicit"}, "needs a calibration cache"),
        ({"precision": "fp16", "calibration_cache": "x.cache"}, "only used with int8-implicit"),
        ({"opt_level": 7}, "0..5"),
    ],
)
def test_bad_options_fail_before_touching_tensorrt(onnx_files, tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MeanlocError, match=message):
        build_engine(onnx_files[17], tmp_path / "a.engine", echo=None, **kwargs)


@pytest.fixture(scope="module")
def qdq_onnx(onnx_files, tmp_path_factory):
    """TensorRT-flavour Q/DQ models of both opsets, made by the real calibration code from aerial-like images."""
    import cv2
    import numpy as np

    from meanloc.calibration.calibset import from_folder
    from meanloc.calibration.qdq import quantize_for_tensorrt
    from meanloc.calibration.ranges import collect_ranges
    from meanloc.export.parity import synthetic_aerial_image

    folder = tmp_path_factory.mktemp("calib_images")
    rng = np.random.default_rng(0)
    for index in range(4):
        cv2.imwrite(str(folder / f"{index}.png"), synthetic_aerial_image(rng, 96))
    made = {}
    for opset, path in onnx_files.items():
        fp32 = load_embedding_onnx(path)
        calib_set = from_folder(folder, fp32.identity.preprocess, num_images=4, batch_size=2)
        ranges = collect_ranges(path, calib_set, method="minmax", progress=False)
        made[opset] = quantize_for_tensorrt(path, folder / f"qdq{opset}.onnx", ranges, fp32.identity)
    return made


@pytest.mark.parametrize(
    ("version", "opset", "flags"),
    [("8.5.2.2", 16, {"INT8", "FP16"}), ("10.3.0.26", 17, {"INT8", "FP16"}), ("11.0.0.1", 17, set())],
)
def test_int8_explicit_flags_per_version(qdq_onnx, tmp_path, use_trt, version, opset, flags):
    fake = use_trt(version)
    result = _build(qdq_onnx[opset], tmp_path / "q.engine", fake, precision="int8-explicit")
    set_flags = {f.name for f in fake.last_build.config.flags} - {"PREFER_PRECISION_CONSTRAINTS"}
    assert set_flags == flags
    assert result.sidecar["precision"] == "int8-explicit" and result.sidecar["calibration_sha256"] is None
    assert result.sidecar["identity"]["precision"] == "int8-explicit"


def test_int8_explicit_needs_qdq_and_qdq_needs_int8_explicit(onnx_files, qdq_onnx, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    with pytest.raises(MeanlocError, match="no QuantizeLinear/DequantizeLinear"):
        _build(onnx_files[17], tmp_path / "a.engine", fake, precision="int8-explicit")
    with pytest.raises(MeanlocError, match="build it with --precision int8-explicit"):
        _build(qdq_onnx[17], tmp_path / "b.engine", fake, precision="fp16")
