"""The engine sidecar (one dataclass: JSON in and out, checked against the running environment), and the
Jetson/L4T probes behind the environment."""

import json
from pathlib import Path

import pytest

from meanloc.errors import ArtifactMismatchError
from meanloc.runtime.engine_sidecar import EngineSidecar, engine_sidecar_path, recorded_environment
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.trt_env import (
    jetpack_from_l4t,
    jetson_model,
    l4t_release,
    opencv_has_gstreamer,
    parse_nv_tegra_release,
)

ORIN_JP6 = {
    "tensorrt_version": "10.3.0.30",
    "cuda_runtime_version": "12.6",
    "gpu_name": "Orin",
    "compute_capability": "8.7",
    "l4t_release": "36.4.3",
    "dla_cores": 2,
}


IDENTITY = ModelIdentity("ab" * 32, "mean-nano", 128, PreprocessSpec(size=64), precision="fp16")


def _sidecar(**changes):
    environment = recorded_environment(ORIN_JP6, dla_core=changes.pop("dla_core", None))
    environment.update(changes)
    return EngineSidecar(identity=IDENTITY, environment=environment)


def test_same_machine_passes():
    _sidecar().check(ORIN_JP6)
    _sidecar(dla_core=1).check(ORIN_JP6)


@pytest.mark.parametrize(
    ("sidecar_changes", "env_changes", "expected"),
    [
        ({"tensorrt_version": "8.5.2.2"}, {}, "TensorRT 8.5.2.2 vs 10.3.0.30"),
        ({}, {"tensorrt_version": None}, "TensorRT is not installed here"),
        ({"gpu_name": "Xavier", "compute_capability": "7.2"}, {}, "compute capability 7.2 vs 8.7"),
        ({}, {"gpu_name": "NVIDIA H100"}, "GPU 'Orin' vs 'NVIDIA H100'"),
        ({}, {"gpu_name": None}, "no CUDA GPU found here"),
        ({"l4t_release": "36.3.0"}, {}, "L4T 36.3.0 vs 36.4.3"),
        ({"l4t_release": None}, {}, "L4T none vs 36.4.3"),
        ({"dla_core": 1}, {"dla_cores": 0}, "DLA core 1 requested but this machine has 0 DLA cores"),
    ],
)
def test_mismatches_are_named_with_both_sides_and_the_fix(sidecar_changes, env_changes, expected):
    env = dict(ORIN_JP6, **env_changes)
    with pytest.raises(ArtifactMismatchError) as caught:
        _sidecar(**sidecar_changes).check(env)
    message = str(caught.value)
    assert expected in message
    assert message.startswith("engine built for TensorRT") and "rebuild it here with `meanloc export engine`" in message
    assert "\n" not in message


def test_sidecar_round_trips_through_json_and_refuses_what_is_not_one(tmp_path):
    sidecar = EngineSidecar(
        identity=IDENTITY, environment=recorded_environment(ORIN_JP6), engine_sha256="c" * 64, precision="fp16",
        profile={"min": 1, "opt": 1, "max": 8}, onnx_identity=IDENTITY, build_warnings=["w"],
        int8_layers={"layers": 3},
    )
    engine = tmp_path / "m.engine"
    path = sidecar.write(str(engine))
    assert path == engine_sidecar_path(str(engine))
    payload = json.loads(Path(path).read_text())
    assert payload["kind"] == "tensorrt-engine" and payload["identity"]["preset"] == "mean-nano"
    assert EngineSidecar.load(str(engine)) == sidecar
    # A sidecar written before this dataclass (fewer keys, extra ones) still loads.
    old = {"kind": "tensorrt-engine", "format_version": 1, "identity": IDENTITY.to_dict(),
           "environment": recorded_environment(ORIN_JP6), "precision": "fp16", "future_key": 1}
    assert EngineSidecar.from_json(old, "old.json").engine_precision == "fp16"
    with pytest.raises(ArtifactMismatchError, match="lacks the 'environment' section"):
        EngineSidecar.from_json({"kind": "tensorrt-engine", "format_version": 1, "identity": {}}, "x.json")
    with pytest.raises(ArtifactMismatchError, match="is a 'bank' artifact"):
        EngineSidecar.from_json({"kind": "bank", "format_version": 1}, "x.json")
    with pytest.raises(ArtifactMismatchError, match=r"engine sidecar x.json: invalid model identity"):
        EngineSidecar.from_json(dict(old, identity={"preset": "x"}), "x.json")
    with pytest.raises(ArtifactMismatchError, match="has no sidecar manifest"):
        EngineSidecar.load(str(tmp_path / "other.engine"))


def test_sidecar_path_and_recorded_environment_fields():
    assert engine_sidecar_path("/x/model.fp16.engine") == "/x/model.fp16.engine.json"
    recorded = recorded_environment(dict(ORIN_JP6, cpu_model="ARMv8"), dla_core=0)
    assert recorded == {
        "tensorrt_version": "10.3.0.30",
        "cuda_runtime_version": "12.6",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "l4t_release": "36.4.3",
        "dla_core": 0,
    }


def test_l4t_jetpack_and_board_model_probes(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"
    )
    assert l4t_release(str(release)) == "35.4.1"
    assert jetpack_from_l4t("35.4.1") == "5.1.2"
    assert jetpack_from_l4t("36.4.3") == "6.2"
    assert jetpack_from_l4t("36.4.7") == "6.1/6.2"  # unknown patch release: the major.minor row
    assert jetpack_from_l4t("32.7.4") is None and jetpack_from_l4t(None) is None
    assert parse_nv_tegra_release("not a release file") is None
    assert l4t_release(str(tmp_path / "absent")) is None

    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert jetson_model(str(model)) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert jetson_model(str(tmp_path / "absent")) is None


def test_opencv_gstreamer_detection_from_build_information():
    jetpack = "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.16.3)\n"
    pypi = "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   NO\n"
    assert opencv_has_gstreamer(jetpack) is True
    assert opencv_has_gstreamer(pypi) is False
    assert opencv_has_gstreamer("") is False
