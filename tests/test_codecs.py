"""app.codecs: every transfer syntax of the table against real encoders and real files."""

from __future__ import annotations

import imagecodecs
import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from app import codecs
from app.codecs import CODECS, DecodeError, PixelFormat, codec_for, decode_frame, to_modality

RNG = numpy.random.default_rng(20261124)


def smooth_image(rows: int, columns: int, bits: int, signed: bool = False) -> numpy.ndarray:
    """A compressible image (gradients + a little noise) using the full BitsStored range."""
    y, x = numpy.mgrid[0:rows, 0:columns]
    top = (1 << bits) - 1
    values = (x * 7 + y * 3 + (x * y) % 17) % (top + 1)
    values = (values + RNG.integers(0, 4, size=values.shape)) % (top + 1)
    values[0, 0], values[-1, -1] = 0, top
    container = numpy.uint8 if bits <= 8 else numpy.uint16
    out = values.astype(container)
    if signed:
        out = (values - (1 << (bits - 1))).astype(numpy.int8 if bits <= 8 else numpy.int16)
    return out


def fmt_for(array: numpy.ndarray, bits_stored: int | None = None, **kwargs) -> PixelFormat:
    bits_allocated = array.dtype.itemsize * 8
    return PixelFormat(
        rows=array.shape[0],
        columns=array.shape[1],
        samples_per_pixel=array.shape[2] if array.ndim == 3 else 1,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored or bits_allocated,
        pixel_representation=1 if array.dtype.kind == "i" else 0,
        photometric_interpretation=kwargs.pop("photometric_interpretation", "RGB" if array.ndim == 3 else "MONOCHROME2"),
        **kwargs,
    )


def dataset_frames(name: str):
    ds = pydicom.dcmread(get_testdata_file(name))
    fmt = PixelFormat.from_dataset(ds)
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    if codec_for(transfer_syntax).media_type == "application/octet-stream":
        length = fmt.frame_length
        frames = [ds.PixelData[i * length : (i + 1) * length] for i in range(fmt.number_of_frames)]
    else:
        frames = list(generate_frames(ds.PixelData, number_of_frames=fmt.number_of_frames))
    return ds, fmt, transfer_syntax, frames


def decode_file(name: str) -> numpy.ndarray:
    ds, fmt, transfer_syntax, frames = dataset_frames(name)
    decoded = [decode_frame(frame, transfer_syntax, fmt) for frame in frames]
    return decoded[0] if len(decoded) == 1 else numpy.stack(decoded)


# -- the table -------------------------------------------------------------------------------------


def test_table_covers_the_required_transfer_syntaxes():
    required = {
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "3.2.840.10008.1.2.4.96",
    }
    assert required <= set(CODECS)
    for uid, codec in CODECS.items():
        assert codec.uid == uid
        assert codec.resolution_progressive == (".4.9" in uid or ".4.20" in uid)
    assert codec_for("1.2.840.10008.1.2.4.202").media_type == "image/jphc"
    assert codec_for("1.2.840.10008.1.2.4.80").media_type == "image/jls"


def test_unknown_transfer_syntax_is_a_clear_error():
    with pytest.raises(DecodeError, match="unsupported transfer syntax"):
        codec_for("1.2.840.10008.1.2.2")  # big endian: retired, not in the table
    with pytest.raises(DecodeError, match="unsupported transfer syntax"):
        decode_frame(b"\x00" * 8, "1.2.3.4", PixelFormat(rows=2, columns=2))


# -- lossless round trips with imagecodecs encoders ------------------------------------------------

LOSSLESS_ENCODERS = {
    "1.2.840.10008.1.2.4.80": lambda a: imagecodecs.jpegls_encode(a),
    "1.2.840.10008.1.2.4.90": lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, codecformat="J2K"),
    "1.2.840.10008.1.2.4.201": lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    "1.2.840.10008.1.2.4.202": lambda a: imagecodecs.htj2k_encode(a, reversible=True, tlm=True, tilepart=1,
                                                                  resolutions=3),
    "3.2.840.10008.1.2.4.96": lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    "1.2.840.10008.1.2.4.70": lambda a: imagecodecs.ljpeg_encode(a),
    "1.2.840.10008.1.2.4.57": lambda a: imagecodecs.ljpeg_encode(a),
    "1.2.840.10008.1.2.5": lambda a: rle_encode(a),
}


def rle_encode(array: numpy.ndarray) -> bytes:
    """imagecodecs has no DICOM RLE encoder: pydicom's own one."""
    from pydicom.pixels.encoders import RLELosslessEncoder

    return RLELosslessEncoder.encode(
        array, rows=array.shape[0], columns=array.shape[1],
        samples_per_pixel=array.shape[2] if array.ndim == 3 else 1, bits_allocated=array.dtype.itemsize * 8,
        bits_stored=array.dtype.itemsize * 8, pixel_representation=int(array.dtype.kind == "i"),
        photometric_interpretation="RGB" if array.ndim == 3 else "MONOCHROME2", planar_configuration=0,
        number_of_frames=1, encoding_plugin="pydicom",
    )


@pytest.mark.parametrize("transfer_syntax", sorted(LOSSLESS_ENCODERS))
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_lossless_round_trip_unsigned(transfer_syntax, bits):
    image = smooth_image(67, 45, bits)
    encoded = LOSSLESS_ENCODERS[transfer_syntax](image)
    decoded = decode_frame(bytes(encoded), transfer_syntax, fmt_for(image, bits))
    assert decoded.dtype == image.dtype
    assert decoded.shape == image.shape
    numpy.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                                             "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"])
def test_lossless_round_trip_signed(transfer_syntax):
    image = smooth_image(40, 52, 16, signed=True)
    encoded = LOSSLESS_ENCODERS[transfer_syntax](image)
    decoded = decode_frame(bytes(encoded), transfer_syntax, fmt_for(image))
    assert decoded.dtype == numpy.int16
    numpy.testing.assert_array_equal(decoded, image)


def test_jpegls_signed_as_stored_bit_pattern():
    """DICOM JPEG-LS holds signed data as its BitsStored bit pattern; decode sign-extends it."""
    image = smooth_image(30, 20, 12, signed=True)
    pattern = image.view(numpy.uint16) & 0x0FFF
    decoded = decode_frame(imagecodecs.jpegls_encode(pattern), "1.2.840.10008.1.2.4.80", fmt_for(image, 12))
    assert decoded.dtype == numpy.int16
    numpy.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                                             "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.5"])
def test_lossless_round_trip_rgb(transfer_syntax):
    image = numpy.stack([smooth_image(33, 47, 8), smooth_image(33, 47, 8)[::-1], smooth_image(33, 47, 8)[:, ::-1]],
                        axis=-1)
    if transfer_syntax == "1.2.840.10008.1.2.4.202":
        encoded = imagecodecs.htj2k_encode(image, reversible=True, rgb=False, planar=False, resolutions=2)
    elif transfer_syntax == "1.2.840.10008.1.2.5":
        encoded = rle_encode(image)
    else:
        encoded = LOSSLESS_ENCODERS[transfer_syntax](image)
    decoded = decode_frame(bytes(encoded), transfer_syntax, fmt_for(image))
    assert decoded.shape == (33, 47, 3)
    numpy.testing.assert_array_equal(decoded, image)


def test_htj2k_with_colour_transform_comes_back_rgb():
    image = numpy.stack([smooth_image(20, 24, 8)] * 3, axis=-1)
    image[..., 1] //= 2
    encoded = imagecodecs.htj2k_encode(image, reversible=True, rgb=True)
    fmt = fmt_for(image, photometric_interpretation="YBR_RCT")
    numpy.testing.assert_array_equal(decode_frame(encoded, "1.2.840.10008.1.2.4.201", fmt), image)


def test_lossy_htj2k_and_jpegls_near_lossless_stay_close():
    image = smooth_image(64, 64, 12)
    fmt = fmt_for(image, 12)
    lossy = imagecodecs.htj2k_encode(image, 8 / 65536, reversible=False, resolutions=3)
    decoded = decode_frame(lossy, "1.2.840.10008.1.2.4.203", fmt)
    assert decoded.dtype == numpy.uint16 and decoded.max() <= 4095
    assert numpy.abs(decoded.astype(int) - image).max() <= 24
    near = imagecodecs.jpegls_encode(image, level=2)
    decoded = decode_frame(near, "1.2.840.10008.1.2.4.81", fmt)
    assert numpy.abs(decoded.astype(int) - image).max() <= 2


def test_jpeg_baseline_round_trip_is_close():
    image = smooth_image(48, 64, 8)
    encoded = imagecodecs.jpeg8_encode(image, level=95)
    decoded = decode_frame(encoded, "1.2.840.10008.1.2.4.50", fmt_for(image))
    assert decoded.shape == image.shape and decoded.dtype == numpy.uint8
    assert numpy.abs(decoded.astype(int) - image).mean() < 3


# -- native data: masking, sign extension, planar configuration, no copy ----------------------------


def test_native_unsigned_masks_to_bits_stored():
    stored = numpy.array([[0x0FFF, 0xF123], [0x8000, 0x1001]], dtype="<u2")  # high bits: overlay junk
    fmt = PixelFormat(rows=2, columns=2, bits_stored=12)
    decoded = decode_frame(stored.tobytes(), "1.2.840.10008.1.2.1", fmt)
    numpy.testing.assert_array_equal(decoded, [[0x0FFF, 0x0123], [0x0000, 0x0001]])
    assert decoded.dtype == numpy.uint16


def test_native_signed_sign_extends_from_bits_stored():
    stored = numpy.array([[0x0FFF, 0x0800], [0x07FF, 0xF001]], dtype="<u2")
    fmt = PixelFormat(rows=2, columns=2, bits_stored=12, pixel_representation=1)
    decoded = decode_frame(stored.tobytes(), "1.2.840.10008.1.2", fmt)
    numpy.testing.assert_array_equal(decoded, [[-1, -2048], [2047, 1]])
    assert decoded.dtype == numpy.int16


def test_native_8_bit_signed_and_full_width_is_a_view():
    data = bytes([0x00, 0x7F, 0x80, 0xFF])
    decoded = decode_frame(data, "1.2.840.10008.1.2.1",
                           PixelFormat(rows=2, columns=2, bits_allocated=8, bits_stored=8, pixel_representation=1))
    numpy.testing.assert_array_equal(decoded, [[0, 127], [-128, -1]])
    buffer = bytearray(numpy.arange(12, dtype="<u2").tobytes())
    view = decode_frame(buffer, "1.2.840.10008.1.2.1", PixelFormat(rows=3, columns=4))
    assert numpy.shares_memory(view, numpy.frombuffer(buffer, numpy.uint8))


def test_native_planar_configuration():
    image = numpy.stack([smooth_image(5, 7, 8), smooth_image(5, 7, 8) // 2, 255 - smooth_image(5, 7, 8)], axis=-1)
    planar = numpy.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()
    interleaved = image.tobytes()
    fmt = fmt_for(image)
    numpy.testing.assert_array_equal(decode_frame(interleaved, "1.2.840.10008.1.2.1", fmt), image)
    planar_fmt = fmt_for(image, planar_configuration=1)
    numpy.testing.assert_array_equal(decode_frame(planar, "1.2.840.10008.1.2.1", planar_fmt), image)


def test_monochrome1_is_kept_as_stored():
    stored = smooth_image(8, 8, 12)
    fmt = PixelFormat(rows=8, columns=8, bits_stored=12, photometric_interpretation="MONOCHROME1")
    numpy.testing.assert_array_equal(decode_frame(stored.tobytes(), "1.2.840.10008.1.2.1", fmt), stored)
    encoded = imagecodecs.htj2k_encode(stored, reversible=True)
    numpy.testing.assert_array_equal(decode_frame(encoded, "1.2.840.10008.1.2.4.201", fmt), stored)


def test_reduce_is_refused_for_non_wavelet_syntaxes():
    fmt = PixelFormat(rows=2, columns=2)
    with pytest.raises(ValueError):
        decode_frame(b"\x00" * 8, "1.2.840.10008.1.2.1", fmt, reduce=1)
    with pytest.raises(ValueError):
        decode_frame(imagecodecs.jpegls_encode(numpy.zeros((2, 2), numpy.uint16)), "1.2.840.10008.1.2.4.80", fmt,
                     reduce=1)


# -- HTJ2K reduce ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", [1, 2, 3])
def test_htj2k_reduce_size_and_no_negative_wrap(reduce):
    image = smooth_image(131, 97, 12)
    image[:24, :24] = 0  # a black corner next to bright pixels: reduced levels undershoot here
    image[:24, 24:30] = 4095
    encoded = imagecodecs.htj2k_encode(image, reversible=True, tlm=True, tilepart=1, resolutions=3)
    raw = imagecodecs.htj2k_decode(encoded, skipres=reduce)
    fmt = fmt_for(image, 12)
    decoded = decode_frame(encoded, "1.2.840.10008.1.2.4.202", fmt, reduce=reduce)
    assert decoded.shape == (-(-131 // 2**reduce), -(-97 // 2**reduce)) == raw.shape
    assert decoded.dtype == numpy.uint16
    assert decoded.max() <= 4095
    wrapped = raw > 60000
    if wrapped.any():  # the imagecodecs behaviour the fix is for
        assert (decoded[wrapped] == 0).all()
    unchanged = raw <= 4095
    numpy.testing.assert_array_equal(decoded[unchanged], raw[unchanged])
    # close to the block mean of the original
    block = codecs.area_mean(image, 2**reduce).astype(int)
    assert numpy.abs(decoded.astype(int) - block).mean() < 64


def test_htj2k_reduce_signed():
    image = smooth_image(64, 80, 16, signed=True)
    encoded = imagecodecs.htj2k_encode(image, reversible=True, resolutions=3)
    decoded = decode_frame(encoded, "1.2.840.10008.1.2.4.201", fmt_for(image), reduce=2)
    assert decoded.shape == (16, 20) and decoded.dtype == numpy.int16


def test_jpeg2000_reduce_gives_the_reduced_size():
    image = smooth_image(50, 33, 16)
    encoded = imagecodecs.jpeg2k_encode(image, reversible=True, codecformat="J2K")
    decoded = decode_frame(encoded, "1.2.840.10008.1.2.4.90", fmt_for(image), reduce=1)
    assert decoded.shape == (25, 17)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.90",
                                             "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50",
                                             "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"])
def test_garbage_is_a_decode_error(transfer_syntax):
    garbage = bytes(RNG.integers(0, 256, 500, dtype=numpy.uint8))
    with pytest.raises(DecodeError) as info:
        decode_frame(garbage, transfer_syntax, PixelFormat(rows=16, columns=16))
    assert codec_for(transfer_syntax).name in str(info.value)


def test_truncated_frames_are_decode_errors():
    image = smooth_image(64, 64, 16)
    encoded = imagecodecs.htj2k_encode(image, reversible=True)
    with pytest.raises(DecodeError, match="HTJ2K"):
        decode_frame(encoded[:40], "1.2.840.10008.1.2.4.201", fmt_for(image))
    with pytest.raises(DecodeError, match="native frame has"):
        decode_frame(image.tobytes()[:-2], "1.2.840.10008.1.2.1", fmt_for(image))
    with pytest.raises(DecodeError):
        decode_frame(b"", "1.2.840.10008.1.2.4.80", fmt_for(image))
    jls = imagecodecs.jpegls_encode(image)
    with pytest.raises(DecodeError, match="JPEG-LS"):
        decode_frame(jls[: len(jls) // 3], "1.2.840.10008.1.2.4.80", fmt_for(image))


# -- pydicom's own files ---------------------------------------------------------------------------

# (file, reference file with the same pixels, max allowed difference)
SAME_PIXELS = [
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0),          # JPEG 2000 lossless
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", 0),      # JPEG-LS lossless
    ("MR_small_RLE.dcm", "MR_small.dcm", 0),                   # RLE, signed 16-bit
    ("MR_small_implicit.dcm", "MR_small.dcm", 0),              # implicit VR
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", 0),             # JPEG lossless SV1, RGB
    ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm", 0),               # JPEG 2000 RGB
    ("SC_rgb_jls_lossy_sample.dcm", "SC_rgb_rle.dcm", 2),      # JPEG-LS near-lossless
    ("SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle.dcm", 2),          # JPEG baseline RGB
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_rle.dcm", 8),       # JPEG baseline YBR_FULL_422
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", 8),            # JPEG baseline YBR_FULL
    ("JPGExtended.dcm", "JPEG-lossy.dcm", 0),                  # JPEG extended 12-bit (same stream)
]


@pytest.mark.parametrize("name,reference,tolerance", SAME_PIXELS)
def test_pydicom_files_decode_to_known_pixels(name, reference, tolerance):
    decoded = decode_file(name)
    expected = decode_file(reference)
    assert decoded.shape == expected.shape
    assert decoded.dtype == expected.dtype
    assert numpy.abs(decoded.astype(int) - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm",
                                  "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_2frame.dcm", "rtdose_rle_1frame.dcm",
                                  "rtdose.dcm", "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "examples_rgb_color.dcm", "image_dfl.dcm", "examples_overlay.dcm",
                                  "liver_1frame.dcm"])
def test_matches_pydicom_pixel_array(name):
    """Native, deflated and RLE files: pydicom's own decoders are the reference."""
    ds = pydicom.dcmread(get_testdata_file(name))
    expected = ds.pixel_array
    decoded = decode_file(name)
    assert decoded.shape == expected.shape
    assert decoded.dtype == expected.dtype
    numpy.testing.assert_array_equal(decoded, expected)


def test_jpeg_baseline_ybr_multiframe():
    decoded = decode_file("examples_ybr_color.dcm")
    assert decoded.shape == (30, 240, 320, 3) and decoded.dtype == numpy.uint8


def test_jpeg2000_signed_file_is_close_to_pydicom_reference_values():
    decoded = decode_file("JPEG2000.dcm")
    assert decoded.dtype == numpy.int16 and decoded.shape == (1024, 256)
    assert decoded.min() < 0  # signed data keeps its sign


# -- PixelFormat and modality ------------------------------------------------------------------------


def test_pixel_format_from_dataset_and_dicom_json_agree():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    from_dataset = PixelFormat.from_dataset(ds)
    from_json = PixelFormat.from_dicom_json(ds.to_json_dict())
    assert from_dataset == from_json
    assert from_dataset.rows == 128 and from_dataset.pixel_representation == 1
    assert from_dataset.rescale_intercept == float(ds.RescaleIntercept)


def test_pixel_format_from_dicom_json_strings_and_defaults():
    obj = {"00280010": {"vr": "US", "Value": [512]}, "00280011": {"vr": "US", "Value": [256]},
           "00280008": {"vr": "IS", "Value": ["3"]}, "00281053": {"vr": "DS", "Value": ["2.5"]},
           "00280101": {"vr": "US", "Value": [12]}}
    fmt = PixelFormat.from_dicom_json(obj)
    assert (fmt.rows, fmt.columns, fmt.number_of_frames, fmt.bits_stored) == (512, 256, 3, 12)
    assert fmt.rescale_slope == 2.5 and fmt.samples_per_pixel == 1 and fmt.bits_allocated == 16


def test_to_modality():
    stored = numpy.array([[0, 4095]], dtype=numpy.uint16)
    fmt = PixelFormat(rows=1, columns=2, bits_stored=12, rescale_intercept=-1024)
    out = to_modality(stored, fmt)
    assert out.dtype == numpy.int16
    numpy.testing.assert_array_equal(out, [[-1024, 3071]])
    assert to_modality(stored, PixelFormat(rows=1, columns=2)) is stored
    scaled = to_modality(stored, PixelFormat(rows=1, columns=2, rescale_slope=0.5, rescale_intercept=1))
    assert scaled.dtype == numpy.float32
    numpy.testing.assert_allclose(scaled, [[1, 2048.5]])
    wide = to_modality(numpy.array([[65535]], numpy.uint16), PixelFormat(rows=1, columns=1, rescale_slope=2))
    assert wide.dtype == numpy.int32 and wide[0, 0] == 131070


def test_lossy_htj2k_of_full_width_unsigned_data_does_not_wrap():
    """Black next to white: the 9/7 wavelet undershoots below 0, which must not come back as 255."""
    image = numpy.zeros((64, 64), numpy.uint8)
    image[:, 32:] = 255
    image[20:40, 20:40] = 0
    encoded = imagecodecs.htj2k_encode(image, 8 / 256, reversible=False, resolutions=3)
    decoded = decode_frame(encoded, "1.2.840.10008.1.2.4.203", fmt_for(image))
    assert numpy.abs(decoded.astype(int) - image).max() <= 16



def without(monkeypatch, *functions: str) -> None:
    """Pretend this imagecodecs build lacks ``functions`` (as Pyodide's trimmed one does)."""
    real = codecs._has
    monkeypatch.setattr(codecs, "_has", lambda name: name not in functions and real(name))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle.dcm"])
def test_rle_fallback_without_imagecodecs_dicomrle(name, monkeypatch):
    """Pyodide's imagecodecs may lack dicomrle: pydicom's RLE decoder (public API) gives the same pixels."""
    expected = decode_file(name)
    without(monkeypatch, "dicomrle_decode")
    assert codec_for(codecs.RLE_LOSSLESS).backend(PixelFormat(rows=1, columns=1)).name == "pydicom"
    numpy.testing.assert_array_equal(decode_file(name), expected)


def test_htj2k_falls_back_to_openjpeg_when_openjph_is_missing(monkeypatch):
    image = smooth_image(40, 30, 12)
    encoded = imagecodecs.htj2k_encode(image, reversible=True, tlm=True, tilepart=1, resolutions=2)
    without(monkeypatch, "htj2k_decode")
    fmt = fmt_for(image, 12)
    numpy.testing.assert_array_equal(decode_frame(encoded, "1.2.840.10008.1.2.4.202", fmt), image)
    assert decode_frame(encoded, "1.2.840.10008.1.2.4.202", fmt, reduce=1).shape == (20, 15)


def test_backend_order_is_data_and_a_missing_decoder_names_what_was_tried(monkeypatch):
    htj2k = codec_for(codecs.HTJ2K_LOSSLESS_RPCL)
    assert [b.name for b in htj2k.backends] == ["imagecodecs.htj2k_decode", "imagecodecs.jpeg2k_decode"]
    lossy = codec_for(codecs.HTJ2K)
    full_width = PixelFormat(rows=8, columns=8, bits_allocated=8, bits_stored=8)
    assert lossy.backend(full_width).name == "imagecodecs.jpeg2k_decode"  # clamps instead of wrapping
    assert lossy.backend(full_width, 1).name == "imagecodecs.htj2k_decode"  # reduced: OpenJPH's skipres
    assert all(uid in codecs.DECODERS for uid in CODECS)
    without(monkeypatch, "jpegls_decode")
    image = smooth_image(16, 16, 8)
    with pytest.raises(DecodeError, match=r"no decoder for JPEG-LS Lossless in this build \(tried imagecodecs"):
        decode_frame(imagecodecs.jpegls_encode(image), codecs.JPEG_LS_LOSSLESS, fmt_for(image))


def test_codecs_use_no_private_pydicom_api():
    source = open(codecs.__file__).read()
    assert "_rle_decode_frame" not in source and "pydicom.pixels.decoders.rle" not in source


# -- DICOM RLE header (issue 14 item 2) ------------------------------------------------------------


def rle_frame(segments: int, offsets: list[int], size: int = 664) -> bytes:
    header = numpy.zeros(16, "<u4")
    header[0] = segments
    header[1:1 + len(offsets)] = offsets
    body = bytes([0x7F]) + bytes(range(128)) * 6
    return (header.tobytes() + body)[:size]


@pytest.mark.parametrize("segments,offsets,message", [
    (2, [64, 4294967295], "past the 664-byte frame"),
    (2, [64, 60000], "past the 664-byte frame"),
    (2, [64, 63], "not after segment 1"),
    (2, [100, 200], "not right after the header"),
    (0, [], "0 segments"),
    (16, [64], "16 segments"),
    (1, [64], "the pixel format needs 2"),
])
def test_rle_header_is_validated_before_the_native_decoder(segments, offsets, message):
    fmt = PixelFormat(rows=16, columns=16, bits_allocated=16, bits_stored=16)
    with pytest.raises(DecodeError, match=message):
        decode_frame(rle_frame(segments, offsets), codecs.RLE_LOSSLESS, fmt)


def test_a_664_byte_rle_frame_with_offsets_past_the_data_does_not_crash_the_process():
    """Without the header check imagecodecs.dicomrle_decode reads past its buffer: SIGSEGV."""
    import subprocess
    import sys

    code = (
        "import numpy\nfrom app.codecs import decode_frame, DecodeError, PixelFormat, RLE_LOSSLESS\n"
        "h = numpy.zeros(16, '<u4'); h[0] = 3; h[1:4] = (64, 100, 5000000)\n"
        "frame = (h.tobytes() + bytes([0x7F]) + bytes(range(128)) * 6)[:664]\n"
        "assert len(frame) == 664\n"
        "try:\n"
        "    decode_frame(frame, RLE_LOSSLESS, PixelFormat(rows=16, columns=16, samples_per_pixel=3,"
        " bits_allocated=8, bits_stored=8, photometric_interpretation='RGB'))\n"
        "except DecodeError as exc:\n    print('refused:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=str(__import__("pathlib").Path(codecs.__file__).parent.parent))
    assert result.returncode == 0, (result.returncode, result.stderr[-500:])
    assert "refused: RLE Lossless decode failed: RLE segment 3 starts at 5000000" in result.stdout


# -- BitsAllocated / BitsStored against the stream (issue 14 item 8) -------------------------------


@pytest.mark.parametrize("encode,transfer_syntax", [
    (lambda a: imagecodecs.jpegls_encode(a), codecs.JPEG_LS_LOSSLESS),
    (lambda a: imagecodecs.htj2k_encode(a, reversible=True), codecs.HTJ2K_LOSSLESS),
    (lambda a: imagecodecs.ljpeg_encode(a), codecs.JPEG_LOSSLESS_SV1),
], ids=["jpegls", "htj2k", "ljpeg"])
def test_bits_allocated_8_on_a_16_bit_stream_fails_with_a_message(encode, transfer_syntax):
    image = smooth_image(32, 24, 16)
    wrong = PixelFormat(rows=32, columns=24, bits_allocated=8, bits_stored=8)
    with pytest.raises(DecodeError, match="the stream holds 16-bit samples, BitsAllocated is 8"):
        decode_frame(bytes(encode(image)), transfer_syntax, wrong)


def test_bits_stored_too_small_for_the_lossless_values_fails_instead_of_masking():
    image = smooth_image(32, 24, 12)
    data = imagecodecs.jpegls_encode(image)
    numpy.testing.assert_array_equal(decode_frame(data, codecs.JPEG_LS_LOSSLESS, fmt_for(image, 12)), image)
    with pytest.raises(DecodeError, match="up to 4095, BitsStored is 8"):
        decode_frame(data, codecs.JPEG_LS_LOSSLESS, fmt_for(image, 8))


def test_native_frame_longer_than_the_format_says_is_refused():
    image = smooth_image(16, 16, 16)
    wrong = PixelFormat(rows=16, columns=16, bits_allocated=8, bits_stored=8)
    with pytest.raises(DecodeError, match="512 bytes, 256 expected"):
        decode_frame(image.tobytes(), codecs.EXPLICIT_VR_LITTLE_ENDIAN, wrong)
    padded = numpy.zeros((3, 3), numpy.uint8)
    assert decode_frame(padded.tobytes() + b"\0", codecs.EXPLICIT_VR_LITTLE_ENDIAN, fmt_for(padded)).shape == (3, 3)


def test_a_truncated_jpeg_ls_stream_is_refused_before_charls_sees_it():
    """CharLS takes seconds on some truncated streams (16 s on this one): no EOI, no decode."""
    image = smooth_image(64, 64, 12)
    encoded = bytes(imagecodecs.jpegls_encode(image))
    for cut in (len(encoded) // 4, len(encoded) // 2, len(encoded) - 1):
        with pytest.raises(DecodeError, match="truncated"):
            decode_frame(encoded[:cut], codecs.JPEG_LS_LOSSLESS, fmt_for(image, 12))
    numpy.testing.assert_array_equal(decode_frame(encoded + b"\0", codecs.JPEG_LS_LOSSLESS, fmt_for(image, 12)), image)
