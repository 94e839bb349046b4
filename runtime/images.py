"""The one way meanloc reads an image file: image-folder frames, bank tiles, dataset and
calibration images, orthophoto images. Nothing else in the code base calls `cv2.imread` or
`cv2.imdecode` (tests/test_images.py keeps it so).

`read_image(path)` returns a BGR uint8 array or raises an `ImageError` that names the file and
says why, before any pixel is decoded where the header already tells:
  * a missing file (`ImageMissingError`: a file deleted during a run is missing, not corrupt);
  * an empty file, or one that is not JPEG, PNG, BMP, TIFF, WebP or PNM (e.g. text named .jpg);
  * a header claiming more than `max_image_pixels()` pixels (a 60000 x 60000 PNG costs nothing
    to refuse; `MEANLOC_MAX_IMAGE_PIXELS` raises the limit) or a side below `MIN_IMAGE_SIDE`;
  * a truncated file: a JPEG without its end-of-image marker after the scan, a PNG without IEND
    or with a chunk whose CRC does not match, a BMP/WebP/PNM/TIFF shorter than its header says;
  * data that libjpeg reports as corrupt while decoding, or that OpenCV cannot decode.
Decoder chatter ("Corrupt JPEG data: ...", libpng warnings) never reaches the terminal: the
decoder's stderr is captured around each decode and read as evidence.

`probe_image(path)` makes the header and end-of-file checks without decoding (to vet thousands of
training images up front), `decode_image(data, name)` decodes bytes already in memory, and
`BadImages` counts the files a stream skipped, for its end-of-run line.

Python 3.8 compatible, torch-free; OpenCV is imported on first decode.
"""

import contextlib
import os
import struct
import sys
import tempfile
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Union

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError

PathLike = Union[str, "os.PathLike[str]"]

# File suffixes the commands treat as images when they list a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
MAX_PIXELS_ENV = "MEANLOC_MAX_IMAGE_PIXELS"
# 16384 x 16384: 805 MB decoded as BGR, which an 8 GB Jetson survives; larger orthophotos need the variable.
DEFAULT_MAX_PIXELS = 1 << 28
# Smaller images carry no usable content at any model input size (and were a symptom of damage).
MIN_IMAGE_SIDE = 16
# libjpeg's messages for damaged data. It still returns pixels (grey where data is missing).
_DAMAGE_MESSAGES = ("Corrupt JPEG data", "Premature end of JPEG file")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers (those that carry the image size): C0-CF except DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageError(MeanlocError):
    """An image file that cannot be used; `reason` is a short category for counts."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        super().__init__("image {}: {}.".format(path, detail))
        self.path = path
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> Any:  # worker processes send it back to their parent
        return type(self), (self.path, self.reason, self.detail)


class ImageMissingError(ImageError):
    """The file does not exist (e.g. it was deleted while a run was reading its folder)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def max_image_pixels() -> int:
    """The largest image (width x height) meanloc decodes: MEANLOC_MAX_IMAGE_PIXELS or the default."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise MeanlocError("{} must be a positive number of pixels, got {!r}.".format(MAX_PIXELS_ENV, text))
    return value


# --- reading bytes from memory or from an open file ---------------------------------------------


class _Source:
    """Random access to the bytes of an image, in memory or in an open file."""

    def __init__(self, data: Optional[bytes] = None, handle: Optional[IO[bytes]] = None) -> None:
        self._data = data
        self._handle = handle
        if data is not None:
            self.size = len(data)
        else:
            assert handle is not None
            self.size = os.fstat(handle.fileno()).st_size

    def read(self, offset: int, count: int) -> bytes:
        if offset < 0 or count <= 0 or offset >= self.size:
            return b""
        if self._data is not None:
            return self._data[offset : offset + count]
        assert self._handle is not None
        self._handle.seek(offset)
        return self._handle.read(count)

    def find(self, pattern: bytes, start: int) -> int:
        if self._data is not None:
            return self._data.find(pattern, start)
        block = 1 << 20
        position = start
        while position < self.size:
            chunk = self.read(position, block + len(pattern) - 1)
            found = chunk.find(pattern)
            if found >= 0:
                return position + found
            position += block
        return -1


class _Damaged(Exception):
    """Raised by the parsers; turned into an ImageError naming the file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _unpack(fmt: str, data: bytes, what: str) -> Any:
    size = struct.calcsize(fmt)
    if len(data) < size:
        raise _Damaged("truncated", "it is a truncated {} (the file ends inside its header)".format(what))
    return struct.unpack(fmt, data[:size])


# --- per-format header and completeness checks --------------------------------------------------


def _jpeg(src: _Source, full: bool) -> ImageHeader:
    position, size, scan = 2, None, None
    while position + 4 <= src.size:
        marker = src.read(position, 2)
        if marker[0] != 0xFF:
            raise _Damaged("corrupt", "it is a damaged JPEG (no segment marker at byte {})".format(position))
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            position += 1
            continue
        if kind == 0x01 or 0xD0 <= kind <= 0xD8:  # segments without a length
            position += 2
            continue
        if kind == 0xD9:
            break
        (length,) = _unpack(">H", src.read(position + 2, 2), "JPEG")
        if length < 2:
            raise _Damaged("corrupt", "it is a damaged JPEG (a segment of length {})".format(length))
        if kind in _JPEG_SOF:
            height, width = _unpack(">xHH", src.read(position + 4, 5), "JPEG")
            size = (width, height)
        if kind == 0xDA:
            scan = position
            break
        position += 2 + length
    if size is None:
        raise _Damaged("truncated", "it is a truncated or damaged JPEG (no frame header)")
    if scan is None:
        raise _Damaged("truncated", "it is a truncated JPEG (the file ends before the image data)")
    # Entropy-coded data stuffs every 0xFF, so an FF D9 after the scan start is the real end marker.
    tail_start = max(scan, src.size - 4096)
    if src.read(tail_start, src.size - tail_start).find(_JPEG_EOI) < 0 and src.find(_JPEG_EOI, scan) < 0:
        raise _Damaged("truncated", "it is a truncated JPEG (no end-of-image marker after the image data)")
    return ImageHeader("JPEG", size[0], size[1])


def _png(src: _Source, full: bool) -> ImageHeader:
    length, kind, width, height = _unpack(">I4sII", src.read(8, 16), "PNG")
    if kind != b"IHDR" or length != 13:
        raise _Damaged("corrupt", "it is a damaged PNG (the first chunk is not IHDR)")
    header = ImageHeader("PNG", width, height)
    if not full and src.read(src.size - 12, 12) == _PNG_IEND:
        return header
    position = 8
    while True:
        head = src.read(position, 8)
        if len(head) < 8:
            raise _Damaged("truncated", "it is a truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", head)
        body = src.read(position + 4, 4 + length)
        crc = src.read(position + 8 + length, 4)
        if len(body) < 4 + length or len(crc) < 4:
            raise _Damaged("truncated", "it is a truncated PNG (the file ends inside a {} chunk)".format(
                kind.decode("latin-1")))
        if zlib.crc32(body) & 0xFFFFFFFF != struct.unpack(">I", crc)[0]:
            raise _Damaged("corrupt", "it is a damaged PNG (CRC mismatch in a {} chunk at byte {})".format(
                kind.decode("latin-1"), position))
        if kind == b"IEND":
            return header
        position += 12 + length


def _bmp(src: _Source, full: bool) -> ImageHeader:
    file_size, offset, dib = _unpack("<2xI4xII", src.read(0, 18), "BMP")
    if dib == 12:
        width, height, bits = _unpack("<HH2xH", src.read(18, 8), "BMP")
        compression = 0
    else:
        width, height, bits, compression = _unpack("<ii2xHI", src.read(18, 16), "BMP")
    width, height = abs(width), abs(height)
    needed = file_size
    if compression == 0:  # uncompressed rows are padded to 4 bytes
        needed = max(needed, offset + (bits * width + 31) // 32 * 4 * height)
    if needed > src.size:
        raise _Damaged("truncated", "it is a truncated BMP ({} of {} bytes)".format(src.size, needed))
    return ImageHeader("BMP", width, height)


def _webp(src: _Source, full: bool) -> ImageHeader:
    riff_size, chunk = _unpack("<I4x4s", src.read(4, 12), "WebP")
    data = src.read(20, 10)
    if chunk == b"VP8 ":
        width, height = _unpack("<3x3xHH", data, "WebP")
        width, height = width & 0x3FFF, height & 0x3FFF
    elif chunk == b"VP8L":
        (bits,) = _unpack("<xI", data, "WebP")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        raw = _unpack("<4x6s", data, "WebP")[0]
        width = int.from_bytes(raw[:3], "little") + 1
        height = int.from_bytes(raw[3:], "little") + 1
    else:
        raise _Damaged("corrupt", "it is a damaged WebP (unknown chunk {!r})".format(chunk))
    if riff_size + 8 > src.size:
        raise _Damaged("truncated", "it is a truncated WebP ({} of {} bytes)".format(src.size, riff_size + 8))
    return ImageHeader("WebP", width, height)


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def _tiff(src: _Source, full: bool) -> ImageHeader:
    order = "<" if src.read(0, 2) == b"II" else ">"
    (version,) = _unpack(order + "2xH", src.read(0, 4), "TIFF")
    big = version == 43
    if big:
        (ifd,) = _unpack(order + "4xQ", src.read(4, 12), "TIFF")
        (count,) = _unpack(order + "Q", src.read(ifd, 8), "TIFF")
        entry_size, first, value_size = 20, ifd + 8, 8
    else:
        (ifd,) = _unpack(order + "I", src.read(4, 4), "TIFF")
        (count,) = _unpack(order + "H", src.read(ifd, 2), "TIFF")
        entry_size, first, value_size = 12, ifd + 2, 4
    tags = {}
    table = src.read(first, entry_size * min(count, 4096))
    for index in range(min(count, len(table) // entry_size)):
        entry = table[index * entry_size : (index + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        number = struct.unpack(order + ("Q" if big else "I"), entry[4 : 4 + value_size])[0]
        tags[tag] = (kind, number, entry[4 + value_size :])
    values = {tag: _tiff_values(src, order, big, *tags[tag]) for tag in (256, 257, 273, 279, 324, 325) if tag in tags}
    if not values.get(256) or not values.get(257):
        raise _Damaged("corrupt", "it is a damaged TIFF (no image width/height)")
    for offsets, counts in ((273, 279), (324, 325)):
        if values.get(offsets) and values.get(counts):
            end = max(o + c for o, c in zip(values[offsets], values[counts]))
            if end > src.size:
                raise _Damaged("truncated", "it is a truncated TIFF ({} of {} bytes)".format(src.size, end))
    return ImageHeader("TIFF", values[256][0], values[257][0])


def _tiff_values(src: _Source, order: str, big: bool, kind: int, number: int, inline: bytes) -> List[int]:
    code = _TIFF_TYPES.get(kind)
    if code is None or number < 1:
        return []
    size = struct.calcsize(code) * min(number, 1 << 20)
    if size > len(inline):
        (offset,) = struct.unpack(order + ("Q" if big else "I"), inline)
        data = src.read(offset, size)
        if len(data) < size:
            raise _Damaged("truncated", "it is a truncated TIFF (a tag's values lie beyond the end)")
    else:
        data = inline[:size]
    return list(struct.unpack(order + code * (size // struct.calcsize(code)), data))


def _pnm(src: _Source, full: bool) -> ImageHeader:
    head = src.read(0, 1024)
    kind = head[1:2]
    fields, position = [], 2
    wanted = 2 if kind in (b"1", b"4") else 3
    while len(fields) < wanted and position < len(head):
        char = head[position : position + 1]
        if char == b"#":
            end = head.find(b"\n", position)
            position = len(head) if end < 0 else end + 1
        elif char.isspace():
            position += 1
        else:
            start = position
            while position < len(head) and head[position : position + 1].isdigit():
                position += 1
            if position == start:
                raise _Damaged("corrupt", "it is a damaged PNM (a non-numeric header field)")
            fields.append(int(head[start:position]))
    if len(fields) < wanted:
        raise _Damaged("truncated", "it is a truncated PNM (incomplete header)")
    width, height = fields[0], fields[1]
    if kind in (b"4", b"5", b"6"):
        sample = 2 if wanted == 3 and fields[2] > 255 else 1
        row = (width + 7) // 8 if kind == b"4" else width * sample * (3 if kind == b"6" else 1)
        needed = position + 1 + row * height
        if needed > src.size:
            raise _Damaged("truncated", "it is a truncated PNM ({} of {} bytes)".format(src.size, needed))
    return ImageHeader("PNM", width, height)


def _parser(head: bytes) -> Any:
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg
    if head.startswith(_PNG_SIGNATURE):
        return _png
    if head.startswith(b"BM"):
        return _bmp
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6") and head[2:3].isspace():
        return _pnm
    return None


def _check(src: _Source, name: str, full: bool, min_side: int) -> ImageHeader:
    if src.size == 0:
        raise ImageError(name, "empty", "the file is empty (0 bytes)")
    parse = _parser(src.read(0, 16))
    if parse is None:
        raise ImageError(name, "not an image", "it is not a JPEG, PNG, BMP, TIFF, WebP or PNM image")
    try:
        header = parse(src, full)
    except _Damaged as exc:
        raise ImageError(name, exc.reason, exc.detail) from None
    limit = max_image_pixels()
    if header.width * header.height > limit:
        raise ImageError(name, "too large", "its {} header claims {} x {} pixels, more than the limit of {} "
                         "(set {} to allow larger images)".format(header.format, header.width, header.height, limit,
                                                                  MAX_PIXELS_ENV))
    if min(header.width, header.height) < min_side:
        raise ImageError(name, "too small", "it is {} x {} pixels, smaller than the minimum side of {}".format(
            header.width, header.height, min_side))
    return header


# --- decoding -----------------------------------------------------------------------------------

_STDERR_LOCK = threading.Lock()
_STDERR_SINK: List[Any] = [None, None]  # (pid, temporary file): one per process, reused across decodes


def _stderr_sink() -> IO[bytes]:
    if _STDERR_SINK[0] != os.getpid():  # a forked worker must not share its parent's file offset
        _STDERR_SINK[:] = [os.getpid(), tempfile.TemporaryFile()]  # noqa: SIM115 - lives as long as the process
    sink = _STDERR_SINK[1]
    sink.seek(0)
    sink.truncate()
    return sink


@contextlib.contextmanager
def _captured_stderr() -> Iterator[List[str]]:
    """Route file descriptor 2 (where libjpeg and libpng print) to a temporary file while decoding.

    The redirection is process-wide, so decodes from several threads take turns (the lock);
    the captured text is in the yielded list when the block ends.
    """
    messages: List[str] = []
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to silence
            yield messages
            return
        try:
            sink = _stderr_sink()
            os.dup2(sink.fileno(), 2)
            try:
                yield messages
            finally:
                os.dup2(saved, 2)
            sink.seek(0)
            messages.append(sink.read().decode("utf-8", "replace"))
        finally:
            os.close(saved)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(
            "reading images needs OpenCV: pip install opencv-python-headless (on Jetson use JetPack's "
            "python3-opencv)."
        ) from None
    return cv2


def _decode(data: bytes, name: str, header: ImageHeader, unchanged: bool, min_side: int) -> np.ndarray:
    cv2 = _cv2()
    flags = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR
    failure = None
    with _captured_stderr() as messages:
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
        except cv2.error as exc:  # OpenCV's own limits (e.g. CV_IO_MAX_IMAGE_PIXELS)
            image, failure = None, str(exc).strip().splitlines()[-1]
    noise = "".join(messages)
    damage = next((line.strip() for line in noise.splitlines() if line.startswith(_DAMAGE_MESSAGES)), None)
    if damage:
        raise ImageError(name, "corrupt", "it is a damaged {} (the decoder reports: {})".format(
            header.format, damage.rstrip(".")))
    if image is None or image.size == 0:
        why = " ({})".format(failure) if failure else ""
        raise ImageError(name, "undecodable", "it is a {} that OpenCV cannot decode{}".format(header.format, why))
    if min(image.shape[:2]) < min_side:
        raise ImageError(name, "too small", "it decodes to {} x {} pixels, smaller than the minimum side of {}".format(
            image.shape[1], image.shape[0], min_side))
    return image


def decode_image(data: bytes, name: str, unchanged: bool = False, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Check and decode an image held in memory; `name` appears in errors. See `read_image`."""
    data = bytes(data)
    header = _check(_Source(data=data), name, True, min_side)
    return _decode(data, name, header, unchanged, min_side)


def read_image(path: PathLike, unchanged: bool = False, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """The image at `path` as BGR uint8 (H, W, 3), or as stored (`unchanged`: bit depth and alpha
    kept, e.g. for orthophotos). Raises `ImageError` (exit code 2) naming the file and the reason."""
    name = str(path)
    try:
        with open(name, "rb") as handle:
            src = _Source(handle=handle)
            if src.size == 0:
                raise ImageError(name, "empty", "the file is empty (0 bytes)")
            # The header first, from a few bytes: a pixel bomb or text named .jpg is refused before
            # the whole file is read.
            header = _check(src, name, False, min_side)
            handle.seek(0)
            data = handle.read()
    except FileNotFoundError:
        raise ImageMissingError(name, "missing", "the file does not exist (deleted or moved?)") from None
    except IsADirectoryError:
        raise ImageError(name, "not an image", "it is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(name, "unreadable", "it cannot be read ({})".format(exc.strerror or exc)) from None
    _check(_Source(data=data), name, True, min_side)
    return _decode(data, name, header, unchanged, min_side)


def probe_image(path: PathLike, min_side: int = MIN_IMAGE_SIDE) -> ImageHeader:
    """The header and end-of-file checks of `read_image`, without decoding (a few small reads)."""
    name = str(path)
    try:
        with open(name, "rb") as handle:
            return _check(_Source(handle=handle), name, False, min_side)
    except FileNotFoundError:
        raise ImageMissingError(name, "missing", "the file does not exist (deleted or moved?)") from None
    except OSError as exc:
        raise ImageError(name, "unreadable", "it cannot be read ({})".format(exc.strerror or exc)) from None


def is_image_name(path: PathLike) -> bool:
    """A visible file name with an image suffix (case-insensitive); says nothing about the content."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


class BadImages:
    """The bad image files a run skipped: counted by reason, the first few named."""

    def __init__(self, examples: int = 3) -> None:
        self.count = 0
        self.reasons: Counter = Counter()
        self.examples: List[str] = []
        self._keep = examples

    def add(self, error: MeanlocError) -> None:
        """Count one skipped file (an ImageError, or another one-line error about the file)."""
        self.count += 1
        self.reasons[getattr(error, "reason", "unusable")] += 1
        if len(self.examples) < self._keep:
            self.examples.append(str(error).rstrip("."))

    def merge(self, other: "BadImages") -> None:
        """Add another tally's counts (and examples, up to the limit)."""
        self.count += other.count
        self.reasons.update(other.reasons)
        self.examples.extend(other.examples[: max(0, self._keep - len(self.examples))])

    def __bool__(self) -> bool:
        return self.count > 0

    def summary(self) -> str:
        """One sentence, e.g. 'Skipped 2 bad images (1 truncated, 1 missing): image a.jpg: ...'."""
        if not self.count:
            return "No bad images were skipped."
        reasons = ", ".join("{} {}".format(n, reason) for reason, n in self.reasons.most_common())
        more = "; ..." if self.count > len(self.examples) else ""
        return "Skipped {} bad image{} ({}): {}{}.".format(
            self.count, "" if self.count == 1 else "s", reasons, "; ".join(self.examples), more)
