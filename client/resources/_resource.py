"""What every resource holds: the client it sends through."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from client._client import AsyncClient, Client


def segment(value: str | int) -> str:
    """A path segment, escaped: a name or id never reaches another route."""
    return quote(str(value), safe="")


class SyncResource:
    def __init__(self, client: Client) -> None:
        self._client = client


class AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
