"""DICOM UIDs in one place: the transfer syntaxes the viewer knows, and the UI value rule.

A UID becomes a URL segment or a folder name (the converter's tree, discovery's URLs), so only a
value that follows PS3.5 9.1 may be used that way: digits and dots, at most 64 characters, no empty
component, no leading zero in a component of more than one digit (the last rule is checked by
``valid_uid(strict=True)`` only: real archives hold such UIDs and they are still safe paths).
"""

from __future__ import annotations

import re

__all__ = [
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "RLE_LOSSLESS",
    "JPEG_BASELINE",
    "JPEG_EXTENDED",
    "JPEG_LOSSLESS",
    "JPEG_LOSSLESS_SV1",
    "JPEG_LS_LOSSLESS",
    "JPEG_LS_NEAR_LOSSLESS",
    "JPEG_2000_LOSSLESS",
    "JPEG_2000",
    "HTJ2K_LOSSLESS",
    "HTJ2K_LOSSLESS_RPCL",
    "HTJ2K",
    "HTJ2K_PRIVATE",
    "NATIVE_SYNTAXES",
    "MAX_UID_LENGTH",
    "valid_uid",
    "check_uid",
    "InvalidUID",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
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

#: syntaxes whose frames are the stored samples as they are (no codec)
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                             DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})

MAX_UID_LENGTH = 64
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_STRICT_COMPONENT = re.compile(r"0|[1-9][0-9]*")


class InvalidUID(ValueError):
    """A value used as a UID does not follow the DICOM UI rules; the message quotes it."""


def valid_uid(value: object, *, strict: bool = False) -> bool:
    """Whether ``value`` is a DICOM UI value: [0-9.], 1..64 characters, no empty component."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_UID_LENGTH:
        return False
    if not _UID.fullmatch(value):
        return False
    return not strict or all(_STRICT_COMPONENT.fullmatch(c) for c in value.split("."))


def check_uid(value: object, what: str = "UID") -> str:
    """``value`` when it is a valid UID (see ``valid_uid``), else InvalidUID naming ``what``."""
    if not valid_uid(value):
        shown = repr(value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "...")
        raise InvalidUID(f"{what} {shown} is not a valid DICOM UID (digits and dots, at most "
                         f"{MAX_UID_LENGTH} characters, no empty component)")
    return value  # type: ignore[return-value]
