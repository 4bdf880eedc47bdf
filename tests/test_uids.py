"""The DICOM UI rule that decides which values may become paths and URL segments."""

from __future__ import annotations

import pytest

from app import codecs, uids
from app.uids import InvalidUID, check_uid, valid_uid


@pytest.mark.parametrize("value", ["1", "1.2.840.10008.1.2.4.202", "0.0", "1." + "2" * 62])
def test_valid(value):
    assert valid_uid(value) and check_uid(value) == value


@pytest.mark.parametrize("value", [
    "", ".", "1.", ".1", "1..2", "../../../../tmp/x", "/tmp/y", "1.2/3", "1.2 ", " 1.2", "1.2\x00", "1.a",
    "1." + "2" * 63, "１.２", "1.2\n", None, 12, b"1.2",
])
def test_invalid(value):
    assert not valid_uid(value)
    with pytest.raises(InvalidUID, match="not a valid DICOM UID"):
        check_uid(value, "StudyInstanceUID")


def test_strict_rejects_leading_zeros_only_when_asked():
    assert valid_uid("1.02") and not valid_uid("1.02", strict=True) and valid_uid("1.0.2", strict=True)


def test_transfer_syntaxes_live_in_one_place():
    assert codecs.EXPLICIT_VR_LITTLE_ENDIAN is uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert all(valid_uid(uid) for uid in codecs.CODECS)
