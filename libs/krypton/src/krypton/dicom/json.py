"""DICOM JSON Model (PS3.18 Annex F.2) for metadata responses.

pydicom encodes each element (`DataElement.to_json_dict`); this module walks the data set
itself so that large binary values that were deferred at read time (see
`krypton.dicom.header`) become a BulkDataURI without ever being loaded, and so that nested
elements get a bulk data path that says where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import BYTES_VR, VR

from krypton.dicom._values import collect_warnings

__all__ = ["dataset_to_dicom_json", "encode_pn"]

BulkDataURI = Callable[[str], str]

_BULK_VRS: Final = frozenset(str(vr) for vr in BYTES_VR if vr != VR.UN) | {"UN"}


def dataset_to_dicom_json(
    ds: Dataset, bulk_data_uri: BulkDataURI | None, threshold: int = 1024
) -> dict[str, Any]:
    """The DICOM JSON object of `ds` (keys are 8-hex-digit tags, PS3.18 F.2.1).

    Args:
        ds: the data set; group length elements are left out (they describe an encoding the
            JSON does not have), so is anything pydicom cannot decode.
        bulk_data_uri: given the attribute path of a binary element, returns its URI. The
            path is the tag (`"00431028"`), or for a nested element the tags and item indexes
            from the top (`"00540016/0/00181072"`). None puts every value inline.
        threshold: binary values whose base64 form is longer than this become a BulkDataURI
            (when `bulk_data_uri` is given).

    Returns:
        A dict ready for `json.dumps`.
    """
    notes: list[str] = []
    with collect_warnings(notes):
        return _dataset(ds, bulk_data_uri, threshold, "")


def encode_pn(value: str) -> dict[str, str]:
    """The DICOM JSON form of one Person Name value (PS3.18 F.2.2).

    Args:
        value: the PN string form, `Alphabetic=Ideographic=Phonetic`, trailing groups
            optional.

    Returns:
        `{"Alphabetic": ...}` plus `Ideographic` and `Phonetic` when present; `{}` for an
        empty name.
    """
    groups = value.split("=")
    result: dict[str, str] = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            result[name] = group
    return result


def _dataset(
    ds: Dataset, bulk_data_uri: BulkDataURI | None, threshold: int, prefix: str
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.element == 0x0000:
            continue
        key = f"{int(tag):08X}"
        path = f"{prefix}{key}"
        try:
            encoded = _element(ds, tag, bulk_data_uri, threshold, path)
        except Exception:  # metadata is best effort: an undecodable element is left out
            continue
        if encoded is not None:
            result[key] = encoded
    return result


def _element(
    ds: Dataset, tag: BaseTag, bulk_data_uri: BulkDataURI | None, threshold: int, path: str
) -> dict[str, Any] | None:
    # Look at the raw element first: a deferred value (value None, length > 0) is only read
    # if it has to be inlined.
    raw: object = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and bulk_data_uri is not None:
        vr = _vr(raw.VR, tag)
        if vr in _BULK_VRS and raw.length > (threshold // 4) * 3:
            return {"vr": vr, "BulkDataURI": bulk_data_uri(path)}
    element = ds[tag]
    vr = _vr(element.VR, tag)
    if vr == "SQ":
        items = element.value if isinstance(element.value, Sequence) else []
        return {
            "vr": "SQ",
            "Value": [
                _dataset(item, bulk_data_uri, threshold, f"{path}/{index}/")
                for index, item in enumerate(items)
            ],
        }
    handler = None if bulk_data_uri is None else _handler(bulk_data_uri, path)
    encoded: dict[str, Any] = element.to_json_dict(handler, threshold)
    encoded["vr"] = vr
    return encoded


def _handler(bulk_data_uri: BulkDataURI, path: str) -> Callable[[DataElement], str]:
    def handler(_: DataElement) -> str:
        return bulk_data_uri(path)

    return handler


def _vr(vr: str | None, tag: BaseTag) -> str:
    """A single JSON VR: implicit VR elements take the dictionary's, ambiguous ones are settled."""
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    if " or " in vr:
        # "OB or OW", "US or SS", "US or SS or OW" left unresolved (implicit VR data sets):
        # OW is what implicit VR encodes, US the usual reading.
        choices = vr.split(" or ")
        return "OW" if "OW" in choices else choices[0]
    return str(vr)
