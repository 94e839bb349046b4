"""INT8 calibration on the CPU, for TensorRT and ONNX Runtime (`meanloc calibrate`).

- `calibset`: which images, drawn how, preprocessed by the runtime's own definition;
- `ranges`: one ONNX Runtime pass collecting per-tensor ranges (entropy, percentile, min-max);
- `cache`: TensorRT's calibration cache text (writer, reader, name check, manifest; Python 3.8,
  no torch/onnx: the engine builder reads it onboard);
- `qdq`: the TensorRT-flavour Q/DQ ONNX and the CPU-optimised ONNX;
- `trt_calibrator`: IInt8EntropyCalibrator2 on the device, and the cache-only calibrator;
- `pipeline`: all of the above into one output folder.

Nothing is imported here, so `import meanloc.calibration.cache` stays light.
"""
