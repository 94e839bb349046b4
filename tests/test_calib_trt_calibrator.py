"""The TensorRT calibrators: wiring against the faithful fake TensorRT and fake CUDA bindings, plus
`gpu` tests that build real INT8 engines on a TensorRT host.

The fake runs each callback the way TensorRT's trampolines do (pyInt8.cpp): an exception is printed
and swallowed. So these tests check what the calibrators hand to TensorRT (device pointers, cache
bytes), what they write, and that a swallowed exception still reaches the caller afterwards;
whether TensorRT accepts the cache is for the `gpu` tests.
"""

import sys

import numpy as np
import pytest
from calib_support import export_nano_onnx, write_folder_tree
from export_fake_tensorrt import FakeTensorRTForWiringTests
from fake_cuda_bindings import CUDA_MODULES, install_fake_gpu

from meanloc.calibration.calibset import from_folder
from meanloc.errors import MeanlocError, MissingDependencyError
from meanloc.runtime.calibration_cache import build_cache, read_calibration_cache
from meanloc.runtime.trt_calibrator import cache_only_calibrator, entropy_calibrator, raise_callback_error


@pytest.fixture()
def fake_trt(monkeypatch):
    """Fake TensorRT 10.3 and a fake pycuda whose "device" memory is host memory."""
    return install_fake_gpu(monkeypatch, "10.3.0.26")


def _batches(count, batch=2, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, size, size)).astype(np.float32) for _ in range(count)]


def test_entropy_calibrator_feeds_each_batch_through_the_device_buffer(fake_trt, tmp_path):
    batches = _batches(3)
    calibrator = entropy_calibrator(None, batches, 2, (3, 8, 8), tmp_path / "c.cache")
    assert isinstance(calibrator, fake_trt.IInt8EntropyCalibrator2)
    assert calibrator.get_batch_size() == 2
    assert calibrator.read_calibration_cache() is None  # no cache yet: TensorRT must calibrate
    for batch in batches:
        (pointer,) = calibrator.get_batch(["images"])
        np.testing.assert_array_equal(fake_trt.memory.view(pointer, batch.shape, np.float32), batch)
    assert calibrator.get_batch(["images"]) is None and calibrator.batches_fed == 3
    calibrator.release()
    assert fake_trt.memory.live == {}  # the one CUDA layer freed the device buffer


def test_defect_9_an_exception_in_a_callback_reaches_the_caller_after_tensorrt_swallowed_it(fake_trt, tmp_path):
    """A batch TensorRT never sees (here: the wrong shape, as a broken image pipeline would give) used to
    end calibration early without an error: TensorRT prints it and treats it as the last batch."""
    calibrator = entropy_calibrator(fake_trt, _batches(2) + _batches(1, batch=3), 2, (3, 8, 8), tmp_path / "c.cache")
    fed = [fake_trt._callback(calibrator, "get_batch", None, ["images"]) for _ in range(3)]
    assert fed[0] and fed[1] and fed[2] is None  # what TensorRT saw: two batches, then "done"
    assert "Exception caught in get_batch(): MeanlocError" in fake_trt.stderr_lines[-1]
    with pytest.raises(MeanlocError, match=r"calibration batch has shape \(3, 3, 8, 8\), expected \(2, 3, 8, 8\)"):
        raise_callback_error(calibrator)
    calibrator.release()
    clean = entropy_calibrator(fake_trt, _batches(1), 2, (3, 8, 8), tmp_path / "d.cache")
    fake_trt._callback(clean, "get_batch", None, ["images"])
    raise_callback_error(clean)  # nothing recorded: nothing raised
    clean.release()


def test_cache_written_by_tensorrt_is_stored_and_reused_for_the_same_version(fake_trt, tmp_path):
    path = tmp_path / "c.cache"
    calibrator = entropy_calibrator(fake_trt, [], 1, (3, 8, 8), path)
    produced = build_cache({"images": 2.0, "conv": 5.0}, fake_trt.__version__).to_text().encode()
    calibrator.write_calibration_cache(memoryview(produced))  # TensorRT hands over a buffer
    assert read_calibration_cache(path).amax()["conv"] == pytest.approx(5.0)
    again = entropy_calibrator(fake_trt, [], 1, (3, 8, 8), path)
    assert again.read_calibration_cache() == produced
    with pytest.raises(MeanlocError):
        calibrator.write_calibration_cache(b"not a cache")
    assert path.read_bytes() == produced  # the bad write left the good cache in place
    assert isinstance(calibrator.callback_error, MeanlocError)  # and it is remembered for after the build


def test_cache_of_another_tensorrt_version_makes_tensorrt_recalibrate(fake_trt, tmp_path):
    path = tmp_path / "c.cache"
    path.write_text(build_cache({"images": 2.0}, "8.5").to_text())
    calibrator = entropy_calibrator(fake_trt, [], 1, (3, 8, 8), path)
    assert calibrator.read_calibration_cache() is None


def test_cache_only_calibrator_serves_the_cpu_cache_and_never_calibrates(fake_trt):
    data = build_cache({"images": 2.0}, "10.3").to_text().encode()
    calibrator = cache_only_calibrator(None, data, batch_size=4)
    assert isinstance(calibrator, fake_trt.IInt8EntropyCalibrator2)
    assert calibrator.read_calibration_cache() == data and calibrator.get_batch_size() == 4
    calibrator.write_calibration_cache(b"ignored")
    with pytest.raises(MeanlocError, match="did not accept the calibration cache"):
        calibrator.get_batch(["images"])
    with pytest.raises(MeanlocError, match="not a TensorRT calibration cache"):
        cache_only_calibrator(fake_trt, b"{}")
    minmax = build_cache({"images": 2.0}, "10.3", algorithm="MinMaxCalibration").to_text().encode()
    assert isinstance(cache_only_calibrator(fake_trt, minmax), fake_trt.IInt8MinMaxCalibrator)


def test_tensorrt_without_calibrators_is_a_clear_error(monkeypatch):
    fake = FakeTensorRTForWiringTests("10.3.0")
    del fake.IInt8EntropyCalibrator2, fake.IInt8MinMaxCalibrator, fake.IInt8EntropyCalibrator
    with pytest.raises(MeanlocError, match="no implicit INT8 calibrators"):
        cache_only_calibrator(fake, build_cache({"images": 1.0}, "10.3").to_text().encode())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        cache_only_calibrator(None, b"")


def test_no_cuda_binding_is_a_clear_error(fake_trt, monkeypatch, tmp_path):
    for name in CUDA_MODULES["pycuda"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"pycuda.*cuda-python"):
        entropy_calibrator(fake_trt, [], 1, (3, 8, 8), tmp_path / "c.cache")


# --- real TensorRT (run on a TensorRT host: pytest -m gpu) ---------------------------------------


def _build_int8_engine(trt, onnx_path, calibrator, input_size):
    from meanloc.runtime.trt_api import tensorrt_logger

    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    flags = (
        0
        if int(trt.__version__.split(".")[0]) >= 10
        else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(onnx_path)), [
        parser.get_error(i).desc() for i in range(parser.num_errors)
    ]
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (2, 3, input_size, input_size)
    profile.set_shape("images", shape, shape, shape)
    config.add_optimization_profile(profile)
    config.set_calibration_profile(profile)
    config.int8_calibrator = calibrator
    plan = builder.build_serialized_network(network, config)
    raise_callback_error(calibrator)
    return plan


@pytest.mark.gpu
def test_gpu_device_calibration_writes_a_cache_our_reader_parses(tmp_path):
    import tensorrt as trt

    exported = export_nano_onnx(tmp_path / "nano.onnx")
    write_folder_tree(tmp_path / "img", {"a": 4, "b": 4})
    calib_set = from_folder(tmp_path / "img", exported.identity.preprocess, num_images=8, batch_size=2)
    size = exported.identity.preprocess.size
    calibrator = entropy_calibrator(trt, calib_set.batches(), 2, (3, size, size), tmp_path / "device.cache")
    try:
        assert _build_int8_engine(trt, exported.path, calibrator, size) is not None
    finally:
        calibrator.release()
    assert calibrator.batches_fed == 4
    cache = read_calibration_cache(tmp_path / "device.cache")
    assert "images" in cache.scales and cache.algorithm == "EntropyCalibration2"
    # Defect 11 of issue 15: the device-written cache names TensorRT's own tensors, and the builder takes it.
    from meanloc.export.engine_build import build_engine

    result = build_engine(exported.path, tmp_path / "device.engine", precision="int8-implicit",
                          calibration_cache=tmp_path / "device.cache", echo=None)
    assert result.sidecar.int8_layers["int8_layers"] > 0


@pytest.mark.gpu
def test_gpu_engine_builds_from_the_cpu_made_cache(tmp_path):
    import tensorrt as trt

    from meanloc.calibration.pipeline import calibrate

    exported = export_nano_onnx(tmp_path / "nano.onnx")
    write_folder_tree(tmp_path / "img", {"a": 4, "b": 4})
    calib_set = from_folder(tmp_path / "img", exported.identity.preprocess, num_images=8, batch_size=4)
    outputs = calibrate(exported.path, calib_set, tmp_path / "out", "minmax", trt.__version__, progress=False)
    calibrator = cache_only_calibrator(trt, outputs.cache.read_bytes(), batch_size=2)
    assert _build_int8_engine(trt, exported.path, calibrator, exported.identity.preprocess.size) is not None
