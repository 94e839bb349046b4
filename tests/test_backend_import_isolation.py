"""The onboard side never imports torch: every runtime module owned by the backends area is
imported, exercised (environment probe, backend listing, doctor, a real ONNX Runtime embedding)
in a fresh interpreter, and `sys.modules` is checked afterwards."""

import json
import subprocess
import sys
import textwrap

from onnx import TensorProto, helper, save

from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec

SCRIPT = textwrap.dedent(
    """
    import argparse, io, contextlib, json, sys
    import numpy as np
    import meanloc.runtime.backends as backends
    import meanloc.runtime.backends.base
    import meanloc.runtime.backends.onnxruntime_backend
    import meanloc.runtime.backends.select
    import meanloc.runtime.backends.tensorrt_backend
    import meanloc.runtime.cuda_device
    import meanloc.runtime.doctor_cli as doctor_cli
    import meanloc.runtime.engine_sidecar
    import meanloc.runtime.onnx_contract
    import meanloc.runtime.onnx_file
    import meanloc.runtime.trt_api
    import meanloc.runtime.trt_env as trt_env

    trt_env.describe_environment(probe_dla=False)
    backends.available_backends()
    with contextlib.redirect_stdout(io.StringIO()):
        doctor_cli.run(argparse.Namespace(json=True, no_dla=True))
    with backends.open_backend(sys.argv[1]) as backend:
        image = np.full((20, 30, 3), 128, dtype=np.uint8)
        embedding = backend.embed_images([image, image])
    print(json.dumps({"shape": list(embedding.shape),
                      "heavy": sorted(m for m in ("torch", "onnx", "tensorrt") if m in sys.modules)}))
    """
)


def _tiny_meanloc_onnx(path):
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["embedding"], axes=[2, 3], keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in ModelIdentity("ef" * 32, "tiny", 3, PreprocessSpec(size=8)).to_onnx_metadata().items():
        model.metadata_props.add(key=key, value=value)
    save(model, str(path))
    return str(path)


def test_runtime_backends_never_import_torch(tmp_path):
    onnx_path = _tiny_meanloc_onnx(tmp_path / "tiny.onnx")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, onnx_path], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, 3]
    # onnx is an export-time package too: onboard needs only onnxruntime. tensorrt is absent here.
    assert "torch" not in report["heavy"] and "onnx" not in report["heavy"]
