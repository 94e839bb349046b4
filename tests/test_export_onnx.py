"""ONNX export of the MEAN embedder: tracing, both opset variants, metadata, parity, bad input."""

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.export import onnx_export
from meanloc.export.onnx_export import export_model_onnx, export_onnx
from meanloc.export.onnx_graph import decomposed_layernorms, fp32_sensitive_nodes, l2_normalisation_nodes
from meanloc.export.parity import check_parity, torch_reference
from meanloc.runtime.artifacts import sha256_file
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.onnx_contract import FP32_NODES_KEY
from meanloc.runtime.onnx_file import load_embedding_onnx
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.training.checkpoint import checkpoint_identity, load_checkpoint, save_checkpoint
from meanloc.training.model import build_model, resolve_config


def _nano_model(seed: int):
    torch.manual_seed(seed)
    config = resolve_config("mean-nano")
    model = build_model(config)
    with torch.no_grad():  # non-trivial LayerNorm affines, as after training (onnxslim drops 1/0 ones)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval(), config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, config = _nano_model(0)
    path = tmp_path_factory.mktemp("ckpt") / "nano.pt"
    save_checkpoint(path, model, config)
    return path


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {opset: export_onnx(checkpoint, folder / f"nano-{opset}.onnx", opset=opset) for opset in (17, 16)}


def _layernorm_modules(checkpoint) -> int:
    embedder = load_checkpoint(checkpoint).model.embedder()
    return sum(isinstance(m, torch.nn.LayerNorm) for m in embedder.modules())


def test_inference_forward_traces_without_tracer_warnings(tmp_path):
    model, _ = _nano_model(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model.embedder(),
            (torch.zeros(2, 3, 64, 64),),
            str(tmp_path / "t.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
        )
    assert (tmp_path / "t.onnx").stat().st_size > 0


def test_data_dependent_control_flow_is_refused_at_export():
    class Branchy(torch.nn.Module):
        def forward(self, images):
            return images.mean(dim=(2, 3)) if images.sum() > 0 else -images.mean(dim=(2, 3))

    with pytest.raises(MeanlocError, match="does not trace cleanly"):
        onnx_export.trace_to_onnx(Branchy(), 32, 17)


def test_opset17_has_native_layernorm_identity_and_dynamic_batch(exports, checkpoint):
    result = exports[17]
    assert result.sha256 == sha256_file(result.path)
    loaded = load_embedding_onnx(result.path)
    assert loaded.opset == 17
    assert result.op_counts["LayerNormalization"] == _layernorm_modules(checkpoint)
    expected_identity = checkpoint_identity(load_checkpoint(checkpoint))
    assert loaded.identity.checkpoint_sha256 == sha256_file(checkpoint)
    assert loaded.identity == result.identity
    expected_identity.check_compatible(loaded.identity, "onnx vs checkpoint")
    assert loaded.metadata["meanloc.opset"] == "17" and loaded.metadata["meanloc.layernorm"] == "native"
    assert loaded.metadata["meanloc.version"] and json.loads(loaded.metadata["meanloc.preprocess"])["color_order"] == "RGB"
    # The preprocessing, input size included, is recorded once (the JSON spec), not also as loose keys.
    assert json.loads(loaded.metadata["meanloc.preprocess"])["size"] == 64
    assert not {"meanloc.input_size", "meanloc.mean", "meanloc.std", "meanloc.color_order"} & set(loaded.metadata)

    proto = onnx.load(str(result.path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    assert loaded.model.graph.input[0].dims == [None, 3, 64, 64]  # the onnx-free reader: symbolic -> None
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    out = session.run(
        None, {"images": np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)}
    )[0]
    assert out.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_opset16_decomposes_layernorm_and_records_fp32_nodes(exports, checkpoint):
    result = exports[16]
    loaded = load_embedding_onnx(result.path)
    assert loaded.opset == 16 and "LayerNormalization" not in result.op_counts
    groups = decomposed_layernorms(loaded.model)
    assert len(groups) == _layernorm_modules(checkpoint)
    assert all(len(group) == 9 for group in groups)  # 7 LN ops + the trained affine Mul/Add
    recorded = json.loads(loaded.metadata[FP32_NODES_KEY])
    assert recorded == fp32_sensitive_nodes(loaded.model) == list(result.fp32_nodes)
    ops_by_name = {node.name: node.op_type for node in loaded.model.graph.node}
    assert {ops_by_name[name] for name in l2_normalisation_nodes(loaded.model)} >= {
        "ReduceSum",
        "Sqrt",
        "Div",
    }
    every_sqrt = {name for name, op in ops_by_name.items() if op == "Sqrt"}
    assert every_sqrt <= set(recorded)  # every square root in the graph is FP32-pinned


def test_both_variants_compute_the_same_embedding(exports):
    batch = np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)
    outs = [
        ort.InferenceSession(str(exports[o].path), providers=["CPUExecutionProvider"]).run(
            None, {"images": batch}
        )[0]
        for o in (17, 16)
    ]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_parity_is_reported_and_within_gates(exports):
    for result in exports.values():
        report = result.parity
        assert report.passed and report.max_abs_diff <= 1e-4 and report.min_cosine >= 0.99999
        assert report.n_images > 0 and report.n_random > 0 and 1 in report.batch_sizes
        assert "PASS" in result.summary()


def test_parity_against_other_weights_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    model, _ = _nano_model(2)
    other, _ = _nano_model(3)
    identity = ModelIdentity("0" * 64, "mean-nano", 128, PreprocessSpec(size=64))
    report = check_parity(
        _export_bytes(model, tmp_path), torch_reference(other.embedder().eval()), identity.preprocess
    )
    assert not report.passed and report.min_cosine < 0.99999
    with pytest.raises(MeanlocError, match="does not match PyTorch"):
        report.raise_if_failed()

    monkeypatch.setattr(
        onnx_export, "torch_reference", lambda _embedder: torch_reference(other.embedder().eval())
    )
    target = tmp_path / "never.onnx"
    with pytest.raises(MeanlocError, match="does not match PyTorch"):
        export_model_onnx(model, identity, target)
    assert not target.exists() and not list(tmp_path.glob(".never.onnx*"))


def _export_bytes(model, folder) -> bytes:
    identity = ModelIdentity("0" * 64, "mean-nano", 128, PreprocessSpec(size=64))
    result = export_model_onnx(model, identity, folder / "plain.onnx", parity=False)
    assert result.parity is None
    return result.path.read_bytes()


def test_mean_small_decomposed_export_passes_parity(tmp_path):
    torch.manual_seed(4)
    config = resolve_config("mean-small")
    identity = ModelIdentity("1" * 64, "mean-small", config.embed_dim, PreprocessSpec(size=config.img_size))
    result = export_model_onnx(build_model(config).eval(), identity, tmp_path / "small.onnx", opset=16)
    assert result.parity.passed and result.parity.max_abs_diff <= 1e-4
    assert (
        len(decomposed_layernorms(load_embedding_onnx(result.path).model)) == 15
    )  # 2+2+4+2 blocks, 4 stem/down, 1 head


@pytest.mark.parametrize(
    ("opset", "decompose", "message"), [(15, False, "unsupported opset"), (17, True, "use opset 16")]
)
def test_unsupported_variants_are_refused(checkpoint, tmp_path, opset, decompose, message):
    with pytest.raises(MeanlocError, match=message):
        export_onnx(checkpoint, tmp_path / "x.onnx", opset=opset, decompose_layernorm=decompose)


def test_unwritable_output_is_one_line_error(checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(MeanlocError, match="cannot create output folder"):
        export_onnx(checkpoint, blocker / "model.onnx", parity=False)


@pytest.mark.parametrize("opset", [16, 17])
def test_the_onnx_free_reader_sees_what_onnx_sees(exports, opset):
    """runtime/onnx_file.py decodes the protobuf itself (the Jetson builder has no `onnx`): compare it
    field by field with the real package on real exports."""
    proto = onnx.load(str(exports[opset].path))
    parsed = load_embedding_onnx(exports[opset].path).model
    assert [(n.name, n.op_type, n.domain, list(n.input), list(n.output)) for n in proto.graph.node] == [
        (n.name, n.op_type, n.domain, n.input, n.output) for n in parsed.graph.node
    ]
    assert [(i.name, i.data_type, list(i.dims)) for i in proto.graph.initializer] == [
        (i.name, i.data_type, i.dims) for i in parsed.graph.initializer
    ]
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in parsed.metadata_props}
    assert [(o.domain, o.version) for o in proto.opset_import] == [(o.domain, o.version) for o in parsed.opset_import]
    assert [o.name for o in proto.graph.output] == [o.name for o in parsed.graph.output] == ["embedding"]


def test_corrupt_and_foreign_onnx_are_refused(exports, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(MeanlocError, match="not a valid ONNX"):
        load_embedding_onnx(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exports[17].path.read_bytes()[:5000])
    with pytest.raises(MeanlocError):
        load_embedding_onnx(truncated)
    with pytest.raises(MeanlocError, match="not found"):
        load_embedding_onnx(tmp_path / "missing.onnx")

    def foreign(name, shape):
        node = onnx.helper.make_node("Relu", [name], ["embedding"])
        graph = onnx.helper.make_graph(
            [node],
            "g",
            [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)],
            [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, shape)],
        )
        path = tmp_path / f"{name}-{len(shape)}.onnx"
        onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
        return path

    with pytest.raises(MeanlocError, match="not a meanloc embedder"):
        load_embedding_onnx(foreign("input", ["N", 3, 64, 64]))
    with pytest.raises(MeanlocError, match="input 'images' has shape"):
        load_embedding_onnx(foreign("images", ["N", 64]))

    stripped = onnx.load(exports[17].path)
    del stripped.metadata_props[:]
    onnx.save(stripped, tmp_path / "stripped.onnx")
    with pytest.raises(ArtifactMismatchError, match="no meanloc metadata"):
        load_embedding_onnx(tmp_path / "stripped.onnx")
