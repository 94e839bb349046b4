"""evaluate_model / extract_embeddings / `meanloc eval` on tiny on-disk University-1652 trees."""

import json
from pathlib import Path

import numpy as np
import pytest
from data_support import code_of, make_sues_raw, make_university

from meanloc.cli import main
from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.images import read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch
from meanloc.training.evaluate import evaluate_model, extract_embeddings, format_report_table, write_report

# Embedding angle (degrees) per image code (see data_support): the distractor satellite 0002 (code 5)
# lies closer to drone 0000 (code 0) than drone 0000's own satellite (code 3).
ANGLES = {0: 0.0, 3: 20.0, 5: 10.0, 1: 90.0, 4: 90.0, 2: 60.0}


class LookupBackend(EmbeddingBackend):
    """A real EmbeddingBackend whose 'network' maps each image's code to a chosen 2-D embedding."""

    name = "lookup"

    def __init__(self, size=16):
        self.identity = ModelIdentity("0" * 64, "lookup", 2, PreprocessSpec(size=size))
        self.max_batch = 3
        self.batches = []

    def _embed_chunk(self, batch):
        self.batches.append(batch.copy())
        radians = np.deg2rad([ANGLES[int(c)] for c in code_of(batch)])
        return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def university(tmp_path_factory) -> Path:
    return make_university(tmp_path_factory.mktemp("u1652_eval"))


def rows(report):
    return {(r["direction"], r["protocol"]): r for r in report["results"]}


def test_known_answer_both_directions_and_protocols(university):
    report = evaluate_model(LookupBackend(), university, "university", batch_size=2)
    assert report["kind"] == "eval_report" and report["model"]["backend"] == "lookup"
    table = rows(report)
    full, junk = table["d2s", "full"]["metrics"], table["d2s", "junk_distractors"]["metrics"]
    # drone 0000 (2 queries) ranks the distractor first under "full": positive at rank 2
    assert (full["R@1"], full["R@5"], full["AP"], full["AP_plain"]) == (50.0, 100.0, 62.5, 75.0)
    assert (junk["R@1"], junk["AP"]) == (100.0, 100.0)
    assert (full["gallery_ranked"], junk["gallery_ranked"], junk["gallery_on_disk"]) == (3, 2, 3)
    assert full["queries"] == 4 and table["d2s", "full"]["data"]["unreadable_queries"] == 1
    assert report["unreadable_images"] == [
        str(university / "test" / "query_drone" / "0001" / "image-03.jpeg")
    ]
    for protocol in ("full", "junk_distractors"):
        s2d = table["s2d", protocol]["metrics"]
        assert (s2d["R@1"], s2d["AP"], s2d["protocol"]) == (100.0, 100.0, protocol)
    assert (
        table["s2d", "full"]["metrics"]["gallery_ranked"],
        table["s2d", "junk_distractors"]["metrics"]["gallery_ranked"],
    ) == (6, 4)


def test_validation_split_and_single_protocol(university):
    report = evaluate_model(
        LookupBackend(), university, "synthetic", directions=("d2s",), protocols=("full",), split="val"
    )
    assert [(r["direction"], r["protocol"]) for r in report["results"]] == [("d2s", "full")]
    assert report["split"] == "val" and report["results"][0]["metrics"]["R@1"] == 50.0


def test_report_files_and_table_name_the_protocol(university, tmp_path):
    report = evaluate_model(LookupBackend(), university, "university")
    json_path, table_path = write_report(report, tmp_path / "out" / "report.json")
    assert json.loads(json_path.read_text())["results"] == json.loads(json.dumps(report["results"]))
    table = table_path.read_text()
    assert table == format_report_table(report)
    assert table.count("| junk_distractors |") == 2 and table.count("| full |") == 2
    assert "(=R@1)" in table and "trapezoid" in table


def test_flip_tta_sums_original_and_flipped_embeddings(tmp_path):
    from data_support import write_image

    paths = [str(write_image(tmp_path / f"{i}.png", noise_seed=i)) for i in range(3)]
    spec = PreprocessSpec(size=16)

    def left_right(batch):  # deliberately not flip-invariant
        return np.stack([batch[:, 0, :, :8].mean((1, 2)), batch[:, 0, :, 8:].mean((1, 2)) + 3.0], axis=1)

    plain = extract_embeddings(left_right, paths, spec, batch_size=2)
    tta = extract_embeddings(left_right, paths, spec, batch_size=2, flip_tta=True)
    batch = preprocess_batch([read_image(p) for p in paths], spec)
    assert np.allclose(plain.features, left_right(batch))
    expected = l2_normalise(left_right(batch) + left_right(batch[:, :, :, ::-1]))
    assert np.allclose(tta.features, expected, atol=1e-6)
    assert not np.allclose(tta.features, l2_normalise(plain.features))


def test_torch_model_path_restores_training_mode(university):
    torch = pytest.importorskip("torch")
    from meanloc.training.model import build_model, resolve_config
    from meanloc.training.torch_backend import TorchBackend

    torch.manual_seed(0)
    model = build_model(resolve_config("mean-nano"))
    model.train()
    with TorchBackend.for_model(model) as backend:
        assert not model.training  # the exported embedder runs in eval mode (LayerNorm/dropout)
        report = evaluate_model(backend, university, "university", directions=("d2s",), flip_tta=True, batch_size=8)
    assert model.training
    assert report["preprocess"]["size"] == 64 and report["model"]["preset"] == "mean-nano"
    for row in report["results"]:
        assert 0.0 <= row["metrics"]["R@1"] <= 100.0 and row["metrics"]["units"] == "percent"


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from meanloc.training.checkpoint import save_checkpoint
    from meanloc.training.model import build_model, resolve_config

    torch.manual_seed(0)
    config = resolve_config("mean-nano")
    path = tmp_path_factory.mktemp("ckpt") / "nano.pt"
    sha = save_checkpoint(path, build_model(config), config)
    return path, sha


def test_cli_checkpoint(university, nano_checkpoint, tmp_path, capsys):
    path, sha = nano_checkpoint
    out = tmp_path / "r.json"
    argv = ["eval", "--checkpoint", str(path), "--data", str(university), "--out", str(out)]
    code = main(
        [*argv, "--direction", "d2s", "--protocol", "junk_distractors", "--device", "cpu", "--no-progress"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["model"]["checkpoint_sha256"] == sha
    assert [r["protocol"] for r in report["results"]] == ["junk_distractors"]
    assert out.with_suffix(".md").is_file() and "junk_distractors" in capsys.readouterr().out


def test_cli_onnx_matches_checkpoint(university, nano_checkpoint, tmp_path):
    from meanloc.export.onnx_export import export_onnx

    path, _ = nano_checkpoint
    onnx_path = tmp_path / "nano.onnx"
    export_onnx(str(path), str(onnx_path))
    reports = {}
    for flag, model in (("--checkpoint", path), ("--onnx", onnx_path)):
        out = tmp_path / f"{flag[2:]}.json"
        argv = ["eval", flag, str(model), "--data", str(university), "--out", str(out), "--direction", "d2s"]
        assert main([*argv, "--no-progress"]) == 0
        reports[flag] = json.loads(out.read_text())["results"]
    for a, b in zip(reports["--checkpoint"], reports["--onnx"]):
        assert a["metrics"]["R@1"] == b["metrics"]["R@1"]
        assert a["metrics"]["AP"] == pytest.approx(b["metrics"]["AP"], abs=1e-3)


def test_evaluation_embeds_with_the_exported_graph(university, tmp_path):
    """Training-time validation, `meanloc eval --checkpoint` and the exported ONNX embed every
    dataset image alike (<= 1e-5): evaluation runs the exported embedder, not a twin of it."""
    torch = pytest.importorskip("torch")
    from meanloc.export.onnx_export import export_onnx
    from meanloc.runtime.backends import open_backend
    from meanloc.training.checkpoint import save_checkpoint
    from meanloc.training.data.splits import load_eval_split
    from meanloc.training.model import build_model, resolve_config
    from meanloc.training.torch_backend import TorchBackend

    torch.manual_seed(3)
    config = resolve_config("mean-nano")
    model = build_model(config)
    with torch.no_grad():  # non-trivial LayerNorm affines, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    checkpoint = tmp_path / "nano.pt"
    save_checkpoint(checkpoint, model, config)
    export_onnx(str(checkpoint), str(tmp_path / "nano.onnx"), parity=False)
    split = load_eval_split(university, "university", "d2s", "test")
    paths = split.gallery_paths + split.query_paths
    model.train()  # as the trainer calls validation
    backends = {"validation": TorchBackend.for_model(model), "eval --checkpoint": open_backend(str(checkpoint)),
                "onnx": open_backend(str(tmp_path / "nano.onnx"), providers=["cpu"])}
    embeddings = {}
    for name, backend in backends.items():
        with backend:
            spec = backend.identity.preprocess
            result = extract_embeddings(backend.embed, paths, spec, batch_size=4)
            embeddings[name], kept = result.features, result.kept
    assert model.training
    assert embeddings["onnx"].shape == (len(kept), config.embed_dim) and len(kept) >= 6
    for name in ("validation", "eval --checkpoint"):
        assert np.abs(embeddings[name] - embeddings["onnx"]).max() <= 1e-5, name
    with torch.no_grad():  # MEAN.embed is the same graph
        batch = torch.from_numpy(preprocess_batch([read_image(paths[i]) for i in kept[:4]], spec))
        direct = model.eval().embed(batch).numpy()
    assert np.abs(direct - embeddings["onnx"][:4]).max() <= 1e-5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "/nonexistent/u1652"], "dataset folder not found"),
        (["--dataset", "sues200", "--altitude", "100"], "valid: 150, 200, 250, 300"),
        (["--dataset", "sues200"], "per altitude"),
        (["--altitude", "150"], "SUES-200 only"),
    ],
)
def test_cli_bad_input_is_one_line(university, nano_checkpoint, tmp_path, capsys, extra, message):
    sues = make_sues_raw(tmp_path / "sues", locations=3)
    data = str(sues) if "sues200" in extra else str(university)
    argv = [
        "eval",
        "--checkpoint",
        str(nano_checkpoint[0]),
        "--data",
        data,
        "--out",
        str(tmp_path / "r.json"),
    ]
    assert main(argv + extra + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("meanloc: error:")
    assert not (tmp_path / "r.json").exists()


def test_hard_linked_files_are_embedded_once(tmp_path):
    import os

    root = make_university(tmp_path / "u")
    test = root / "test"
    for query_dir, gallery_dir in (
        ("query_drone", "gallery_drone"),
        ("query_satellite", "gallery_satellite"),
    ):
        for path in sorted((test / query_dir).glob("*/*.png")):
            twin = test / gallery_dir / path.parent.name / path.name
            if not twin.exists():  # satellite files share the name <id>.png
                continue
            path.unlink()
            os.link(twin, path)
    backend = LookupBackend()
    report = evaluate_model(backend, root, "university", batch_size=4)
    readable = [p for p in test.glob("*/*/*.png")]
    assert sum(len(b) for b in backend.batches) == len({os.stat(p).st_ino for p in readable}) < len(readable)
    assert rows(report)["d2s", "full"]["metrics"]["R@1"] == 50.0
