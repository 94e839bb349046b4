"""ONNX Runtime backend with real ONNX Runtime on a real mean-nano export, plus the torch reference.

Covers: ORT vs PyTorch embeddings, the identity round-trip through ONNX metadata, batch
splitting and padding, provider selection, foreign/corrupt ONNX files, and FP16 outputs.
"""

import os
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.export.onnx_export import export_onnx
from meanloc.runtime.artifacts import sha256_file
from meanloc.runtime.backends import open_backend
from meanloc.runtime.backends.base import l2_normalise
from meanloc.runtime.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    TensorRTProviderSettings,
    best_available_providers,
    default_trt_cache_dir,
    resolve_providers,
    tensorrt_provider_options,
)
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch
from meanloc.training.checkpoint import save_checkpoint
from meanloc.training.model import build_model, resolve_config
from meanloc.training.torch_backend import TorchBackend

ALL_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """A trained-looking mean-nano checkpoint and its ONNX export (the real exporter)."""
    folder = tmp_path_factory.mktemp("nano")
    torch.manual_seed(7)
    config = resolve_config("mean-nano")
    model = build_model(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    checkpoint = folder / "nano.pt"
    save_checkpoint(checkpoint, model, config)
    onnx_path = folder / "nano.onnx"
    export_onnx(checkpoint, onnx_path, parity=False)
    return types.SimpleNamespace(checkpoint=str(checkpoint), onnx=str(onnx_path), model=model, size=config.img_size)


def _images(count, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(48, 80), (64, 64), (100, 70), (33, 90), (64, 128), (90, 90), (40, 41)]
    return [rng.integers(0, 256, size=shapes[i % len(shapes)] + (3,), dtype=np.uint8) for i in range(count)]


def _cosine_rows(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_ort_embeddings_match_torch_reference_and_identity_round_trips(nano):
    images = _images(5)
    with open_backend(nano.onnx, providers=["cpu"]) as ort_backend, open_backend(nano.checkpoint) as torch_backend:
        assert isinstance(ort_backend, OnnxRuntimeBackend) and isinstance(torch_backend, TorchBackend)
        ort_embeddings = ort_backend.embed_images(images)
        torch_embeddings = torch_backend.embed_images(images)
        assert ort_embeddings.shape == (5, 128) and ort_embeddings.dtype == np.float32
        assert np.allclose(np.linalg.norm(ort_embeddings, axis=1), 1.0, atol=1e-5)
        assert _cosine_rows(ort_embeddings, torch_embeddings).min() > 0.9999

        # The torch backend is the model's own embedding function.
        with torch.no_grad():
            direct = nano.model.embed(torch.from_numpy(preprocess_batch(images, PreprocessSpec(nano.size)))).numpy()
        assert np.allclose(torch_embeddings, direct, atol=1e-5)

        identity = ort_backend.identity
        assert identity.checkpoint_sha256 == sha256_file(nano.checkpoint)
        assert identity.artifact_sha256 == sha256_file(nano.onnx)
        assert identity.preset == "mean-nano" and identity.embed_dim == 128 and identity.precision == "fp32"
        assert identity.preprocess == PreprocessSpec(size=nano.size)
        identity.check_compatible(torch_backend.identity, "ORT vs checkpoint")
        assert ort_backend.describe()["providers"] == ["CPUExecutionProvider"]


class _CountingSession:
    """Delegates to the real ORT session and records every batch size it is given."""

    def __init__(self, session):
        self._session = session
        self.batch_sizes = []

    def run(self, outputs, feeds):
        self.batch_sizes.append(len(next(iter(feeds.values()))))
        return self._session.run(outputs, feeds)

    def run_with_iobinding(self, binding, *args):
        result = self._session.run_with_iobinding(binding, *args)
        self.batch_sizes.append(binding.get_outputs()[0].shape()[0])
        return result

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_batches_larger_than_max_batch_are_split(nano):
    images = _images(5, seed=3)
    with OnnxRuntimeBackend(nano.onnx, max_batch=2, threads=1) as small, OnnxRuntimeBackend(nano.onnx) as large:
        counter = small._session = _CountingSession(small._session)
        split = small.embed_images(images)
        whole = large.embed_images(images)
        assert small.embed(np.zeros((0, 3, nano.size, nano.size), np.float32)).shape == (0, 128)
    assert counter.batch_sizes == [2, 2, 1]
    assert np.allclose(split, whole, atol=1e-5)


def test_io_binding_gives_the_plain_run_results_and_never_aliases_them(nano):
    first, second = _images(3, seed=4), _images(3, seed=5)
    with OnnxRuntimeBackend(nano.onnx, threads=1) as bound, OnnxRuntimeBackend(nano.onnx, io_binding=False) as plain:
        assert bound.describe()["io_binding"] and not plain.describe()["io_binding"]
        result = bound.embed_images(first)
        kept = result.copy()
        again = bound.embed_images(second)  # the same (3, D) output buffer is reused inside
        assert np.array_equal(result, kept)
        np.testing.assert_allclose(result, plain.embed_images(first), atol=1e-6)
        np.testing.assert_allclose(again, plain.embed_images(second), atol=1e-6)


def test_provider_selection_prefers_tensorrt_then_cuda_then_cpu():
    assert best_available_providers(ALL_PROVIDERS) == ["tensorrt"]
    assert best_available_providers(ALL_PROVIDERS[1:]) == ["cuda"]
    assert best_available_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["cpu"]
    # GPU providers fall back to the next ones for nodes they cannot run.
    assert resolve_providers(["tensorrt"], ALL_PROVIDERS) == ["tensorrt", "cuda", "cpu"]
    assert resolve_providers(["CUDAExecutionProvider"], ALL_PROVIDERS) == ["cuda", "cpu"]
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["cpu"]
    with pytest.raises(MeanlocError, match=r"'cuda' was requested.*onnxruntime-gpu"):
        resolve_providers(["cuda"], ["CPUExecutionProvider"])
    with pytest.raises(MeanlocError, match="unknown execution provider 'rocm'"):
        resolve_providers(["rocm"], ALL_PROVIDERS)


def test_unavailable_provider_is_refused_by_the_real_backend(nano):
    import onnxruntime

    missing = [s for s, full in (("tensorrt", ALL_PROVIDERS[0]), ("cuda", ALL_PROVIDERS[1]))
               if full not in onnxruntime.get_available_providers()]
    if not missing:
        pytest.skip("this ONNX Runtime has every GPU provider")
    with pytest.raises(MeanlocError, match="requested but this ONNX Runtime offers only"):
        OnnxRuntimeBackend(nano.onnx, providers=[missing[0]])


def test_tensorrt_provider_options_carry_precision_cache_and_profile(tmp_path):
    options = tensorrt_provider_options(
        TensorRTProviderSettings(fp16=True, int8=True, cache_dir=str(tmp_path), calibration_table="calib.cache",
                                 workspace_bytes=1 << 28, builder_optimization_level=4),
        input_size=64,
        max_batch=8,
        cache_dir="/unused/default",
    )
    assert options["trt_fp16_enable"] == "True" and options["trt_int8_enable"] == "True"
    assert options["trt_layer_norm_fp32_fallback"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path) and options["trt_engine_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "images:1x3x64x64"
    assert options["trt_profile_max_shapes"] == "images:8x3x64x64"
    assert options["trt_profile_opt_shapes"] == "images:1x3x64x64"  # kernels tuned for the loop's batch 1
    assert options["trt_int8_calibration_table_name"] == "calib.cache"
    assert options["trt_max_workspace_size"] == str(1 << 28)
    assert options["trt_builder_optimization_level"] == "4"
    assert all(isinstance(value, str) for value in options.values())
    default = default_trt_cache_dir("ab" * 32, "1.32.0", TensorRTProviderSettings())
    fp32 = tensorrt_provider_options(TensorRTProviderSettings(), input_size=64, max_batch=1, cache_dir=default)
    assert fp32["trt_fp16_enable"] == "False" and "trt_layer_norm_fp32_fallback" not in fp32
    # Engines ORT cached for another model, ORT version or precision are never picked up.
    folder = os.path.basename(default)
    assert fp32["trt_engine_cache_path"] == default
    assert folder.startswith("abababababababab-ort1.32.0-trt") and folder.endswith("-fp32")
    assert default != default_trt_cache_dir("ab" * 32, "1.32.0", TensorRTProviderSettings(fp16=True))


# --- foreign and broken ONNX files -------------------------------------------------------------

NANO_METADATA = ModelIdentity("ab" * 32, "mean-nano", 3, PreprocessSpec(size=8)).to_onnx_metadata()


def _write_onnx(path, input_name="images", input_shape=("N", 3, 8, 8), metadata=None, output_type=TensorProto.FLOAT):
    """A tiny embedder-shaped graph: spatial mean per channel, (N,3,8,8) -> (N,3)."""
    rank4 = len(input_shape) == 4
    nodes = [helper.make_node("ReduceMean", [input_name], ["pooled"], axes=[2, 3] if rank4 else [1], keepdims=0)]
    out_shape = [input_shape[0], 3] if rank4 else [input_shape[0]]
    if output_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["pooled"], ["embedding"], to=output_type))
    else:
        nodes[0].output[0] = "embedding"
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("embedding", output_type, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_name": "input"}, "expected one input named 'images', found \\['input'\\]"),
        ({"input_shape": ("N", 192)}, "input 'images' has rank 2"),
        ({}, "carries no meanloc metadata"),
    ],
    ids=["wrong-input-name", "wrong-rank", "no-metadata"],
)
def test_foreign_onnx_is_refused_with_one_line(tmp_path, kwargs, message):
    path = _write_onnx(tmp_path / "foreign.onnx", **kwargs)
    with pytest.raises(ArtifactMismatchError, match=message) as caught:
        open_backend(path)
    assert "\n" not in str(caught.value)


def test_corrupt_and_missing_onnx_files_give_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(MeanlocError, match="cannot load ONNX model") as caught:
        OnnxRuntimeBackend(str(corrupt))
    assert "\n" not in str(caught.value)
    with pytest.raises(MeanlocError, match="model not found"):
        open_backend(str(tmp_path / "absent.onnx"))


def test_metadata_dimension_that_disagrees_with_the_graph_is_refused(tmp_path):
    lying = dict(NANO_METADATA, **{"meanloc.embed_dim": "128"})
    backend = OnnxRuntimeBackend(_write_onnx(tmp_path / "lying.onnx", metadata=lying))
    with pytest.raises(ArtifactMismatchError, match="metadata says dimension 128"):
        backend.embed(np.zeros((1, 3, 8, 8), np.float32))


def test_fixed_batch_model_is_padded_and_fp16_output_renormalised_in_float32(tmp_path):
    path = _write_onnx(tmp_path / "fixed.onnx", input_shape=(2, 3, 8, 8), metadata=NANO_METADATA,
                       output_type=TensorProto.FLOAT16)
    backend = OnnxRuntimeBackend(path, max_batch=16)
    assert backend.max_batch == 2  # the model's own batch wins
    batch = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32) + 2.0
    embeddings = backend.embed(batch)
    expected = l2_normalise(batch.mean(axis=(2, 3)))
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, 3)
    assert np.allclose(embeddings, expected, atol=2e-3)  # FP16 graph output, float32 normalisation


def test_l2_normalise_survives_values_whose_fp16_norm_overflows():
    big = np.full((2, 768), 300.0, dtype=np.float16)  # sum of squares = 6.9e7 > float16 max 65504
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.sum(big * big, dtype=np.float16))
    unit = l2_normalise(big)
    assert unit.dtype == np.float32 and np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_open_backend_refuses_mismatched_choices(nano, tmp_path):
    with pytest.raises(MeanlocError, match="don't know how to run"):
        open_backend(str(tmp_path / "model.bin"))
    with pytest.raises(MeanlocError, match=r"needs the onnxruntime backend, not tensorrt.*providers=\['tensorrt'\]"):
        open_backend(nano.onnx, backend="tensorrt")
    with pytest.raises(MeanlocError, match="unknown backend 'tflite'"):
        open_backend(nano.onnx, backend="tflite")
    with pytest.raises(MeanlocError, match="execution providers only apply to ONNX"):
        open_backend(nano.checkpoint, providers=["cpu"])


@pytest.mark.filterwarnings("ignore:Specified provider")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_that_fails_to_start_is_reported_not_silently_replaced(nano, provider, monkeypatch, tmp_path):
    """ORT falls back to CPU when a GPU provider cannot start (as onnxruntime-gpu does without
    CUDA/TensorRT libraries); here the CPU build is told the GPU providers exist, so the real
    session silently runs on CPU, and the backend must refuse that."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ALL_PROVIDERS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(MeanlocError, match=f"could not start the {provider} execution provider \\(active: CPU"):
        OnnxRuntimeBackend(nano.onnx, providers=[provider])
    if provider == "tensorrt":  # the per-model engine cache folder was prepared for ORT's TensorRT provider
        assert len(list((tmp_path / "meanloc" / "ort-tensorrt").iterdir())) == 1
