"""`client.optimizers`: the registry. Names hold immutable numbered versions; a reference is `name` (the
newest), `name:3` or `name@alias`.

    l2o.optimizers.list()                          every optimizer
    l2o.optimizers.get("lstm")                     one, with its versions and aliases
    l2o.optimizers.versions("lstm")                its versions
    l2o.optimizers.version("lstm", 3)              one version: config, digest, evaluation report
    l2o.optimizers.resolve("lstm@prod")            the version a reference points to
    l2o.optimizers.download("lstm@prod")           its checkpoint bytes, checked against their digest
    l2o.optimizers.upload("lstm", "weights.safetensors")       a new version (admin)
    l2o.optimizers.set_alias("lstm", "prod", 3)    (admin)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from client import _constants as c
from client._base import RequestOptions
from client._exceptions import DigestMismatchError
from client.resources._resource import AsyncResource, SyncResource, segment
from client.types import Alias, CheckpointFile, Optimizer, Version, sha256_hex

BASE = "/v1/optimizers"


def _upload(name: str, checkpoint: bytes | str | Path, config: dict[str, Any] | None) -> RequestOptions:
    data = checkpoint if isinstance(checkpoint, bytes | bytearray) else Path(checkpoint).read_bytes()
    # The digest rides along so the server refuses bytes damaged on the way.
    headers = {"Content-Type": "application/octet-stream", c.DIGEST_HEADER: sha256_hex(bytes(data))}
    if config is not None:
        headers[c.CONFIG_HEADER] = json.dumps(config, separators=(",", ":"))
    return RequestOptions("POST", f"{BASE}/{segment(name)}/versions", content=bytes(data), headers=headers)


def _checkpoint(version: Version) -> RequestOptions:
    return RequestOptions("GET", f"{BASE}/{segment(version.name)}/versions/{version.version}/checkpoint")


def _checked(version: Version, response: httpx.Response) -> CheckpointFile:
    data = response.content
    sent = response.headers.get(c.DIGEST_HEADER)
    actual = sha256_hex(data)
    if actual != version.sha256 or (sent is not None and sent != actual):
        raise DigestMismatchError(
            f"the checkpoint of {version.reference} downloaded with sha256 {actual}, but the registry records "
            f"{version.sha256}: the bytes were damaged on the way (try again)", response=response,
            detail={"expected": version.sha256, "got": actual})
    return CheckpointFile(version.name, version.version, actual, data)


def _alias(name: str, alias: str, version: int) -> RequestOptions:
    return RequestOptions("PUT", f"{BASE}/{segment(name)}/aliases/{segment(alias)}", json={"version": version})


class Optimizers(SyncResource):
    def list(self) -> list[Optimizer]:
        return [Optimizer.from_json(o) for o in self._json(RequestOptions("GET", BASE))]

    def get(self, name: str) -> Optimizer:
        return Optimizer.from_json(self._json(RequestOptions("GET", f"{BASE}/{segment(name)}")))

    def versions(self, name: str) -> list[Version]:
        return self.get(name).versions

    def version(self, name: str, version: int) -> Version:
        return Version.from_json(self._json(RequestOptions("GET", f"{BASE}/{segment(name)}/versions/{int(version)}")))

    def resolve(self, reference: str) -> Version:
        return Version.from_json(self._json(RequestOptions("GET", f"{BASE}/resolve", params={"ref": reference})))

    def download(self, reference: str) -> CheckpointFile:
        """The checkpoint `reference` resolves to now (resolved first, so an alias moved meanwhile cannot mix
        one version's digest with another's bytes)."""
        version = self.resolve(reference)
        return _checked(version, self._client.send(_checkpoint(version)))

    def upload(self, name: str, checkpoint: bytes | str | Path, *, config: dict[str, Any] | None = None) -> Version:
        """Register a checkpoint (safetensors bytes or a file) as the next version of `name`. `config` is for
        a bare safetensors file whose metadata carries none."""
        return Version.from_json(self._json(_upload(name, checkpoint, config)))

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return Alias.from_json(self._json(_alias(name, alias, version)))

    def delete_alias(self, name: str, alias: str) -> None:
        self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/aliases/{segment(alias)}"))

    def delete_version(self, name: str, version: int) -> None:
        self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/versions/{int(version)}"))

    def _json(self, options: RequestOptions) -> Any:
        return self._client.json_of(self._client.send(options))


class AsyncOptimizers(AsyncResource):
    async def list(self) -> list[Optimizer]:
        return [Optimizer.from_json(o) for o in await self._json(RequestOptions("GET", BASE))]

    async def get(self, name: str) -> Optimizer:
        return Optimizer.from_json(await self._json(RequestOptions("GET", f"{BASE}/{segment(name)}")))

    async def versions(self, name: str) -> list[Version]:
        return (await self.get(name)).versions

    async def version(self, name: str, version: int) -> Version:
        return Version.from_json(await self._json(
            RequestOptions("GET", f"{BASE}/{segment(name)}/versions/{int(version)}")))

    async def resolve(self, reference: str) -> Version:
        return Version.from_json(await self._json(RequestOptions("GET", f"{BASE}/resolve", params={"ref": reference})))

    async def download(self, reference: str) -> CheckpointFile:
        version = await self.resolve(reference)
        return _checked(version, await self._client.send(_checkpoint(version)))

    async def upload(self, name: str, checkpoint: bytes | str | Path, *,
                     config: dict[str, Any] | None = None) -> Version:
        return Version.from_json(await self._json(_upload(name, checkpoint, config)))

    async def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return Alias.from_json(await self._json(_alias(name, alias, version)))

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/aliases/{segment(alias)}"))

    async def delete_version(self, name: str, version: int) -> None:
        await self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/versions/{int(version)}"))

    async def _json(self, options: RequestOptions) -> Any:
        return self._client.json_of(await self._client.send(options))
