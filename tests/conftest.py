"""Shared pytest setup: the `gpu` marker skips unless CUDA and TensorRT are really usable.

Python 3.8 compatible: the onboard check runs part of the suite on JetPack 5's Python.
"""

from typing import List

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from meanloc.runtime.trt_env import tensorrt_gpu_unavailable_reason

    reason = tensorrt_gpu_unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason="gpu test: " + reason)
        for item in gpu_items:
            item.add_marker(skip)
