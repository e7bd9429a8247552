"""`client.optimizers`: the registry. Names hold immutable numbered versions; a reference is `name` (the
newest), `name:3` or `name@alias`.

    l2o.optimizers.list()                          every optimizer (q="quad", tags={"stage": "prod"} to search)
    l2o.optimizers.get("lstm")                     one, with its versions and aliases
    l2o.optimizers.versions("lstm")                its versions
    l2o.optimizers.version("lstm", 3)              one version: config, digest, evaluation report
    l2o.optimizers.resolve("lstm@prod")            the version a reference points to
    l2o.optimizers.download("lstm@prod")           its checkpoint bytes, checked against their digest
    l2o.optimizers.upload("lstm", "weights.safetensors")       a new version (admin)
    l2o.optimizers.set_alias("lstm", "prod", 3)    (admin)
    l2o.optimizers.update("lstm", description=..., tags={"stage": "prod", "old": None})   a merge patch
    l2o.optimizers.update_version("lstm", 3, description=..., tags=...)    (the name's creator, or admin)
    l2o.optimizers.evaluate("lstm", 3)              a job that evaluates it and attaches the report
    l2o.optimizers.delete("lstm")                   the name and every version (admin)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from client import _constants as c
from client._base import RequestOptions
from client._exceptions import DigestMismatchError
from client.resources._resource import AsyncResource, SyncResource, segment
from client.types import Alias, CheckpointFile, Job, Optimizer, Version, sha256_hex

BASE = "/v1/optimizers"
_UNSET: Any = object()


def _upload(name: str, checkpoint: bytes | str | Path, config: dict[str, Any] | None,
            metadata: dict[str, Any]) -> RequestOptions:
    data = checkpoint if isinstance(checkpoint, bytes | bytearray) else Path(checkpoint).read_bytes()
    # The digest rides along so the server refuses bytes damaged on the way.
    headers = {c.DIGEST_HEADER: sha256_hex(bytes(data))}
    if config is not None:
        headers[c.CONFIG_HEADER] = json.dumps(config, separators=(",", ":"))
    url = f"{BASE}/{segment(name)}/versions"
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if not metadata:
        return RequestOptions("POST", url, content=bytes(data),
                              headers={**headers, "Content-Type": "application/octet-stream"})
    # With metadata the upload is JSON: the checkpoint in base64 beside it.
    body = {"checkpoint": base64.b64encode(bytes(data)).decode("ascii"), **metadata}
    return RequestOptions("POST", url, json=body, headers=headers)


def _upload_metadata(description: str | None, tags: Mapping[str, str] | None, evaluation: Any,
                     optimizer_description: str | None, optimizer_tags: Mapping[str, str] | None) -> dict[str, Any]:
    """`evaluation`: a report (dict) or the path of an evaluation.json (what `l2o train` writes)."""
    if isinstance(evaluation, str | Path):
        evaluation = json.loads(Path(evaluation).read_text())
    name = {k: v for k, v in (("description", optimizer_description),
                              ("tags", dict(optimizer_tags) if optimizer_tags else None)) if v is not None}
    return {"description": description, "tags": dict(tags) if tags else None, "evaluation": evaluation,
            "optimizer": name or None}


def _patch(url: str, description: Any, tags: Mapping[str, str | None] | None) -> RequestOptions:
    body: dict[str, Any] = {}
    if description is not _UNSET:
        body["description"] = description
    if tags is not None:
        body["tags"] = dict(tags)
    # A merge patch of given values: sent twice, it leaves the same result.
    return RequestOptions("PATCH", url, json=body, idempotent=True)


def _list(q: str | None, tags: Mapping[str, str | None] | None, limit: int | None) -> RequestOptions:
    params: dict[str, Any] = {}
    if q:
        params["q"] = q
    if tags:
        params["tag"] = [k if v is None else f"{k}:{v}" for k, v in tags.items()]
    if limit is not None:
        params["limit"] = limit
    return RequestOptions("GET", BASE, params=params)


def _next_page(response: httpx.Response) -> RequestOptions | None:
    """The request for the page after this one, from its `Link: <...>; rel="next"` header, if any."""
    following = response.links.get("next")
    if following is None:
        return None
    url = httpx.URL(following["url"])
    return RequestOptions("GET", BASE, params=list(url.params.multi_items()))


def _evaluate(name: str, version: int, family: dict[str, Any] | None,
              evaluation: dict[str, Any] | None) -> RequestOptions:
    body: dict[str, Any] = {}
    if family is not None:
        body["family"] = family
    if evaluation is not None:
        body["evaluation"] = evaluation
    return RequestOptions("POST", f"{BASE}/{segment(name)}/versions/{int(version)}/evaluate", json=body)


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
    def list(self, *, q: str | None = None, tags: Mapping[str, str | None] | None = None,
             page_size: int | None = None) -> list[Optimizer]:
        """Every optimizer, or those whose name contains `q` and that hold every tag of `tags` (a value of
        None: the key with any value). The server answers a page at a time (`page_size` names at most, up to
        100); this follows the pages."""
        out, options = [], _list(q, tags, page_size)
        while options is not None:
            response = self._client.send(options)
            out += [Optimizer.from_json(o) for o in self._client.json_of(response)]
            options = _next_page(response)
        return out

    def update(self, name: str, *, description: str | None = _UNSET,
               tags: Mapping[str, str | None] | None = None) -> Optimizer:
        """Set (or with None clear) the name's description; set the given tags, removing those given as None."""
        return Optimizer.from_json(self._json(_patch(f"{BASE}/{segment(name)}", description, tags)))

    def update_version(self, name: str, version: int, *, description: str | None = _UNSET,
                       tags: Mapping[str, str | None] | None = None) -> Version:
        return Version.from_json(self._json(
            _patch(f"{BASE}/{segment(name)}/versions/{int(version)}", description, tags)))

    def evaluate(self, name: str, version: int, *, family: dict[str, Any] | None = None,
                 evaluation: dict[str, Any] | None = None) -> Job:
        """Queue a job that evaluates the version (on the family it was trained on unless `family` is given)
        and attaches the report to it; follow it with `client.jobs.wait(job.id)`."""
        return Job.from_json(self._json(_evaluate(name, version, family, evaluation)))

    def delete(self, name: str) -> None:
        """Delete the name with every version, alias and tag (admin)."""
        self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}"))

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

    def upload(self, name: str, checkpoint: bytes | str | Path, *, config: dict[str, Any] | None = None,
               description: str | None = None, tags: Mapping[str, str] | None = None,
               evaluation: dict[str, Any] | str | Path | None = None, optimizer_description: str | None = None,
               optimizer_tags: Mapping[str, str] | None = None) -> Version:
        """Register a checkpoint (safetensors bytes or a file) as the next version of `name`. `config` is for
        a bare safetensors file whose metadata carries none. `description`, `tags` and `evaluation` (a report,
        or the path of an evaluation.json) are the version's; `optimizer_description` and `optimizer_tags`
        are merged into the name's."""
        metadata = _upload_metadata(description, tags, evaluation, optimizer_description, optimizer_tags)
        return Version.from_json(self._json(_upload(name, checkpoint, config, metadata)))

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return Alias.from_json(self._json(_alias(name, alias, version)))

    def delete_alias(self, name: str, alias: str) -> None:
        self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/aliases/{segment(alias)}"))

    def delete_version(self, name: str, version: int) -> None:
        self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/versions/{int(version)}"))

    def _json(self, options: RequestOptions) -> Any:
        return self._client.json_of(self._client.send(options))


class AsyncOptimizers(AsyncResource):
    async def list(self, *, q: str | None = None, tags: Mapping[str, str | None] | None = None,
                   page_size: int | None = None) -> list[Optimizer]:
        out, options = [], _list(q, tags, page_size)
        while options is not None:
            response = await self._client.send(options)
            out += [Optimizer.from_json(o) for o in self._client.json_of(response)]
            options = _next_page(response)
        return out

    async def update(self, name: str, *, description: str | None = _UNSET,
                     tags: Mapping[str, str | None] | None = None) -> Optimizer:
        return Optimizer.from_json(await self._json(_patch(f"{BASE}/{segment(name)}", description, tags)))

    async def update_version(self, name: str, version: int, *, description: str | None = _UNSET,
                             tags: Mapping[str, str | None] | None = None) -> Version:
        return Version.from_json(await self._json(
            _patch(f"{BASE}/{segment(name)}/versions/{int(version)}", description, tags)))

    async def evaluate(self, name: str, version: int, *, family: dict[str, Any] | None = None,
                       evaluation: dict[str, Any] | None = None) -> Job:
        return Job.from_json(await self._json(_evaluate(name, version, family, evaluation)))

    async def delete(self, name: str) -> None:
        await self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}"))

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

    async def upload(self, name: str, checkpoint: bytes | str | Path, *, config: dict[str, Any] | None = None,
                     description: str | None = None, tags: Mapping[str, str] | None = None,
                     evaluation: dict[str, Any] | str | Path | None = None,
                     optimizer_description: str | None = None,
                     optimizer_tags: Mapping[str, str] | None = None) -> Version:
        metadata = _upload_metadata(description, tags, evaluation, optimizer_description, optimizer_tags)
        return Version.from_json(await self._json(_upload(name, checkpoint, config, metadata)))

    async def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return Alias.from_json(await self._json(_alias(name, alias, version)))

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/aliases/{segment(alias)}"))

    async def delete_version(self, name: str, version: int) -> None:
        await self._client.send(RequestOptions("DELETE", f"{BASE}/{segment(name)}/versions/{int(version)}"))

    async def _json(self, options: RequestOptions) -> Any:
        return self._client.json_of(await self._client.send(options))
