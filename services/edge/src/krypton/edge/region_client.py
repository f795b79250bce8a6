"""The box's HTTP client to the region's gateway: QIDO-RS and WADO-RS as the structure.

The box holds one token of its structure (role `producer`), so the gateway applies the access
policy as for any of the structure's systems: a C-FIND through the box sees what a QIDO search
with that token sees, no more. Used from pynetdicom's handler threads, hence synchronous.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

__all__ = ["RegionClient", "RegionError"]

_PAGE = 500  # QIDO page size while walking a C-FIND's results


class RegionError(Exception):
    """The region refused or could not answer."""

    def __init__(self, status: int | None, reason: str) -> None:
        self.status = status
        super().__init__(reason)


class RegionClient:
    """QIDO/WADO against the regional gateway with the box's token.

    Args:
        dicomweb_url: The gateway's DICOMweb root (`.../dicomweb`).
        token: Returns the box's bearer token (asked for every request: it may rotate).
        timeout: Seconds per HTTP request.
    """

    def __init__(self, dicomweb_url: str, token: Callable[[], str], timeout: float = 30.0):
        self.url = dicomweb_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @property
    def headers(self) -> dict[str, str]:
        """Authorization for one request.

        Raises:
            RegionError: The token cannot be read (its file missing, say).
        """
        try:
            return {"Authorization": f"Bearer {self.token()}"}
        except OSError as exc:
            raise RegionError(None, f"no token for the region: {exc!r}") from exc

    def search(self, path: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """Every result of a QIDO search, page by page.

        Raises:
            RegionError: The gateway answered with an error, or could not be reached.
        """
        offset = 0
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            while True:
                page: list[tuple[str, str | int | float | bool | None]] = [
                    *params,
                    ("limit", str(_PAGE)),
                    ("offset", str(offset)),
                ]
                try:
                    response = client.get(f"{self.url}/{path}", params=page)
                except httpx.HTTPError as exc:
                    raise RegionError(None, f"region unreachable: {exc!r}") from exc
                if response.status_code == 204:
                    return
                if response.status_code != 200:
                    raise RegionError(response.status_code, response.text[:200])
                results: list[dict[str, Any]] = response.json()
                yield from results
                if len(results) < _PAGE:
                    return
                offset += len(results)

    def retrieve(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[Dataset]:
        """The instances of a study, series or one instance, as stored (WADO-RS).

        Raises:
            RegionError: The gateway answered with an error, or could not be reached.
        """
        client = DICOMwebClient(self.url, headers=self.headers, timeout=self.timeout)
        try:
            if sop_uid is not None and series_uid is not None:
                return [client.retrieve_instance(study_uid, series_uid, sop_uid)]
            if series_uid is not None:
                return list(client.retrieve_series(study_uid, series_uid))
            return list(client.retrieve_study(study_uid))
        except Exception as exc:  # requests' HTTPError and connection errors alike
            status = getattr(getattr(exc, "response", None), "status_code", None)
            raise RegionError(status, f"retrieve failed: {exc!r}") from exc
