"""TensorRT engine backend (JetPack 5.1 to 6.2, x86 TensorRT 10.x).

Only the name-based I/O API is used (`num_io_tensors`, `get_tensor_name/mode/dtype/shape`,
`get_tensor_profile_shape`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`): per
TensorRT's docstrings it is identical on 8.5, 8.6 and 10.x, while the bindings API is deprecated
in 8.5 and gone in 10. Buffers are allocated once at the profile's maximum batch (pinned host
memory, so copies are truly asynchronous), inference runs on a non-default stream (the default
stream adds device-wide synchronisations), and the engine is warmed up once after loading.

A plan only loads on the TensorRT version and GPU that built it, so the `<engine>.json` sidecar
is checked against this machine before deserializing (`EngineSidecar.check`). TensorRT, its
process-wide logger and CUDA come from the device layer (`trt_api`, `cuda_device`).
Never imports torch. Python 3.8 compatible.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError

from ..artifacts import sha256_file
from ..cuda_device import CudaMemory, open_cuda_memory
from ..engine_sidecar import EngineSidecar
from ..identity import ModelIdentity
from ..onnx_contract import INPUT_NAME
from ..trt_api import import_tensorrt, tensorrt_logger
from ..trt_env import engine_environment
from .base import EmbeddingBackend, l2_normalise

STAGES = ("h2d", "inference", "d2h")
# TensorRT DataType name -> numpy. Not `trt.nptype`: on TensorRT 8.5.2 it touches `np.bool`,
# which NumPy 1.24 removed, so it fails for every type there.
NUMPY_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


class TensorRTBackend(EmbeddingBackend):
    """`embed` with a serialized TensorRT engine built by `meanloc export engine`."""

    name = "tensorrt"

    def __init__(
        self,
        path: str,
        max_batch: Optional[int] = None,
        memory: Optional[CudaMemory] = None,
        warmup_runs: int = 2,
        warmup_batch: Optional[int] = None,
    ) -> None:
        """`warmup_batch`: the batch the first runs use (default: the profile's opt batch, which
        `meanloc export engine` sets to 1, the onboard loop's batch)."""
        self.path = str(path)
        self._memory = None  # type: Optional[CudaMemory]
        try:
            with open(self.path, "rb") as handle:
                plan = handle.read()
        except OSError as exc:
            raise MeanlocError("cannot read engine {}: {}".format(self.path, exc.strerror or exc)) from None
        self.sidecar = EngineSidecar.load(self.path)
        engine_sha256 = sha256_file(self.path)
        recorded_sha256 = self.sidecar.engine_sha256
        if recorded_sha256 and recorded_sha256 != engine_sha256:
            raise ArtifactMismatchError(
                "engine {} does not match its sidecar (sha256 {}... vs recorded {}...); rebuild it".format(
                    self.path, engine_sha256[:12], str(recorded_sha256)[:12]
                )
            )
        self.sidecar.check(engine_environment(probe_dla=self.sidecar.dla_core is not None))
        self.identity = dataclasses.replace(
            self.sidecar.identity, precision=self.sidecar.engine_precision, artifact_sha256=engine_sha256
        )

        # TensorRT only now: a file that is no meanloc engine is refused the same way on every machine.
        trt = import_tensorrt()
        self._memory = memory if memory is not None else open_cuda_memory()
        try:
            self._load(trt, plan, max_batch, warmup_runs, warmup_batch)
        except BaseException:
            self.close()  # free whatever was allocated before the failure
            raise

    def _load(
        self, trt: Any, plan: bytes, max_batch: Optional[int], warmup_runs: int, warmup_batch: Optional[int]
    ) -> None:
        self._runtime = trt.Runtime(tensorrt_logger(trt))  # must outlive the engine
        if self.sidecar.dla_core is not None:
            # IRuntime::setDLACore: "the DLA core to execute the engine on"; without it a DLA plan
            # runs on the runtime's default core, not the one it was built for (NvInferRuntime.h).
            self._runtime.DLA_core = self.sidecar.dla_core
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ArtifactMismatchError(
                "TensorRT {} could not deserialize {} (corrupt file, or a plan from another TensorRT "
                "version/GPU); rebuild it with `meanloc export engine`".format(trt.__version__, self.path)
            )
        self._output_name = _check_engine_io(trt, self._engine, self.identity, self.path)
        self._min_batch, profile_opt, profile_max = _batch_range(self._engine)
        self.max_batch = min(int(max_batch), profile_max) if max_batch else profile_max
        if self.max_batch < self._min_batch:
            raise MeanlocError(
                "max_batch {} is below the engine's smallest profile batch {}".format(max_batch, self._min_batch)
            )
        self._context = self._engine.create_execution_context()
        self._allocate()
        # Warm up at the shape that will run: the first inference at a new shape pays for it.
        warm = min(max(int(warmup_batch or profile_opt), self._min_batch), self.max_batch)
        for _ in range(max(0, warmup_runs)):
            self._embed_chunk(np.zeros((warm, 3, self.input_size, self.input_size), dtype=np.float32))
        self._timings = {}

    def _allocate(self) -> None:
        memory = self._memory
        assert memory is not None
        size = self.input_size
        self._stream = memory.create_stream()
        self._stream_handle = memory.stream_handle(self._stream)
        in_dtype = numpy_dtype(self._engine.get_tensor_dtype(INPUT_NAME))
        out_dtype = numpy_dtype(self._engine.get_tensor_dtype(self._output_name))
        self._host_in = memory.alloc_pinned((self.max_batch, 3, size, size), in_dtype)
        self._host_out = memory.alloc_pinned((self.max_batch, self.embed_dim), out_dtype)
        self._device_in = memory.alloc_device(self._host_in.nbytes)
        self._device_out = memory.alloc_device(self._host_out.nbytes)
        # Addresses never change (allocated once at the profile max), so bind every I/O tensor once.
        for name, pointer in ((INPUT_NAME, self._device_in), (self._output_name, self._device_out)):
            if not self._context.set_tensor_address(name, pointer):
                raise MeanlocError("TensorRT refused the device address of tensor '{}'".format(name))
        self._events = [memory.create_event() for _ in range(len(STAGES) + 1)]

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        memory = self._memory
        assert memory is not None
        count = len(batch)
        run = max(count, self._min_batch)  # fixed-shape (e.g. DLA) engines: pad with zeros
        self._host_in[:count] = batch
        if run > count:
            self._host_in[count:run] = 0
        if not self._context.set_input_shape(INPUT_NAME, (run, 3, self.input_size, self.input_size)):
            raise MeanlocError("TensorRT rejected input shape ({}, 3, {s}, {s})".format(run, s=self.input_size))
        out_shape = tuple(self._context.get_tensor_shape(self._output_name))
        if out_shape != (run, self.embed_dim):
            raise ArtifactMismatchError(
                "{}: output shape {} for batch {}, expected ({}, {})".format(self.path, out_shape, run, run, self.embed_dim)
            )
        host_in, host_out = self._host_in[:run], self._host_out[:run]
        start, after_h2d, after_inference, after_d2h = self._events
        memory.record_event(start, self._stream)
        memory.copy_htod_async(self._device_in, host_in, self._stream)
        memory.record_event(after_h2d, self._stream)
        if not self._context.execute_async_v3(self._stream_handle):
            raise MeanlocError("TensorRT inference failed on {} (see the TensorRT log above)".format(self.path))
        memory.record_event(after_inference, self._stream)
        memory.copy_dtoh_async(host_out, self._device_out, self._stream)
        memory.record_event(after_d2h, self._stream)
        memory.synchronize(self._stream)
        for stage, (begin, end) in zip(STAGES, zip(self._events, self._events[1:])):
            self._record_timing(stage, memory.elapsed_ms(begin, end) / 1000.0)
        # l2_normalise returns a new float32 array, so the pinned buffer can be reused at once.
        return l2_normalise(host_out[:count])

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "path": self.path,
                "cuda_binding": self._memory.name if self._memory is not None else None,
                "profile_batch": [self._min_batch, self.max_batch],
                "dla_core": self.sidecar.dla_core,
                "built_on": self.sidecar.environment,
            }
        )
        return info

    def close(self) -> None:
        # Context and engine go before their memory; safe to call twice.
        self._context = None
        self._engine = None
        self._runtime = None
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT `DataType` (looked up by name; see NUMPY_DTYPES)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).split(".")[-1]
    if name not in NUMPY_DTYPES:
        raise MeanlocError("engine tensor type {} is not supported by the TensorRT backend".format(name))
    return np.dtype(NUMPY_DTYPES[name])


def _io_tensors(trt: Any, engine: Any) -> Tuple[List[str], List[str]]:
    inputs, outputs = [], []  # type: List[str], List[str]
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
    return inputs, outputs


def _check_engine_io(trt: Any, engine: Any, identity: ModelIdentity, path: str) -> str:
    """Refuse engines that are not a meanloc embedder; return the output tensor's name."""
    inputs, outputs = _io_tensors(trt, engine)
    if inputs != [INPUT_NAME] or len(outputs) != 1:
        raise ArtifactMismatchError(
            "{} is not a meanloc embedder engine: inputs {}, outputs {} (expected ['{}'] and one output)".format(
                path, inputs, outputs, INPUT_NAME
            )
        )
    size = identity.preprocess.size
    in_shape = tuple(engine.get_tensor_shape(INPUT_NAME))
    if len(in_shape) != 4 or in_shape[1:] != (3, size, size):
        raise ArtifactMismatchError(
            "{}: engine input shape {} does not match (N, 3, {s}, {s}) from its sidecar".format(path, in_shape, s=size)
        )
    out_shape = tuple(engine.get_tensor_shape(outputs[0]))
    if len(out_shape) != 2 or out_shape[1] not in (-1, identity.embed_dim):
        raise ArtifactMismatchError(
            "{}: engine output shape {} does not match (N, {}) from its sidecar".format(path, out_shape, identity.embed_dim)
        )
    return outputs[0]


def _batch_range(engine: Any) -> Tuple[int, int, int]:
    """(min, opt, max) batch of optimization profile 0, the one a new execution context uses."""
    shape = tuple(engine.get_tensor_shape(INPUT_NAME))
    if shape[0] != -1:
        return int(shape[0]), int(shape[0]), int(shape[0])
    minimum, optimum, maximum = engine.get_tensor_profile_shape(INPUT_NAME, 0)
    return int(minimum[0]), int(optimum[0]), int(maximum[0])
