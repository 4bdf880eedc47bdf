"""One table from transfer syntax UID to decoder, and pixel normalisation in one place.

Runs unchanged in CPython and Pyodide: it imports only the standard library, numpy and
imagecodecs (pydicom only lazily, as a fallback for DICOM RLE). Codec functions are looked up in
imagecodecs when a frame is decoded, so a build of imagecodecs that lacks one (Pyodide ships a
reduced set) fails with a clear `DecodeError` for that transfer syntax only.

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

import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy

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
    "declared_size",
    "MAX_FRAME_BYTES",
]

# Most bytes one decoded frame may take. A frame or metadata declaring more (65535 x 65535 x 3
# samples of 16 bits is 24 GiB) is refused before any decoder allocates it.
MAX_FRAME_BYTES = 1 << 30


class DecodeError(Exception):
    """A frame could not be decoded; the message names the codec and the reason."""


# -- transfer syntaxes ---------------------------------------------------------------------------

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: syntaxes whose decoder may be pydicom's (the page loads pydicom only when a stack has one)
PYDICOM_SYNTAXES = frozenset({RLE_LOSSLESS})
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
HTJ2K_PRIVATE = "3.2.840.10008.1.2.4.96"  # used before the official UIDs; viewers still accept it


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


# -- codec table ----------------------------------------------------------------------------------

Decoder = Callable[[memoryview, PixelFormat, int], numpy.ndarray]


@dataclass(frozen=True)
class Codec:
    """One transfer syntax: how to decode a frame of it and what it can do.

    `decode(data, fmt, reduce)` returns the decoder's raw output; `decode_frame` normalises it.
    `converts_colour` is True where the decoder already hands back RGB for YBR data.
    """

    uid: str
    name: str
    media_type: str
    decode: Callable[..., numpy.ndarray]
    lossy: bool
    resolution_progressive: bool
    converts_colour: bool = False


def _imagecodecs_function(*names: str) -> Callable[..., Any]:
    if imagecodecs is None:
        raise DecodeError("imagecodecs is not installed")
    for name in names:
        function = getattr(imagecodecs, name, None)
        if function is not None and _codec_available(name.rsplit("_", 1)[0].upper()):
            return function
    raise DecodeError(f"this imagecodecs build has none of {', '.join(names)}")


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
    count = fmt.rows * fmt.columns * fmt.samples_per_pixel
    return numpy.frombuffer(data, dtype, count)


def _decode_rle(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    size = max(1, fmt.bits_allocated // 8)
    try:
        decode = _imagecodecs_function("dicomrle_decode")
    except DecodeError:
        return _decode_rle_pydicom(data, fmt)
    raw = decode(bytes(data), f"<u{size}")
    # Segments are sample-planar: all of sample 0, then sample 1, ...
    planes = numpy.frombuffer(raw, f"<u{size}")
    return _interleave(planes, fmt)


def _decode_rle_pydicom(data: memoryview, fmt: PixelFormat) -> numpy.ndarray:
    try:
        from pydicom.pixels.decoders.rle import _rle_decode_frame
    except ImportError as exc:
        raise DecodeError("no DICOM RLE decoder: imagecodecs lacks dicomrle and pydicom is missing") from exc
    raw = _rle_decode_frame(bytes(data), fmt.rows, fmt.columns, fmt.samples_per_pixel, fmt.bits_allocated)
    size = max(1, fmt.bits_allocated // 8)
    # pydicom returns little-endian samples, planar by sample.
    planes = numpy.frombuffer(raw, f"<u{size}")
    return _interleave(planes, fmt)


def _interleave(planes: numpy.ndarray, fmt: PixelFormat) -> numpy.ndarray:
    planes = planes.reshape(fmt.samples_per_pixel, fmt.rows, fmt.columns)
    if fmt.samples_per_pixel == 1:
        return planes[0]
    return planes.transpose(1, 2, 0)


def _decode_jpeg(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    return _imagecodecs_function("jpeg8_decode", "jpeg_decode")(data)


def _decode_jpeg_lossless(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    return _imagecodecs_function("ljpeg_decode", "jpegsof3_decode", "jpeg8_decode")(data)


def _decode_jpegls(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    return _imagecodecs_function("jpegls_decode")(data)


def _decode_jpeg2k(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    # imagecodecs' OpenJPEG binding has no reduce argument: decode fully, then area-average, which
    # is what the skipped wavelet levels would have approximated.
    full = _imagecodecs_function("jpeg2k_decode")(data)
    return area_mean(full, 1 << reduce) if reduce else full


def _decode_htj2k(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    try:
        decode = _imagecodecs_function("htj2k_decode")
    except DecodeError:
        return _decode_jpeg2k(data, fmt, reduce)  # OpenJPEG >= 2.5 also decodes HTJ2K
    kwargs: dict[str, Any] = {}
    if reduce:
        kwargs["skipres"] = reduce
    if fmt.samples_per_pixel > 1:
        kwargs["planar"] = False
    return decode(data, **kwargs)


def _decode_htj2k_lossy(data: memoryview, fmt: PixelFormat, reduce: int) -> numpy.ndarray:
    # Irreversible decoding over- and undershoots. OpenJPH (htj2k_decode) wraps the result into the
    # sample type; for unsigned data that fills the whole type the wrap cannot be undone afterwards,
    # so those full-resolution decodes go to OpenJPEG, which clamps.
    full_width = not fmt.is_signed and fmt.bits_stored >= fmt.bits_allocated
    if full_width and not reduce and imagecodecs is not None and hasattr(imagecodecs, "jpeg2k_decode"):
        return _decode_jpeg2k(data, fmt, 0)
    return _decode_htj2k(data, fmt, reduce)


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


def _codec(uid, name, media_type, decode, *, lossy, progressive=False, converts_colour=False) -> Codec:
    return Codec(uid, name, media_type, decode, lossy, progressive, converts_colour)


_OCTET = "application/octet-stream"

CODECS: dict[str, Codec] = {
    codec.uid: codec
    for codec in (
        _codec(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", _OCTET, _decode_native, lossy=False),
        _codec(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", _OCTET, _decode_native, lossy=False),
        # Deflate applies to the whole data set: frames are already inflated when they are frames.
        _codec(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", _OCTET,
               _decode_native, lossy=False),
        _codec(RLE_LOSSLESS, "RLE Lossless", "image/dicom-rle", _decode_rle, lossy=False),
        _codec(JPEG_BASELINE, "JPEG Baseline", "image/jpeg", _decode_jpeg, lossy=True, converts_colour=True),
        _codec(JPEG_EXTENDED, "JPEG Extended", "image/jpeg", _decode_jpeg, lossy=True, converts_colour=True),
        _codec(JPEG_LOSSLESS, "JPEG Lossless", "image/jpeg", _decode_jpeg_lossless, lossy=False),
        _codec(JPEG_LOSSLESS_SV1, "JPEG Lossless SV1", "image/jpeg", _decode_jpeg_lossless, lossy=False),
        _codec(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", "image/jls", _decode_jpegls, lossy=False),
        _codec(JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Near-Lossless", "image/jls", _decode_jpegls, lossy=True),
        _codec(JPEG_2000_LOSSLESS, "JPEG 2000 Lossless", "image/jp2", _decode_jpeg2k, lossy=False,
               progressive=True, converts_colour=True),
        _codec(JPEG_2000, "JPEG 2000", "image/jp2", _decode_jpeg2k, lossy=True, progressive=True,
               converts_colour=True),
        _codec(HTJ2K_LOSSLESS, "HTJ2K Lossless", "image/jphc", _decode_htj2k, lossy=False, progressive=True,
               converts_colour=True),
        _codec(HTJ2K_LOSSLESS_RPCL, "HTJ2K Lossless RPCL", "image/jphc", _decode_htj2k, lossy=False,
               progressive=True, converts_colour=True),
        _codec(HTJ2K, "HTJ2K", "image/jphc", _decode_htj2k_lossy, lossy=True, progressive=True,
               converts_colour=True),
        _codec(HTJ2K_PRIVATE, "HTJ2K (private UID)", "image/jphc", _decode_htj2k_lossy, lossy=True, progressive=True,
               converts_colour=True),
    )
}

_NATIVE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})


def codec_for(transfer_syntax: str) -> Codec:
    """The codec of a transfer syntax UID; DecodeError if there is none."""
    codec = CODECS.get(str(transfer_syntax).strip().rstrip("\x00"))
    if codec is None:
        raise DecodeError(f"unsupported transfer syntax {transfer_syntax!r}")
    return codec


def declared_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(rows, columns) a JPEG 2000 codestream (SIZ) or JPEG / JPEG-LS stream (SOF) declares.

    None when the bytes are neither or the header is not within the first 64 KiB.
    """
    head = bytes(data[:65536])
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) >= 42:
        xs, ys, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(">IIIIIIIIH", head, 8)
        # ISO 15444-1 A.5.1: the tile grid must start at or before the image and overlap it.
        # OpenJPH never returns from a stream whose tile origin lies past the image origin.
        if not (xs > xo and ys > yo and xt and yt and xto <= xo and yto <= yo and xto + xt > xo
                and yto + yt > yo and 1 <= csiz <= 16384):
            return (0, 0)
        return ys - yo, xs - xo
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if i + 9 > len(head):
                return None
            rows = (head[i + 5] << 8) | head[i + 6]
            return (rows, (head[i + 7] << 8) | head[i + 8]) if rows else None  # 0: rows come in DNL
        i += 2 + ((head[i + 2] << 8) | head[i + 3])
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
    if codec.uid not in _NATIVE and codec.uid != RLE_LOSSLESS:
        # the decoder allocates what the stream declares, not what the metadata says
        size = declared_size(view)
        if size is not None and size != (fmt.rows, fmt.columns):
            raise DecodeError(f"{codec.name} decode failed: the stream declares {size[0]}x{size[1]}, "
                              f"the image is {fmt.rows}x{fmt.columns}")
        if codec.resolution_progressive:
            problem = _quantization_problem(view)
            if problem:
                raise DecodeError(f"{codec.name} decode failed: {problem}")
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
    rows, columns = reduced_size(fmt.rows, fmt.columns, reduce)
    if codec.uid in _NATIVE and fmt.photometric_interpretation == "YBR_FULL_422" and fmt.is_colour:
        return _normalise_values(_ybr_to_rgb(_expand_422(decoded, fmt)), fmt, codec)
    pixels = _shape(decoded, rows, columns, fmt, codec)
    if fmt.is_colour and not codec.converts_colour and fmt.photometric_interpretation in ("YBR_FULL", "YBR_FULL_422"):
        pixels = _ybr_to_rgb(_normalise_values(pixels, fmt, codec))
    return _normalise_values(pixels, fmt, codec)


def _shape(decoded: numpy.ndarray, rows: int, columns: int, fmt: PixelFormat, codec: Codec) -> numpy.ndarray:
    samples = fmt.samples_per_pixel
    if decoded.size != rows * columns * samples:
        raise DecodeError(
            f"{codec.name} decode failed: got {decoded.shape} values, expected {rows}x{columns}x{samples}"
        )
    if samples == 1:
        return decoded.reshape(rows, columns)
    if decoded.ndim == 1:
        planar = fmt.planar_configuration == 1 and codec.uid in _NATIVE
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
