"""The one image reader (`meanloc.runtime.images`): header checks before decoding, truncation and
damage detection per format, quiet decoding, and that no other code decodes image files.

Python 3.8 compatible (part of the onboard suite).
"""

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_files import huge_png_header

from meanloc.runtime.images import (
    BadImages,
    ImageError,
    ImageMissingError,
    decode_image,
    probe_image,
    read_image,
)

ROOT = Path(__file__).resolve().parents[1]
FORMATS = (".jpg", ".png", ".bmp", ".tif", ".webp", ".ppm", ".pgm")


def _texture(height=60, width=80):
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encoded(suffix):
    image = _texture()
    ok, buffer = cv2.imencode(suffix, image[:, :, 0] if suffix == ".pgm" else image)
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_reads_and_refuses_truncation(tmp_path, suffix):
    data = _encoded(suffix)
    good = tmp_path / ("good" + suffix)
    good.write_bytes(data)
    image = read_image(good)
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8
    assert (probe_image(good).width, probe_image(good).height) == (80, 60)
    cut = tmp_path / ("cut" + suffix)
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        read_image(cut)
    assert str(cut) in str(info.value) and info.value.reason in ("truncated", "undecodable")


def test_pixel_limit_is_checked_on_the_header_and_settable(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_png_header())
    with pytest.raises(ImageError, match="claims 60000 x 60000 pixels") as info:
        read_image(bomb)
    assert info.value.reason == "too large" and "MEANLOC_MAX_IMAGE_PIXELS" in str(info.value)
    image = tmp_path / "ok.png"
    cv2.imwrite(str(image), _texture())
    monkeypatch.setenv("MEANLOC_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageError, match="more than the limit of 1000"):
        probe_image(image)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [("empty.jpg", b"", "empty"), ("text.jpg", b"this is a text file\n", "not an image")],
)
def test_empty_and_non_image_files(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.reason == reason and str(path) in str(info.value)


def test_tiny_images_are_refused(tmp_path):
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="4 x 4 pixels, smaller than the minimum side"):
        read_image(path)
    assert read_image(path, min_side=4).shape == (4, 4, 3)


def test_a_missing_file_is_missing_not_corrupt(tmp_path):
    with pytest.raises(ImageMissingError, match="does not exist"):
        read_image(tmp_path / "gone.jpg")


def test_damage_inside_a_jpeg_is_caught_from_the_decoder_quietly(tmp_path, capfd):
    data = bytearray(_encoded(".jpg"))
    middle = len(data) // 2
    data[middle : middle + 40] = bytes([0x00, 0xFF] * 20)  # EOI still present: only the decoder notices
    with pytest.raises(ImageError, match="damaged JPEG") as info:
        decode_image(bytes(data), "middle.jpg")
    assert info.value.reason == "corrupt"
    captured = capfd.readouterr()
    assert "Corrupt JPEG" not in captured.err + captured.out  # libjpeg's own line never reaches the terminal


def test_a_bad_png_crc_is_damage(tmp_path):
    data = bytearray(_encoded(".png"))
    data[40] ^= 0xFF  # inside IDAT
    with pytest.raises(ImageError, match="CRC mismatch"):
        decode_image(bytes(data), "crc.png")


def test_images_survive_pickling_for_worker_processes():
    import pickle

    error = ImageError("a.jpg", "truncated", "it is a truncated JPEG")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.reason == "truncated"


def test_bad_images_tally_names_the_first_files():
    tally = BadImages(examples=2)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        tally.add(ImageError(name, "truncated", "it is a truncated JPEG"))
    summary = tally.summary()
    assert summary.startswith("Skipped 3 bad images (3 truncated): image a.jpg") and "c.jpg" not in summary


def test_no_other_code_decodes_image_files():
    """One image-reading function: imread/imdecode appear only in runtime/images.py."""
    hits = []
    for folder in ("runtime", "training", "calibration", "export", "meanloc", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name != "images.py" and re.search(r"\b(imread|imdecode)\(", path.read_text(encoding="utf-8")):
                hits.append(str(path.relative_to(ROOT)))
    assert hits == []


def test_the_reader_is_torch_free():
    code = "import sys, meanloc.runtime.images; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
