"""TensorRT engine builder wiring, tested against FakeTensorRTForWiringTests (no TensorRT here).

These tests check the call sequence, version-dependent flags, FP32 pinning, sidecar content,
log-failure detection and cache keying, with real Polygraphy making the builder config. The fake
models the TensorRT behaviours the review of issue 15 found (see tests/export_fake_tensorrt.py);
the tests named `test_defect_N_...` each fail on the code before that issue. Whether real TensorRT
builds good engines is checked by tests/test_export_engine_gpu.py (`pytest -m gpu` on a TensorRT host).
"""

import json
import sys

import pytest
import torch
from export_fake_tensorrt import MISSING_SCALE, FakeTensorRTForWiringTests, Severity
from fake_cuda_bindings import install_fake_gpu

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError
from meanloc.export.engine_build import build_engine
from meanloc.export.engine_cache import engine_cache_fields, engine_cache_key
from meanloc.export.onnx_export import export_model_onnx
from meanloc.export.onnx_graph import fp32_sensitive_nodes
from meanloc.runtime.artifacts import sha256_file
from meanloc.runtime.calibration_cache import build_cache, write_calibration_cache
from meanloc.runtime.engine_sidecar import EngineSidecar
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.onnx_file import load_embedding_onnx
from meanloc.runtime.preprocess import PreprocessSpec
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
    assert result.sidecar == EngineSidecar.from_json(sidecar, "sidecar")
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
    loaded = EngineSidecar.load(str(out))
    loaded.check(_env("10.3.0.26"))
    with pytest.raises(ArtifactMismatchError, match="compute capability"):
        loaded.check(_env("10.3.0.26", gpu="NVIDIA H100", sm="9.0"))


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
    pinned_types = {layer.op_type for layer in build.network.layers if layer.precision_is_set}
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Add", "ReduceSum"} <= pinned_types
    assert not {"Conv", "MatMul", "Erf"} & pinned_types
    assert result.sidecar.build_flags["network_flags"] == ["EXPLICIT_BATCH"]


def test_fp32_pins_nothing_and_sets_no_precision_flags(onnx_files, tmp_path, use_trt):
    fake = use_trt("8.6.1.6")
    _build(onnx_files[16], tmp_path / "fp32.engine", fake, precision="fp32")
    # TF32 off too: an fp32 engine is the accuracy reference (Polygraphy's CreateConfig default).
    assert fake.last_build.config.flags == set() and _pinned_layers(fake) == []


def test_opset17_is_refused_on_trt85_and_trt84_is_too_old(onnx_files, tmp_path, use_trt):
    fake = use_trt("8.5.2.2")
    with pytest.raises(MeanlocError, match="--opset 16"):
        _build(onnx_files[17], tmp_path / "x.engine", fake)
    assert not (tmp_path / "x.engine").exists()
    fake = use_trt("8.4.3.1")
    with pytest.raises(MeanlocError, match=r"TensorRT 8\.4\.3\.1 is too old"):
        _build(onnx_files[16], tmp_path / "x.engine", fake)


def test_trt85_parser_has_no_layernormalization_importer(onnx_files, tmp_path, use_trt):
    """The fake models 8.5's parser: if the opset check were bypassed, parsing would fail."""
    from meanloc.export import trt_build

    fake = use_trt("8.5.2.2")
    onnx17 = load_embedding_onnx(onnx_files[17])
    network = fake.Builder(None).create_network(1 << int(fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = fake.OnnxParser(network, None)
    assert not parser.parse(onnx17.data) and "LayerNormalization" in parser.get_error(0)
    assert trt_build.network_flags(fake) == 1


def test_optimization_level_needs_trt86(onnx_files, tmp_path, use_trt):
    fake = use_trt("8.5.2.2")
    with pytest.raises(MeanlocError, match=r"--opt-level needs TensorRT >= 8.6"):
        _build(onnx_files[16], tmp_path / "a.engine", fake, opt_level=5)
    fake = use_trt("8.6.1.6")
    _build(onnx_files[17], tmp_path / "b.engine", fake, opt_level=5)
    assert fake.last_build.config.builder_optimization_level == 5


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-implicit", "int8-explicit"])
def test_defect_12_trt11_is_refused_in_every_precision(onnx_files, qdq_onnx, tmp_path, use_trt, precision):
    fake = use_trt("11.0.0.1")
    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\nimages: 3c010204\n")
    source = qdq_onnx[17] if precision == "int8-explicit" else onnx_files[17]
    calibration = cache if precision == "int8-implicit" else None
    with pytest.raises(MeanlocError, match=r"TensorRT 11\.0\.0\.1 is not supported.*tensorrt>=10,<11") as info:
        _build(source, tmp_path / "a.engine", fake, precision=precision, calibration_cache=calibration)
    assert "\n" not in str(info.value) and fake.last_build is None
    assert not list(tmp_path.glob("*.engine*"))


def _cache_for(onnx_path, version: str, path):
    graph = load_embedding_onnx(onnx_path).model.graph
    names = {"images"} | {
        name for node in graph.node for name in node.output
    }  # activations, as ORT ranges give
    write_calibration_cache(path, build_cache({name: 2.5 for name in names}, version))
    return path


@pytest.mark.parametrize(("version", "opset"), [("8.5.2.2", 16), ("10.3.0.26", 17)])
def test_defect_1_implicit_int8_survives_the_harmless_missing_scale_warnings(onnx_files, tmp_path, use_trt, version, opset):
    """TensorRT warns "Missing scale and zero-point" for the Constant and Shuffle layers its parser
    makes for MatMul weights, even with a complete cache (#3659, #3131): that is not a failure."""
    fake = use_trt(version)
    cache = _cache_for(onnx_files[opset], version, tmp_path / "calib.cache")
    lines = []
    result = _build(
        onnx_files[opset], tmp_path / "int8.engine", fake, precision="int8-implicit", calibration_cache=cache,
        echo=lines.append,
    )
    config = fake.last_build.config
    assert {f.name for f in config.flags} >= {"INT8", "FP16"}
    assert isinstance(config.int8_calibrator, fake.IInt8EntropyCalibrator2)
    assert fake.last_build.calibration["source"] == "cache"  # TensorRT took the cache, no calibration
    assert config.calibration_profile is not None
    assert result.sidecar.calibration_sha256 == sha256_file(cache)
    harmless = [line for line in result.sidecar.tensorrt_warnings if "Missing scale" in line]
    assert harmless and all("[Constant]_output" in line or "[Shuffle]_output" in line for line in harmless)
    assert any("Missing scale" in line for line in lines)  # shown to the user, not fatal
    # IEngineInspector: every Conv/MatMul of the graph runs in INT8.
    graph = load_embedding_onnx(onnx_files[opset]).model.graph
    quantizable = [n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    report = result.sidecar.int8_layers
    assert report["detailed"] and report["in_int8"] == len(quantizable) == report["quantizable"] > 10
    assert report["not_int8_count"] == 0


def test_defect_1_missing_scale_for_a_conv_activation_still_fails(onnx_files, tmp_path, use_trt):
    graph = load_embedding_onnx(onnx_files[17]).model.graph
    conv_output = next(n.output[0] for n in graph.node if n.op_type == "Conv")
    fake = use_trt("10.3.0.26", build_log=((Severity.WARNING, MISSING_SCALE.format(conv_output)),))
    cache = _cache_for(onnx_files[17], "10.3.0", tmp_path / "calib.cache")
    with pytest.raises(MeanlocError, match=r"missing scales for 1 Conv/MatMul activations.*recalibrate") as info:
        _build(onnx_files[17], tmp_path / "a.engine", fake, precision="int8-implicit", calibration_cache=cache)
    assert conv_output in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "a.engine").exists() and not (tmp_path / "a.engine.json").exists()


def test_defect_9_calibrator_exception_is_raised_after_the_build(onnx_files, tmp_path, use_trt, capfd):
    """TensorRT silently ignores a cache it does not take (#1378) and asks for batches; the cache-only
    calibrator raises, TensorRT swallows that (pyInt8.cpp) and fails on "no scaling factors": the
    user must see the calibrator's reason, not TensorRT's last line."""
    fake = use_trt("10.3.0.26", reject_calibration_cache=True)
    cache = _cache_for(onnx_files[17], "10.3.0", tmp_path / "calib.cache")
    with pytest.raises(MeanlocError, match="TensorRT did not accept the calibration cache"):
        _build(onnx_files[17], tmp_path / "a.engine", fake, precision="int8-implicit", calibration_cache=cache)
    assert any("Exception caught in get_batch()" in line for line in fake.stderr_lines)
    assert "Exception caught in get_batch()" in capfd.readouterr().err  # what TensorRT itself prints


def test_calibration_cache_for_another_trt_or_graph_is_refused(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    old = _cache_for(onnx_files[17], "8.5.2", tmp_path / "jp5.cache")
    with pytest.raises(ArtifactMismatchError, match=r"TRT-8502-EntropyCalibration2.*--trt-version 10\.3\.0\.26"):
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
    assert result.sidecar.environment["dla_core"] == 1 and result.sidecar.dla_core == 1
    with pytest.raises(MeanlocError, match="fixed batch"):
        _build(onnx_files[17], tmp_path / "b.engine", fake, precision="fp16", max_batch=4, dla_core=0)
    with pytest.raises(MeanlocError, match="DLA runs FP16"):
        _build(onnx_files[17], tmp_path / "b.engine", fake, precision="fp32", max_batch=1, dla_core=0)
    use_trt("10.3.0.26", num_dla_cores=0)
    with pytest.raises(MeanlocError, match="has 0 DLA cores"):
        _build(onnx_files[17], tmp_path / "c.engine", fake, precision="fp16", max_batch=1, dla_core=0)


def test_timing_cache_is_saved_reused_and_replaced_when_from_another_gpu(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    timing = tmp_path / "timing.cache"
    _build(onnx_files[17], tmp_path / "a.engine", fake, timing_cache=timing)
    first = timing.read_bytes()
    assert first.startswith(b"TIMING:Fake GPU:")
    _build(onnx_files[17], tmp_path / "b.engine", fake, timing_cache=timing, max_batch=4)
    assert fake.last_build.config.timing_cache.serialize().startswith(first)  # loaded, then extended

    timing.write_bytes(b"TIMING:Orin:old timings")
    result = _build(onnx_files[17], tmp_path / "c.engine", fake, timing_cache=timing)
    assert fake.last_build.config.timing_cache.device == "Fake GPU"
    assert any("made on another TensorRT/GPU" in warning for warning in result.warnings)
    assert timing.read_bytes().startswith(b"TIMING:Fake GPU:")


def test_defect_8_unreadable_timing_cache_is_replaced_not_a_crash(onnx_files, tmp_path, use_trt):
    """`create_timing_cache` returns None for bytes TensorRT cannot read (pyCore.cpp); passing None on
    to `set_timing_cache` is a pybind11 TypeError."""
    fake = use_trt("10.3.0.26")
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"\x00garbage from a crashed write")
    result = _build(onnx_files[17], tmp_path / "a.engine", fake, timing_cache=timing)
    assert any("timing cache" in warning and "unreadable" in warning for warning in result.warnings)
    assert timing.read_bytes().startswith(b"TIMING:Fake GPU:")


def test_identical_build_is_reused_and_any_change_rebuilds(onnx_files, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    out = tmp_path / "nano.engine"
    first = _build(onnx_files[17], out, fake)
    fake.last_build = None
    again = _build(onnx_files[17], out, fake)
    assert again.reused and fake.last_build is None and again.sidecar.cache_key == first.sidecar.cache_key

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
    assert json.loads((tmp_path / "b.engine.json").read_text())["cache_key"] == first.sidecar.cache_key
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
    with pytest.raises(MissingDependencyError, match=r"apt install python3-libnvinfer.*pip install 'tensorrt>=10,<11'"):
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


@pytest.mark.parametrize(("version", "opset"), [("8.5.2.2", 16), ("8.6.1.6", 17), ("10.3.0.26", 17)])
def test_defect_2_tensorrt_qdq_flavour_builds_on_every_supported_version(qdq_onnx, tmp_path, use_trt, version, opset):
    """Before 10.0 TensorRT refuses INT8 weight initializers behind a DequantizeLinear (FP32 weights with a
    Q/DQ pair of their own are the 8.x form); the TensorRT flavour of `meanloc calibrate` must parse on 8.5."""
    fake = use_trt(version)
    result = _build(qdq_onnx[opset], tmp_path / "q.engine", fake, precision="int8-explicit")
    set_flags = {f.name for f in fake.last_build.config.flags} - {"PREFER_PRECISION_CONSTRAINTS"}
    assert set_flags == {"INT8", "FP16"}  # TensorRT 8.x needs INT8 even with Q/DQ; weakly typed 10.x too
    assert result.sidecar.precision == "int8-explicit" and result.sidecar.calibration_sha256 is None
    assert result.sidecar.identity.precision == "int8-explicit"
    assert result.sidecar.int8_layers["in_int8"] > 0 and result.sidecar.int8_layers["not_int8_count"] == 0


def test_defect_2_the_fake_refuses_int8_weight_initializers_before_10(onnx_files, tmp_path, use_trt):
    """The ONNX Runtime default (INT8 initializer -> DequantizeLinear) is what 8.x rejects."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    default_qdq = tmp_path / "ort-default.onnx"
    source = onnx_files[16]

    class OneBatch:
        def __init__(self):
            import numpy as np

            self.batches = iter([{"images": np.random.default_rng(0).random((1, 3, 64, 64), dtype="float32")}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(source), str(default_qdq), OneBatch(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "MatMul"], per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    for version, parses in (("8.5.2.2", False), ("10.3.0.26", True)):
        fake = use_trt(version)
        network = fake.Builder(None).create_network(1 << int(fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        parser = fake.OnnxParser(network, None)
        assert parser.parse(default_qdq.read_bytes()) is parses
        if not parses:
            assert "only activation types allowed" in parser.get_error(0)


def test_int8_explicit_needs_qdq_and_qdq_needs_int8_explicit(onnx_files, qdq_onnx, tmp_path, use_trt):
    fake = use_trt("10.3.0.26")
    with pytest.raises(MeanlocError, match="no QuantizeLinear/DequantizeLinear"):
        _build(onnx_files[17], tmp_path / "a.engine", fake, precision="int8-explicit")
    with pytest.raises(MeanlocError, match="build it with --precision int8-explicit"):
        _build(qdq_onnx[17], tmp_path / "b.engine", fake, precision="fp16")


def test_defect_3_the_builder_needs_no_onnx_package(onnx_files, tmp_path, use_trt, monkeypatch):
    """JetPack has no `onnx`, and installing it upgrades JetPack's numpy: the builder reads the file
    itself and lets TensorRT's parser read the weights."""
    fake = use_trt("10.3.0.26")
    cache = _cache_for(onnx_files[17], "10.3.0", tmp_path / "calib.cache")
    for name in [name for name in sys.modules if name == "onnx" or name.startswith("onnx.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import onnx` now raises ImportError
    for precision, calibration in (("fp16", None), ("int8-implicit", cache)):
        result = _build(onnx_files[17], tmp_path / f"{precision}.engine", fake, precision=precision,
                        calibration_cache=calibration)
        assert result.sidecar.onnx_sha256 == sha256_file(onnx_files[17])


def test_defect_4_no_build_without_the_runtime_gpu_probe(onnx_files, tmp_path, use_trt, monkeypatch):
    """Without pycuda or cuda-python the GPU was recorded as None, and the runtime then refused the
    engine ("GPU 'None' vs 'Orin'"): refuse the build instead, saying what to install."""
    use_trt("10.3.0.26")
    for name in ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx", "cuda", "cuda.bindings",
                 "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"cannot identify this GPU through pycuda or cuda-python") as info:
        build_engine(onnx_files[17], tmp_path / "a.engine", echo=None)  # no environment override: probe
    assert "pip install pycuda" in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("a.engine*"))


def test_a_cuda_binding_that_finds_no_gpu_is_not_a_missing_package(onnx_files, tmp_path, monkeypatch):
    """Installing pycuda again would not help: say that it found no device (exit 2, not 4)."""
    install_fake_gpu(monkeypatch, "10.3.0.26", binding="pycuda")
    monkeypatch.setattr(sys.modules["pycuda.driver"].Device, "count", staticmethod(lambda: 0))
    with pytest.raises(MeanlocError, match=r"cannot identify this GPU: pycuda found no CUDA device") as info:
        build_engine(onnx_files[17], tmp_path / "a.engine", echo=None)
    assert not isinstance(info.value, MissingDependencyError) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("a.engine*"))


def test_defect_5_profile_is_tuned_for_batch_1_by_default(onnx_files, tmp_path, use_trt):
    """TensorRT picks kernels for the profile's opt shape (OptProfileSelector::kOPT); the loop runs batch 1."""
    fake = use_trt("10.3.0.26")
    result = _build(onnx_files[17], tmp_path / "a.engine", fake, max_batch=8)
    assert fake.last_build.config.profiles[0].shapes["images"] == [[1, 3, 64, 64], [1, 3, 64, 64], [8, 3, 64, 64]]
    assert result.sidecar.profile == {"min": 1, "opt": 1, "max": 8}
    _build(onnx_files[17], tmp_path / "b.engine", fake, min_batch=4, max_batch=4)  # fixed batch: opt follows
    assert fake.last_build.config.profiles[0].shapes["images"][1] == [4, 3, 64, 64]


def test_defect_11_a_cache_tensorrt_calibrated_on_the_device_builds(onnx_files, tmp_path, use_trt):
    """The cache TensorRT writes after its own calibration lists its unnamed parser tensors too
    ("(Unnamed Layer* N) [Shuffle]_output", #3659): the builder must take it, not call it foreign."""
    fake = use_trt("10.3.0.26")
    network = fake.Builder(None).create_network(0)
    assert fake.OnnxParser(network, None).parse(load_embedding_onnx(onnx_files[17]).data)
    names = network.calibrated_tensors()
    assert any(name.startswith("(Unnamed Layer*") for name in names)
    cache = tmp_path / "device.cache"
    cache.write_text("\n".join([f"TRT-{fake.version_code}-EntropyCalibration2", *(f"{n}: 3c010204" for n in names)]) + "\n")
    result = _build(onnx_files[17], tmp_path / "a.engine", fake, precision="int8-implicit", calibration_cache=cache)
    assert result.sidecar.calibration_header == "TRT-100300-EntropyCalibration2"


def test_missing_polygraphy_says_how_to_install(onnx_files, tmp_path, use_trt, monkeypatch):
    fake = use_trt("10.3.0.26")
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", None)
    with pytest.raises(MissingDependencyError, match=r"needs Polygraphy: pip install 'polygraphy>=0.49.1'"):
        _build(onnx_files[17], tmp_path / "a.engine", fake)
