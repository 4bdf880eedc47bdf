"""One table from transfer syntax UID to decoder, and pixel normalisation in one place.

Runs unchanged in CPython and Pyodide: it imports only the standard library, numpy and
imagecodecs (pydicom only lazily, as a fallback for DICOM RLE). ``DECODERS`` lists, per transfer
syntax, the backends in order of preference, each with ``is_available()`` (the style of pydicom 3's
decoder plugins): a build of imagecodecs that lacks one (Pyodide ships a reduced set) falls to the
next, and with none left fails with a clear `DecodeError` for that transfer syntax only. Guards run
before any backend: the stream's declared size, sample depth, JPEG 2000 quantisation and DICOM RLE
segment table must agree with the metadata and the frame (a native decoder trusts them).

`decode_frame` returns *normalised stored values*:

- monochrome: a 2-D array; colour: ``(rows, columns, 3)`` RGB, whatever the photometric
  interpretation (YBR_FULL / YBR_FULL_422 are converted unless the decoder already did, YBR_RCT /
  YBR_ICT come out of the JPEG 2000 decoders as RGB) and whatever the planar configuration;
- unsigned data as uint8 / uint16 / uint32 masked to BitsStored, signed data (PixelRepresentation 1)
  as int8 / int16 / int32 sign-extended from BitsStored;
- MONOCHROME1 stays as stored (inverting it is a display decision), PALETTE COLOR stays indices.

`reduce=k` skips k wavelet resolution levels; only the JPEG 2000 family supports it. imagecodecs'
OpenJPH binding wraps under- and overshooting samples of reduced (and lossy) decodes into the
sample type; unsigned data with BitsStored below the type are read as signed and clipped. For data
that fills its type (8 of 8, 16 of 16 bits) a wrapped value cannot be told from a real one: lossy
full-resolution decodes of such data go to OpenJPEG, which clamps, but reduced decodes of it can
still show wrapped samples next to strong edges (the 5/3 low-pass under- and overshoots by up to
about a quarter of the range there).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy

from .readers.jpeg import JpegError, read_jpeg_header
from .readers.rle import RleError, read_rle_header

try:  # imagecodecs is required for compressed syntaxes only; native frames decode without it.
    import imagecodecs
except ImportError:  # pragma: no cover - exercised only in a bare environment
    imagecodecs = None

__all__ = [
    "CODECS",
    "Codec",
    "DecodeError",
    "PixelFormat",
    "codec_for",
    "decode_frame",
    "to_modality",
    "reduced_size",
    "area_mean",
    "stream_header",
    "StreamHeader",
    "Backend",
    "DECODERS",
    "native_frames",
    "pixel_sha256",
    "MAX_FRAME_BYTES",
]

# Most bytes one decoded frame may take. A frame or metadata declaring more (65535 x 65535 x 3
# samples of 16 bits is 24 GiB) is refused before any decoder allocates it.
MAX_FRAME_BYTES = 1 << 30


class DecodeError(Exception):
    """A frame could not be decoded; the message names the codec and the reason."""


# -- transfer syntaxes (the UIDs live in app/uids.py) ---------------------------------------------

from .uids import (  # noqa: E402 - after the optional imagecodecs import
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K_PRIVATE,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE_SYNTAXES,
    RLE_LOSSLESS,
)

#: syntaxes whose decoder may be pydicom's (the page loads pydicom only when a stack has one)
PYDICOM_SYNTAXES = frozenset({RLE_LOSSLESS})


# -- pixel format ---------------------------------------------------------------------------------


def _int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return default


def _float(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module attributes that decoding and normalisation need."""

    rows: int
    columns: int
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric_interpretation: str = "MONOCHROME2"
    planar_configuration: int = 0
    number_of_frames: int = 1
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0

    @classmethod
    def from_dataset(cls, ds: Any) -> "PixelFormat":
        """From a pydicom Dataset (attributes missing from it take the defaults)."""
        bits_allocated = _int(ds.get("BitsAllocated"), 16)
        return cls(
            rows=_int(ds.get("Rows"), 0),
            columns=_int(ds.get("Columns"), 0),
            samples_per_pixel=_int(ds.get("SamplesPerPixel"), 1),
            bits_allocated=bits_allocated,
            bits_stored=_int(ds.get("BitsStored"), bits_allocated),
            pixel_representation=_int(ds.get("PixelRepresentation"), 0),
            photometric_interpretation=str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip(),
            planar_configuration=_int(ds.get("PlanarConfiguration"), 0),
            number_of_frames=max(1, _int(ds.get("NumberOfFrames"), 1)),
            rescale_slope=_float(ds.get("RescaleSlope"), 1.0),
            rescale_intercept=_float(ds.get("RescaleIntercept"), 0.0),
        )

    @classmethod
    def from_dicom_json(cls, obj: dict) -> "PixelFormat":
        """From one DICOM JSON object (``{"00280010": {"vr": "US", "Value": [512]}, ...}``)."""

        def value(tag: str) -> Any:
            element = obj.get(tag) or obj.get(tag.lower())
            if not isinstance(element, dict):
                return None
            values = element.get("Value")
            if not values:
                return None
            return values[0]

        bits_allocated = _int(value("00280100"), 16)
        return cls(
            rows=_int(value("00280010"), 0),
            columns=_int(value("00280011"), 0),
            samples_per_pixel=_int(value("00280002"), 1),
            bits_allocated=bits_allocated,
            bits_stored=_int(value("00280101"), bits_allocated),
            pixel_representation=_int(value("00280103"), 0),
            photometric_interpretation=str(value("00280004") or "MONOCHROME2").strip(),
            planar_configuration=_int(value("00280006"), 0),
            number_of_frames=max(1, _int(value("00280008"), 1)),
            rescale_slope=_float(value("00281053"), 1.0),
            rescale_intercept=_float(value("00281052"), 0.0),
        )

    @property
    def is_signed(self) -> bool:
        return self.pixel_representation == 1

    @property
    def is_colour(self) -> bool:
        return self.samples_per_pixel > 1

    @property
    def dtype(self) -> numpy.dtype:
        """Little-endian container type of one stored sample (1-bit data unpacks to uint8)."""
        size = {1: 1, 8: 1, 16: 2, 32: 4}.get(self.bits_allocated)
        if size is None:
            raise DecodeError(f"unsupported BitsAllocated {self.bits_allocated}")
        return numpy.dtype(f"<{'i' if self.is_signed else 'u'}{size}")

    @property
    def decoded_bytes(self) -> int:
        """Bytes of one decoded frame (what the memory budget is checked against)."""
        size = {1: 1, 8: 1, 16: 2, 32: 4}.get(self.bits_allocated, 4)
        return max(0, self.rows) * max(0, self.columns) * max(1, self.samples_per_pixel) * size

    @property
    def frame_length(self) -> int:
        """Bytes of one native (uncompressed) frame."""
        samples = self.rows * self.columns * self.samples_per_pixel
        if self.photometric_interpretation == "YBR_FULL_422":
            samples = self.rows * self.columns * 2
        if self.bits_allocated == 1:
            return (samples + 7) // 8
        return samples * (self.bits_allocated // 8)


# -- decoders: backends per transfer syntax, in order of preference ------------------------------

Decoder = Callable[[memoryview, PixelFormat, int], numpy.ndarray]


@dataclass(frozen=True)
class Backend:
    """One way to decode frames (pydicom's decoder plugins, as data).

    ``is_available()`` says whether this runtime has it (Pyodide's imagecodecs is trimmed, pydicom
    is loaded lazily); ``suits(fmt, reduce)`` lets a backend stand aside for cases it gets wrong.
    """

    name: str
    decode: Decoder
    is_available: Callable[[], bool]
    suits: Callable[[PixelFormat, int], bool] = lambda fmt, reduce: True


def _codec_available(codec: str) -> bool:
    """Whether imagecodecs' ``codec`` (e.g. ``DICOMRLE``) was built and its module loads.

    A build without the codec's extension module (the browser runtime is trimmed to the viewer's
    codecs) answers with a stub class that is falsy and raises ImportError on any attribute.
    """
    try:
        flag = getattr(imagecodecs, codec, None)
        return flag is None or (bool(flag) and bool(getattr(flag, "available", True)))
    except ImportError:
        return False


def _has(function: str) -> bool:
    """Whether imagecodecs has ``function`` (e.g. ``dicomrle_decode``) in this build."""
    return (imagecodecs is not None and getattr(imagecodecs, function, None) is not None
            and _codec_available(function.rsplit("_", 1)[0].upper()))


def _has_pydicom() -> bool:
    try:
        from pydicom.pixels.decoders import RLELosslessDecoder
    except ImportError:
        return False
    return bool(RLELosslessDecoder.is_available)


def _imagecodecs(function: str, decode: Callable[..., numpy.ndarray] | None = None, **kwargs) -> Backend:
    """A backend calling ``imagecodecs.<function>(data)`` (or ``decode`` with that function)."""
    def call(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
        fn = getattr(imagecodecs, function)
        return decode(fn, data, fmt, reduce) if decode else fn(data)

    return Backend(f"imagecodecs.{function}", call, lambda: _has(function), **kwargs)


def _decode_native(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    expected = fmt.frame_length
    if len(data) < expected:
        raise DecodeError(f"native frame has {len(data)} bytes, {expected} expected")
    if fmt.bits_allocated == 1:
        bits = numpy.unpackbits(numpy.frombuffer(data, numpy.uint8, expected), bitorder="little")
        return bits[: fmt.rows * fmt.columns * fmt.samples_per_pixel]
    dtype = fmt.dtype
    if fmt.photometric_interpretation == "YBR_FULL_422":
        pairs = numpy.frombuffer(data, dtype, fmt.rows * fmt.columns * 2)
        return pairs.reshape(fmt.rows, fmt.columns // 2, 4)  # Y1 Y2 Cb Cr per pixel pair
    return numpy.frombuffer(data, dtype, fmt.rows * fmt.columns * fmt.samples_per_pixel)


def _rle_imagecodecs(fn: Callable, data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    size = max(1, fmt.bits_allocated // 8)
    planes = numpy.frombuffer(fn(data, f"<u{size}"), f"<u{size}")  # sample-planar: all of sample 0, ...
    planes = planes.reshape(fmt.samples_per_pixel, fmt.rows, fmt.columns)
    return planes[0] if fmt.samples_per_pixel == 1 else planes.transpose(1, 2, 0)


def _rle_pydicom(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    """pydicom's RLE decoder through its public API (a one-frame encapsulated buffer)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders import RLELosslessDecoder

    array, _ = RLELosslessDecoder.as_array(
        encapsulate([bytes(data)]), index=0, raw=True, rows=fmt.rows, columns=fmt.columns,
        samples_per_pixel=fmt.samples_per_pixel, bits_allocated=fmt.bits_allocated,
        bits_stored=fmt.bits_stored, pixel_representation=fmt.pixel_representation,
        photometric_interpretation=fmt.photometric_interpretation, number_of_frames=1, planar_configuration=0)
    return array


def _jpeg2k(fn: Callable, data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    # imagecodecs' OpenJPEG binding has no reduce argument: decode fully, then area-average, which
    # is what the skipped wavelet levels would have approximated.
    full = fn(data)
    return area_mean(full, 1 << reduce) if reduce else full


def _htj2k(fn: Callable, data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    kwargs: dict[str, Any] = {}
    if reduce:
        kwargs["skipres"] = reduce
    if fmt.samples_per_pixel > 1:
        kwargs["planar"] = False
    return fn(data, **kwargs)


def _full_width_full_size(fmt: PixelFormat, reduce: int) -> bool:
    """Irreversible decoding over- and undershoots. OpenJPH wraps the result into the sample type;
    for unsigned data that fills the whole type the wrap cannot be undone afterwards, so those
    full-resolution decodes go to OpenJPEG, which clamps."""
    return not reduce and not fmt.is_signed and fmt.bits_stored >= fmt.bits_allocated


_NUMPY = (Backend("numpy", _decode_native, lambda: True),)
_OPENJPEG = _imagecodecs("jpeg2k_decode", _jpeg2k)
_OPENJPH = _imagecodecs("htj2k_decode", _htj2k)

#: transfer syntax -> backends in order of preference; the first available one that suits decodes
DECODERS: dict[str, tuple[Backend, ...]] = {
    IMPLICIT_VR_LITTLE_ENDIAN: _NUMPY,
    EXPLICIT_VR_LITTLE_ENDIAN: _NUMPY,
    # Deflate applies to the whole data set: frames are already inflated when they are frames.
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: _NUMPY,
    RLE_LOSSLESS: (_imagecodecs("dicomrle_decode", _rle_imagecodecs),
                   Backend("pydicom", _rle_pydicom, _has_pydicom)),
    JPEG_BASELINE: (_imagecodecs("jpeg8_decode"), _imagecodecs("jpeg_decode")),
    JPEG_EXTENDED: (_imagecodecs("jpeg8_decode"), _imagecodecs("jpeg_decode")),
    JPEG_LOSSLESS: (_imagecodecs("ljpeg_decode"), _imagecodecs("jpegsof3_decode"), _imagecodecs("jpeg8_decode")),
    JPEG_LOSSLESS_SV1: (_imagecodecs("ljpeg_decode"), _imagecodecs("jpegsof3_decode"),
                        _imagecodecs("jpeg8_decode")),
    JPEG_LS_LOSSLESS: (_imagecodecs("jpegls_decode"),),
    JPEG_LS_NEAR_LOSSLESS: (_imagecodecs("jpegls_decode"),),
    JPEG_2000_LOSSLESS: (_OPENJPEG,),
    JPEG_2000: (_OPENJPEG,),
    HTJ2K_LOSSLESS: (_OPENJPH, _OPENJPEG),  # OpenJPEG >= 2.5 also decodes HTJ2K
    HTJ2K_LOSSLESS_RPCL: (_OPENJPH, _OPENJPEG),
    HTJ2K: (_imagecodecs("jpeg2k_decode", _jpeg2k, suits=_full_width_full_size), _OPENJPH, _OPENJPEG),
    HTJ2K_PRIVATE: (_imagecodecs("jpeg2k_decode", _jpeg2k, suits=_full_width_full_size), _OPENJPH, _OPENJPEG),
}


@dataclass(frozen=True)
class Codec:
    """One transfer syntax: what it can do, and its decoders (``DECODERS``).

    ``decode(data, fmt, reduce)`` returns the backend's raw output; ``decode_frame`` normalises it.
    ``converts_colour`` is True where the decoders already hand back RGB for YBR data.
    """

    uid: str
    name: str
    media_type: str
    lossy: bool
    resolution_progressive: bool
    converts_colour: bool = False

    @property
    def backends(self) -> tuple[Backend, ...]:
        return DECODERS.get(self.uid, ())

    def backend(self, fmt: PixelFormat, reduce: int = 0) -> Backend:
        """The first available backend that suits this frame; DecodeError when this build has none."""
        for backend in self.backends:
            if backend.suits(fmt, reduce) and backend.is_available():
                return backend
        tried = ", ".join(b.name for b in self.backends) or "none"
        raise DecodeError(f"no decoder for {self.name} in this build (tried {tried})")

    def decode(self, data: memoryview, fmt: PixelFormat, reduce: int = 0) -> numpy.ndarray:
        return self.backend(fmt, reduce).decode(data, fmt, reduce)


_OCTET = "application/octet-stream"

CODECS: dict[str, Codec] = {
    codec.uid: codec
    for codec in (
        Codec(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", _OCTET, False, False),
        Codec(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", _OCTET, False, False),
        Codec(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", _OCTET, False, False),
        Codec(RLE_LOSSLESS, "RLE Lossless", "image/dicom-rle", False, False),
        Codec(JPEG_BASELINE, "JPEG Baseline", "image/jpeg", True, False, converts_colour=True),
        Codec(JPEG_EXTENDED, "JPEG Extended", "image/jpeg", True, False, converts_colour=True),
        Codec(JPEG_LOSSLESS, "JPEG Lossless", "image/jpeg", False, False),
        Codec(JPEG_LOSSLESS_SV1, "JPEG Lossless SV1", "image/jpeg", False, False),
        Codec(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", "image/jls", False, False),
        Codec(JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Near-Lossless", "image/jls", True, False),
        Codec(JPEG_2000_LOSSLESS, "JPEG 2000 Lossless", "image/jp2", False, True, converts_colour=True),
        Codec(JPEG_2000, "JPEG 2000", "image/jp2", True, True, converts_colour=True),
        Codec(HTJ2K_LOSSLESS, "HTJ2K Lossless", "image/jphc", False, True, converts_colour=True),
        Codec(HTJ2K_LOSSLESS_RPCL, "HTJ2K Lossless RPCL", "image/jphc", False, True, converts_colour=True),
        Codec(HTJ2K, "HTJ2K", "image/jphc", True, True, converts_colour=True),
        Codec(HTJ2K_PRIVATE, "HTJ2K (private UID)", "image/jphc", True, True, converts_colour=True),
    )
}


def codec_for(transfer_syntax: str) -> Codec:
    """The codec of a transfer syntax UID; DecodeError if there is none."""
    codec = CODECS.get(str(transfer_syntax).strip().rstrip("\x00"))
    if codec is None:
        raise DecodeError(f"unsupported transfer syntax {transfer_syntax!r}")
    return codec


def area_mean(array: numpy.ndarray, factor: int) -> numpy.ndarray:
    """Mean over factor x factor blocks (partial blocks at the edges), rounded, same dtype.

    The output is ceil(rows / factor) x ceil(columns / factor), like a JPEG 2000 reduced level.
    """
    rows, columns = array.shape[:2]
    row_starts = numpy.arange(0, rows, factor)
    column_starts = numpy.arange(0, columns, factor)
    accumulator = numpy.int64 if array.dtype.kind in "uib" else numpy.float64
    sums = numpy.add.reduceat(array, row_starts, axis=0, dtype=accumulator)
    sums = numpy.add.reduceat(sums, column_starts, axis=1, dtype=accumulator)
    row_counts = numpy.diff(numpy.append(row_starts, rows))
    column_counts = numpy.diff(numpy.append(column_starts, columns))
    counts = numpy.outer(row_counts, column_counts)
    if array.ndim == 3:
        counts = counts[:, :, None]
    means = numpy.rint(sums / counts)
    return means.astype(array.dtype)


# -- guards: what the stream declares, checked before a native decoder allocates or reads ---------


@dataclass(frozen=True)
class StreamHeader:
    """What a compressed frame says about itself (JPEG 2000 SIZ, JPEG / JPEG-LS SOF)."""

    rows: int
    columns: int
    precision: int  # bits per sample of component 0
    components: int


def _j2k_header(head: bytes) -> StreamHeader | None:
    if len(head) < 42:
        return None
    xs, ys, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(">IIIIIIIIH", head, 8)
    # ISO 15444-1 A.5.1: the tile grid must start at or before the image and overlap it.
    # OpenJPH never returns from a stream whose tile origin lies past the image origin.
    if not (xs > xo and ys > yo and xt and yt and xto <= xo and yto <= yo and xto + xt > xo
            and yto + yt > yo and 1 <= csiz <= 16384):
        return StreamHeader(0, 0, 0, 0)
    precision = (head[42] & 0x7F) + 1 if len(head) > 42 else 0  # Ssiz of component 0
    return StreamHeader(ys - yo, xs - xo, precision, csiz)


def stream_header(data: bytes | bytearray | memoryview) -> StreamHeader | None:
    """The header a JPEG 2000 codestream or JPEG / JPEG-LS stream declares; None when neither.

    A JPEG 2000 SIZ that breaks the standard's tile-grid rules answers a 0x0 size.
    """
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k_header(bytes(data[:64]))
    try:
        jpeg = read_jpeg_header(data, scans=False)
    except JpegError as exc:
        raise DecodeError(str(exc)) from exc
    if jpeg is None or not jpeg.rows:  # 0: the rows come in a DNL marker
        return None
    return StreamHeader(jpeg.rows, jpeg.columns, jpeg.precision, jpeg.components)


def _rle_problem(data: memoryview, fmt: PixelFormat) -> str | None:
    try:
        read_rle_header(data, fmt.samples_per_pixel * max(1, fmt.bits_allocated // 8))
    except RleError as exc:
        return str(exc)
    return None


MAX_MAGNITUDE_BITS = 30  # OpenJPH keeps sample magnitudes in 32-bit integers: more crashes it


def _quantization_problem(data: memoryview) -> str | None:
    """Why a JPEG 2000 codestream's QCD/QCC cannot be decoded safely, or None.

    The magnitude bits of a sub-band are guard bits + exponent - 1 (ISO 15444-1 E.1). OpenJPH
    segfaults past 30 (one bit flip of a real stream's QCD did it); no real image needs more.
    Walks the main header and every tile-part header (by Psot) that the bytes hold.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0x4F:
        return None
    components = 1
    pos = 2
    in_main = True
    psot, tile_part_end = 0, n
    while pos + 4 <= n:
        marker = (data[pos] << 8) | data[pos + 1]
        if marker == 0xFF90:  # SOT: its tile-part header follows
            if pos + 12 > n:
                return None
            psot = int.from_bytes(data[pos + 6 : pos + 10], "big")
            if psot and psot < 14:
                return None  # malformed: left to the decoder, which rejects it
            in_main, tile_part_end = False, pos + psot if psot else n
            pos += 12
            continue
        if marker == 0xFF93:  # SOD: skip the packet data to the next tile-part
            if not psot or tile_part_end <= pos:
                return None
            pos = tile_part_end
            continue
        if marker == 0xFFD9 or marker >> 8 != 0xFF:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xFF51 and len(segment) >= 36:
            components = int.from_bytes(segment[34:36], "big")
        elif marker in (0xFF5C, 0xFF5D):  # QCD, QCC
            skip = 0 if marker == 0xFF5C else (2 if components >= 257 else 1)
            if len(segment) < skip + 1:
                return None
            style = segment[skip]
            guard, kind = style >> 5, style & 0x1F
            entries = segment[skip + 1 :]
            if kind == 0:
                exponents = [b >> 3 for b in entries]
            else:
                exponents = [entries[i] >> 3 for i in range(0, len(entries) - 1, 2)]
            if exponents and guard + max(exponents) - 1 > MAX_MAGNITUDE_BITS:
                where = "main header" if in_main else f"tile-part header at {pos}"
                return (f"quantization in the {where} gives {guard + max(exponents) - 1} magnitude bits "
                        f"(at most {MAX_MAGNITUDE_BITS})")
        if length < 2:
            return None
        pos += 2 + length
    return None


def reduced_size(rows: int, columns: int, reduce: int) -> tuple[int, int]:
    """Size of a JPEG 2000 image with `reduce` resolution levels skipped (origin at 0, 0)."""
    factor = 1 << reduce
    return -(-rows // factor), -(-columns // factor)


# -- decode and normalise -------------------------------------------------------------------------


def decode_frame(
    data: bytes | bytearray | memoryview,
    transfer_syntax: str,
    fmt: PixelFormat,
    *,
    reduce: int = 0,
) -> numpy.ndarray:
    """Decode one frame to normalised stored values (see the module docstring)."""
    codec = codec_for(transfer_syntax)
    if reduce < 0:
        raise ValueError("reduce must be >= 0")
    if reduce and not codec.resolution_progressive:
        raise ValueError(f"{codec.name} cannot skip resolution levels (reduce={reduce})")
    if fmt.rows <= 0 or fmt.columns <= 0:
        raise DecodeError(f"invalid image size {fmt.rows}x{fmt.columns}")
    if fmt.decoded_bytes > MAX_FRAME_BYTES:
        raise DecodeError(f"{fmt.rows}x{fmt.columns} frame of {fmt.decoded_bytes} bytes is over the "
                          f"{MAX_FRAME_BYTES}-byte budget")
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if len(view) == 0:
        raise DecodeError(f"{codec.name} decode failed: empty frame")
    header = _check_stream(view, fmt, codec)
    try:
        decoded = codec.decode(view, fmt, reduce)
    except DecodeError as exc:
        raise DecodeError(f"{codec.name} decode failed: {exc}") from exc
    except (ValueError, RuntimeError, TypeError, IndexError, MemoryError, OverflowError) as exc:
        raise DecodeError(f"{codec.name} decode failed: {exc}") from exc
    except Exception as exc:  # imagecodecs raises its own *Error classes per codec
        if type(exc).__module__.startswith("imagecodecs") or type(exc).__name__.endswith("Error"):
            raise DecodeError(f"{codec.name} decode failed: {exc}") from exc
        raise
    if header is not None and header.precision > fmt.bits_stored and not codec.lossy and not reduce:
        _check_values_fit(decoded, header, fmt, codec)
    rows, columns = reduced_size(fmt.rows, fmt.columns, reduce)
    if codec.uid in NATIVE_SYNTAXES and fmt.photometric_interpretation == "YBR_FULL_422" and fmt.is_colour:
        return _normalise_values(_ybr_to_rgb(_expand_422(decoded, fmt)), fmt, codec)
    pixels = _shape(decoded, rows, columns, fmt, codec)
    if fmt.is_colour and not codec.converts_colour and fmt.photometric_interpretation in ("YBR_FULL", "YBR_FULL_422"):
        pixels = _ybr_to_rgb(_normalise_values(pixels, fmt, codec))
    return _normalise_values(pixels, fmt, codec)


def _check_stream(view: memoryview, fmt: PixelFormat, codec: Codec) -> StreamHeader | None:
    """The guards that run before any decoder: what the stream declares must match the metadata.

    A decoder allocates what the stream declares and trusts its offsets, so a size, sample depth
    or RLE segment table that disagrees is refused here (one message, no crash, no clipped image).
    """
    if codec.uid in NATIVE_SYNTAXES:
        expected = fmt.frame_length
        if len(view) > expected + 1:  # one pad byte makes an odd length even
            raise DecodeError(f"{codec.name} decode failed: the frame has {len(view)} bytes, {expected} expected "
                              f"for {fmt.rows}x{fmt.columns}x{fmt.samples_per_pixel} samples of "
                              f"{fmt.bits_allocated} bits (BitsAllocated or the size is wrong)")
        return None
    if codec.uid == RLE_LOSSLESS:
        problem = _rle_problem(view, fmt)
        if problem:
            raise DecodeError(f"{codec.name} decode failed: {problem}")
        return None
    try:
        header = stream_header(view)
    except DecodeError as exc:
        raise DecodeError(f"{codec.name} decode failed: {exc}") from exc
    if header is not None and (header.rows, header.columns) != (fmt.rows, fmt.columns):
        raise DecodeError(f"{codec.name} decode failed: the stream declares {header.rows}x{header.columns}, "
                          f"the image is {fmt.rows}x{fmt.columns}")
    if codec.uid in (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS) and not _ends_with_eoi(view):
        # CharLS spends seconds on some truncated streams before it gives up (16 s on a 64x64 one)
        raise DecodeError(f"{codec.name} decode failed: the stream is truncated (no EOI marker at its end)")
    if header is not None and header.precision > max(8, fmt.bits_allocated):
        raise DecodeError(f"{codec.name} decode failed: the stream holds {header.precision}-bit samples, "
                          f"BitsAllocated is {fmt.bits_allocated}")
    if codec.resolution_progressive:
        problem = _quantization_problem(view)
        if problem:
            raise DecodeError(f"{codec.name} decode failed: {problem}")
    return header


def _ends_with_eoi(view: memoryview) -> bool:
    """Whether a JPEG stream ends with EOI (FF D9), allowing the zero padding DICOM items add."""
    tail = bytes(view[-8:]).rstrip(b"\x00")
    return tail.endswith(b"\xff\xd9")


def _check_values_fit(decoded: numpy.ndarray, header: StreamHeader, fmt: PixelFormat, codec: Codec) -> None:
    """A lossless stream deeper than BitsStored must hold no value that masking would cut."""
    if decoded.dtype.kind != "u" or fmt.is_signed:
        return
    top = int(decoded.max()) if decoded.size else 0
    if top >= 1 << fmt.bits_stored:
        raise DecodeError(f"{codec.name} decode failed: the stream holds {header.precision}-bit samples up to "
                          f"{top}, BitsStored is {fmt.bits_stored}")


def _shape(decoded: numpy.ndarray, rows: int, columns: int, fmt: PixelFormat, codec: Codec) -> numpy.ndarray:
    samples = fmt.samples_per_pixel
    if decoded.size != rows * columns * samples:
        raise DecodeError(
            f"{codec.name} decode failed: got {decoded.shape} values, expected {rows}x{columns}x{samples}"
        )
    if samples == 1:
        return decoded.reshape(rows, columns)
    if decoded.ndim == 1:
        planar = fmt.planar_configuration == 1 and codec.uid in NATIVE_SYNTAXES
        if planar:
            return decoded.reshape(samples, rows, columns).transpose(1, 2, 0)
        return decoded.reshape(rows, columns, samples)
    return decoded.reshape(rows, columns, samples)


def _expand_422(pairs: numpy.ndarray, fmt: PixelFormat) -> numpy.ndarray:
    luma = pairs[:, :, :2].reshape(fmt.rows, fmt.columns)
    cb = numpy.repeat(pairs[:, :, 2], 2, axis=1)
    cr = numpy.repeat(pairs[:, :, 3], 2, axis=1)
    return numpy.stack([luma, cb, cr], axis=-1)


def _ybr_to_rgb(ybr: numpy.ndarray) -> numpy.ndarray:
    """YBR_FULL (ITU-R BT.601 full range, PS3.3 C.7.6.3.1.2) to RGB of the same dtype."""
    dtype = ybr.dtype
    top = float(numpy.iinfo(dtype).max) if dtype.kind in "ui" else 255.0
    half = (top + 1) / 2
    values = ybr.astype(numpy.float32)
    y = values[..., 0]
    cb = values[..., 1] - half
    cr = values[..., 2] - half
    rgb = numpy.empty(values.shape, numpy.float32)
    rgb[..., 0] = y + 1.402 * cr
    rgb[..., 1] = y - 0.344136 * cb - 0.714136 * cr
    rgb[..., 2] = y + 1.772 * cb
    numpy.rint(rgb, out=rgb)
    numpy.clip(rgb, 0, top, out=rgb)
    return rgb.astype(dtype)


def _normalise_values(pixels: numpy.ndarray, fmt: PixelFormat, codec: Codec) -> numpy.ndarray:
    """Container dtype, BitsStored masking / sign extension, clipping of J2K over- and undershoot."""
    container = numpy.dtype(fmt.dtype.newbyteorder("="))
    if fmt.bits_allocated == 1:
        return pixels.astype(numpy.uint8, copy=False)
    bits = fmt.bits_stored
    width = container.itemsize * 8
    if codec.resolution_progressive and not (fmt.is_signed and pixels.dtype.kind == "u"):
        # Wavelet decoders can over- or undershoot (lossy data, reduced resolutions). imagecodecs
        # wraps negative results of unsigned images to 65407..65535: read those as signed, then clip.
        if pixels.dtype.kind == "u" and bits < pixels.dtype.itemsize * 8:
            pixels = pixels.view(pixels.dtype.str.replace("u", "i"))
        if pixels.dtype.kind == "i" or bits < width:
            low, high = _stored_range(fmt)
            pixels = numpy.clip(pixels, low, high)
        return pixels.astype(container, copy=False)
    if pixels.dtype != container:
        pixels = pixels.astype(container)  # same-size casts reinterpret two's complement
    if bits >= width:
        return pixels
    if fmt.is_signed:
        shift = width - bits
        return (pixels << shift) >> shift
    if codec.lossy:  # lossy reconstruction may overshoot MAXVAL: clip, masking would wrap it to 0
        return numpy.minimum(pixels, numpy.asarray((1 << bits) - 1, dtype=container))
    return pixels & numpy.asarray((1 << bits) - 1, dtype=container)


def _stored_range(fmt: PixelFormat) -> tuple[int, int]:
    bits = fmt.bits_stored
    if fmt.is_signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def to_modality(stored: numpy.ndarray, fmt: PixelFormat) -> numpy.ndarray:
    """Apply Rescale Slope / Intercept; integers stay integers when the result fits, else float32."""
    slope, intercept = fmt.rescale_slope, fmt.rescale_intercept
    if slope == 1.0 and intercept == 0.0:
        return stored
    if stored.dtype.kind in "ui" and float(slope).is_integer() and float(intercept).is_integer():
        low, high = _stored_range(fmt) if not fmt.is_colour else (0, numpy.iinfo(stored.dtype).max)
        ends = (low * slope + intercept, high * slope + intercept)
        for dtype in (numpy.int16, numpy.int32):
            info = numpy.iinfo(dtype)
            if info.min <= min(ends) and max(ends) <= info.max:
                out = stored.astype(dtype)
                if slope != 1.0:
                    out *= dtype(slope)
                out += dtype(intercept)
                return out
    out = stored.astype(numpy.float32)
    if slope != 1.0:
        out *= numpy.float32(slope)
    out += numpy.float32(intercept)
    return out


# -- frames and fingerprints ----------------------------------------------------------------------


def native_frames(pixel_data: bytes | bytearray | memoryview, fmt: PixelFormat) -> Iterator[memoryview]:
    """The frames of native (uncompressed) pixel data as views, without copying; DecodeError when
    the data ends early or 1-bit frames do not start on byte boundaries."""
    view = memoryview(pixel_data).cast("B") if not isinstance(pixel_data, bytes) else memoryview(pixel_data)
    length = fmt.frame_length
    if fmt.bits_allocated == 1 and fmt.number_of_frames > 1 and (fmt.rows * fmt.columns) % 8:
        raise DecodeError("multi-frame 1-bit data with frames not on byte boundaries")
    for index in range(fmt.number_of_frames):
        frame = view[index * length : (index + 1) * length]
        if len(frame) < length:
            raise DecodeError(f"pixel data ends in frame {index + 1} ({len(view)} bytes)")
        yield frame


def pixel_sha256(pixels: numpy.ndarray) -> str:
    """SHA-256 of stored values as a contiguous little-endian array in their own dtype.

    The one fingerprint of decoded pixels: the CLI prints it, the page and the tests compare it.
    """
    array = numpy.ascontiguousarray(pixels)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return hashlib.sha256(array.tobytes()).hexdigest()
