"""INT8 calibration on the CPU, for TensorRT and ONNX Runtime (`meanloc calibrate`), and the precision report.

- `calibset`: which images, drawn how, preprocessed by the runtime's own definition;
- `ranges`: one ONNX Runtime pass collecting per-tensor ranges (entropy, percentile, min-max);
- `qdq`: the TensorRT-flavour Q/DQ ONNX and the CPU-optimised ONNX;
- `pipeline`: all of the above into one output folder;
- `precision_report`: every deployable precision against FP32 (`meanloc report precision`).

The calibration cache's format and the TensorRT calibrators live in runtime/
(`calibration_cache`, `trt_calibrator`): the engine builder in export/ reads the same cache, and
export/ and calibration/ never import each other. Nothing is imported here.
"""
