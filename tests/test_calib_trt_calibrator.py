"""The TensorRT calibrators: wiring against a stand-in `tensorrt` and stand-in CUDA bindings, plus
`gpu` tests that build real INT8 engines on a TensorRT host.

`FakeTensorRTForWiringTests` only provides the base class TensorRT's Python API subclasses, so
these tests check what the calibrators hand to TensorRT (device pointers, cache bytes) and what
they write; whether TensorRT accepts the cache is for the `gpu` tests.
"""

import sys
import types

import numpy as np
import pytest
from calib_support import export_nano_onnx, write_folder_tree

from meanloc.calibration.cache import build_cache, read_calibration_cache
from meanloc.calibration.calibset import from_folder
from meanloc.calibration.trt_calibrator import (
    CudaPythonMemory,
    PyCudaMemory,
    cache_only_calibrator,
    entropy_calibrator,
    open_device_memory,
)
from meanloc.errors import MeanlocError


class FakeTensorRTForWiringTests(types.ModuleType):
    """A `tensorrt` module with just the calibrator base class and a version."""

    def __init__(self, version: str = "10.3.0.26", calibrators: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        if calibrators:
            self.IInt8EntropyCalibrator2 = type(
                "IInt8EntropyCalibrator2", (), {"__init__": lambda self: None}
            )


class FakeDeviceMemory:
    """Host arrays standing in for device buffers, addressed by fake pointers."""

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}
        self.freed: list[int] = []

    def alloc(self, nbytes: int) -> int:
        pointer = 0x1000 * (len(self.buffers) + 1)
        self.buffers[pointer] = np.zeros(nbytes // 4, dtype=np.float32)
        return pointer

    def copy_to_device(self, pointer: int, array: np.ndarray) -> None:
        self.buffers[pointer][:] = array.ravel()

    def free(self, pointer: int) -> None:
        self.freed.append(pointer)


@pytest.fixture()
def fake_trt(monkeypatch):
    fake = FakeTensorRTForWiringTests()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def _batches(count, batch=2, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, size, size)).astype(np.float32) for _ in range(count)]


def test_entropy_calibrator_feeds_each_batch_through_the_device_buffer(fake_trt, tmp_path):
    memory = FakeDeviceMemory()
    batches = _batches(3)
    calibrator = entropy_calibrator(None, batches, 2, (3, 8, 8), tmp_path / "c.cache", memory)
    assert isinstance(calibrator, fake_trt.IInt8EntropyCalibrator2)
    assert calibrator.get_batch_size() == 2
    assert calibrator.read_calibration_cache() is None  # no cache yet: TensorRT must calibrate
    for batch in batches:
        (pointer,) = calibrator.get_batch(["images"])
        np.testing.assert_array_equal(memory.buffers[pointer].reshape(batch.shape), batch)
    assert calibrator.get_batch(["images"]) is None and calibrator.batches_fed == 3
    calibrator.release()
    assert memory.freed == list(memory.buffers)


def test_entropy_calibrator_refuses_a_batch_of_the_wrong_shape(fake_trt, tmp_path):
    calibrator = entropy_calibrator(
        fake_trt, _batches(1, batch=3), 2, (3, 8, 8), tmp_path / "c.cache", FakeDeviceMemory()
    )
    with pytest.raises(MeanlocError, match="expected"):
        calibrator.get_batch(["images"])


def test_cache_written_by_tensorrt_is_stored_and_reused_for_the_same_version(fake_trt, tmp_path):
    path = tmp_path / "c.cache"
    calibrator = entropy_calibrator(fake_trt, [], 1, (3, 8, 8), path, FakeDeviceMemory())
    produced = build_cache({"images": 2.0, "conv": 5.0}, fake_trt.__version__).to_text().encode()
    calibrator.write_calibration_cache(memoryview(produced))  # TensorRT hands over a buffer
    assert read_calibration_cache(path).amax()["conv"] == pytest.approx(5.0)
    again = entropy_calibrator(fake_trt, [], 1, (3, 8, 8), path, FakeDeviceMemory())
    assert again.read_calibration_cache() == produced
    with pytest.raises(MeanlocError):
        calibrator.write_calibration_cache(b"not a cache")
    assert path.read_bytes() == produced  # the bad write left the good cache in place


def test_cache_of_another_tensorrt_version_makes_tensorrt_recalibrate(fake_trt, tmp_path):
    path = tmp_path / "c.cache"
    path.write_text(build_cache({"images": 2.0}, "8.5").to_text())
    calibrator = entropy_calibrator(fake_trt, [], 1, (3, 8, 8), path, FakeDeviceMemory())
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


def test_tensorrt_without_calibrators_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRTForWiringTests("11.0.0", calibrators=False))
    with pytest.raises(MeanlocError, match="no implicit INT8 calibrators"):
        cache_only_calibrator(None, build_cache({"images": 1.0}, "10.3").to_text().encode())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(MeanlocError, match="TensorRT is not installed"):
        cache_only_calibrator(None, b"")


def _fake_pycuda(monkeypatch, copies):
    driver = types.ModuleType("pycuda.driver")

    class Allocation:
        def __init__(self, nbytes):
            self.pointer, self.freed = 0xABC000 + nbytes, False

        def __int__(self):
            return self.pointer

        def free(self):
            self.freed = True

    driver.mem_alloc = Allocation
    driver.memcpy_htod = lambda pointer, array: copies.append((pointer, array.copy()))
    package = types.ModuleType("pycuda")
    package.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "pycuda.autoprimaryctx", types.ModuleType("pycuda.autoprimaryctx"))


def _fake_cuda_python(monkeypatch, calls):
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    runtime.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1)
    runtime.cudaMalloc = lambda nbytes: (0, 0xD000)
    runtime.cudaMemcpy = lambda dst, src, nbytes, kind: calls.append(("memcpy", dst, nbytes, kind)) or (0,)
    runtime.cudaFree = lambda pointer: calls.append(("free", pointer)) or (2,)  # an error code
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)


def test_device_memory_prefers_pycuda(monkeypatch):
    copies = []
    _fake_pycuda(monkeypatch, copies)
    memory = open_device_memory()
    assert isinstance(memory, PyCudaMemory)
    pointer = memory.alloc(64)
    memory.copy_to_device(pointer, np.ones(16, dtype=np.float32))
    assert copies[0][0] == pointer and copies[0][1].sum() == 16
    memory.free(pointer)


def test_device_memory_falls_back_to_cuda_python_and_checks_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    calls = []
    _fake_cuda_python(monkeypatch, calls)
    memory = open_device_memory()
    assert isinstance(memory, CudaPythonMemory)
    pointer = memory.alloc(64)
    memory.copy_to_device(pointer, np.ones(16, dtype=np.float32))
    assert calls == [("memcpy", 0xD000, 64, 1)]
    with pytest.raises(MeanlocError, match="cudaFree failed"):
        memory.free(pointer)


def test_no_cuda_binding_is_a_clear_error(monkeypatch):
    for name in ("pycuda", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MeanlocError, match="pycuda or cuda-python"):
        open_device_memory()


# --- real TensorRT (run on a TensorRT host: pytest -m gpu) ---------------------------------------


def _build_int8_engine(trt, onnx_path, calibrator, input_size):
    logger = trt.Logger(trt.Logger.WARNING)
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
    return builder.build_serialized_network(network, config)


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
