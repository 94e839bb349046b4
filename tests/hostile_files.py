"""Generators of hostile files for the catalogue tests (not a test module): broken images,
checkpoints, ONNX models, engines, banks and calibration caches, each written fresh by a test."""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from meanloc.runtime.artifacts import sha256_file


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = 60000, height: int = 60000) -> bytes:
    """A small, well-formed PNG whose IHDR claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def texture(size: int = 72, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# name -> (file suffix, writer(path)) of the bad images every image-reading command is fed.
def _truncated_jpeg(path: Path) -> None:
    ok, buffer = cv2.imencode(".jpg", texture())
    assert ok
    path.write_bytes(buffer.tobytes()[: int(len(buffer) * 0.6)])


BAD_IMAGES = {
    "oversized-header PNG": (".png", lambda path: path.write_bytes(huge_png_header())),
    "truncated JPEG": (".jpg", _truncated_jpeg),
    "empty file": (".jpg", lambda path: path.write_bytes(b"")),
    "text named .jpg": (".jpg", lambda path: path.write_text("this is a text file, not a photo\n")),
    "4x4 image": (".png", lambda path: cv2.imwrite(str(path), texture(4))),
}


def write_bad_image(case: str, path_without_suffix: Path) -> Path:
    suffix, write = BAD_IMAGES[case]
    path = path_without_suffix.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


class PickleBomb:
    """Unpickling this would run `touch <marker>`: proof that nothing unpickles a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def write_bad_checkpoint(case: str, path: Path, good: Path, marker: Path) -> Path:
    import torch

    if case == "pickled-object checkpoint":
        torch.save({"state_dict": PickleBomb(marker)}, str(path))
    elif case == "truncated checkpoint":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "foreign-architecture checkpoint":
        torch.save(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).state_dict(), str(path))
    else:
        raise ValueError(case)
    return path


def write_bad_onnx(case: str, path: Path, good: Path) -> Path:
    if case == "random ONNX":
        path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "truncated ONNX":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "foreign ONNX":  # a valid model, but not a meanloc embedder
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "foreign",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(path))
    else:
        raise ValueError(case)
    return path


def _rehash(bank: Path) -> None:
    manifest_path = bank / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["files"]:
        manifest["files"][name]["sha256"] = sha256_file(bank / name)
    manifest_path.write_text(json.dumps(manifest))


def write_bad_bank(case: str, bank: Path, good: Path) -> Path:
    """A copy of the `good` bank, damaged as `case` says."""
    shutil.copytree(str(good), str(bank))
    embeddings_path = bank / "embeddings.npy"
    embeddings = np.load(str(embeddings_path))
    if case == "bank with wrong dim":
        wider = np.concatenate([embeddings, np.zeros((len(embeddings), 8), np.float16)], axis=1)
        np.save(str(embeddings_path), wider)
    elif case in ("bank with NaN rows", "bank with NaN rows, manifest re-hashed"):
        embeddings[: len(embeddings) // 2] = np.nan  # shape and dtype intact
        np.save(str(embeddings_path), embeddings)
        if case.endswith("re-hashed"):  # a consistent forgery: only the row check can see it
            _rehash(bank)
    elif case == "bank with object dtype":
        np.save(str(embeddings_path), np.array([{"row": i} for i in range(len(embeddings))], dtype=object),
                allow_pickle=True)
    else:
        raise ValueError(case)
    return bank


def write_garbage_calibration_cache(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"TRT-100300-EntropyCalibration2\nimages: not-hex\n\x00\xff\xfe garbage \x01\n")
    return path
