"""Shared pytest setup: the `gpu` marker skips unless CUDA and TensorRT are really usable.

Python 3.8 compatible: the onboard check runs part of the suite on JetPack 5's Python.
"""

import functools
import importlib.util
from typing import List, Optional

import pytest


@functools.lru_cache(maxsize=1)
def _gpu_unavailable_reason() -> Optional[str]:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        from meanloc.runtime.trt_env import describe_environment

        env = describe_environment()
    except Exception as exc:  # any failure to probe means: no usable GPU here
        return "cannot probe CUDA ({})".format(exc)
    if not env.get("gpu"):
        return "no CUDA GPU found"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason="gpu test: " + reason)
        for item in gpu_items:
            item.add_marker(skip)
