"""The MEAN network: reference sizes, outputs, export-readiness."""

import warnings
from pathlib import Path

import pytest
import torch

from meanloc.errors import MeanlocError
from meanloc.training.model import build_model, resolve_config
from meanloc.training.model.summary import count_macs, count_params

# A copy of shared/reference/official_mean_state_dict.tsv: the official checkpoints' key/shape layout.
REFERENCE_TSV = Path(__file__).parent / "data" / "official_mean_state_dict.tsv"


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return build_model(resolve_config("mean-paper"))


def test_paper_parameter_counts_match_reference(paper_model):
    # Reference figures (mean-model.md §3), counting the unused ImageNet head as the reference does.
    assert count_params(paper_model) == 36_498_820
    assert count_params(paper_model.embedder()) == 27_820_128
    assert count_params(build_model(resolve_config("mean-paper", num_classes=150))) == 35_650_831


def test_paper_inference_macs_match_reference(paper_model):
    macs, _ = count_macs(paper_model.embedder().eval(), torch.zeros(1, 3, 384, 384))
    assert round(macs / 1e9, 2) == 13.09


def test_state_dict_layout_matches_official_tsv(paper_model):
    rows = [line.split("\t") for line in REFERENCE_TSV.read_text().splitlines()[1:]]
    state = paper_model.state_dict()
    assert list(state) == [key for key, _, _ in rows]
    for key, shape, _ in rows:
        expected = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        assert tuple(state[key].shape) == expected, key


def test_training_forward_returns_what_the_losses_need():
    config = resolve_config("mean-nano")
    model = build_model(config).train()
    sat, drone = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    out_sat, out_drone = model(sat, drone)
    grid = config.feature_grid**2
    for out in (out_sat, out_drone):
        assert out.aligned.shape == (3, config.fused_dim, grid)
        assert len(out.logits) == config.block + 1
        assert all(logits.shape == (3, config.num_classes) for logits in out.logits)
        assert out.global_feature.shape == (3, config.embed_dim)
    # The two DEG parts are one tensor under independent dropout masks: with dropout off they coincide.
    model.eval()
    parts = model.model_1.DEG(torch.randn(2, config.embed_dim, 2, 2))
    assert torch.equal(parts[0], parts[1])


def test_block_zero_disables_part_heads():
    model = build_model(resolve_config("mean-nano", block=0))
    assert not any(key.startswith("model_1.classifier_mcb") for key in model.state_dict())
    out, _ = model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64))
    assert len(out.logits) == 1


def test_model_embed_is_the_exported_embedder_and_is_unit_norm():
    model = build_model(resolve_config("mean-nano")).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        embedding = model.embedder()(images)
        reference = model.embed(images)
        global_feature, _ = model.model_1.convnext(images)  # the training branches' retrieval feature
    assert embedding.shape == (4, 128)
    assert torch.equal(embedding, reference)
    torch.testing.assert_close(embedding, torch.nn.functional.normalize(global_feature, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(4))


def test_embedder_traces_to_onnx_without_control_flow_warnings(tmp_path):
    model = build_model(resolve_config("mean-nano")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(
            model.embedder(),
            (torch.randn(1, 3, 64, 64),),
            str(tmp_path / "nano.onnx"),
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    import onnx

    graph = onnx.load(str(tmp_path / "nano.onnx")).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]  # only the batch axis is dynamic
    assert any(node.op_type == "LayerNormalization" for node in graph.node)
    assert not any(node.op_type in ("If", "Loop") for node in graph.node)


def test_unknown_preset_and_bad_overrides_are_one_line_errors():
    with pytest.raises(MeanlocError, match="did you mean 'mean-paper'"):
        resolve_config("mean-papr")
    with pytest.raises(MeanlocError, match="did you mean 'num_classes'"):
        resolve_config("mean-nano", num_clases=3)
    with pytest.raises(MeanlocError, match="multiple of 32"):
        resolve_config("mean-nano", img_size=100)
