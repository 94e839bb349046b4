"""Shared pytest setup: the `gpu` marker skips unless CUDA and TensorRT are really usable."""

import functools
import importlib.util

import pytest


@functools.lru_cache(maxsize=1)
def _gpu_unavailable_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        from meanloc.runtime.trt_env import describe_environment

        env = describe_environment()
    except Exception as exc:  # any failure to probe means: no usable GPU here
        return f"cannot probe CUDA ({exc})"
    if not env.get("gpu"):
        return "no CUDA GPU found"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason=f"gpu test: {reason}")
        for item in gpu_items:
            item.add_marker(skip)
