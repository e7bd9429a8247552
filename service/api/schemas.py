"""Request and response bodies of the registry, keys and sessions API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from service.registry.keys import Scope
from service.registry.models import Alias, ApiKey, Optimizer, OptimizerVersion
from service.registry.names import MAX_VERSION
from service.sessions.record import SessionInfo

# Ids and version numbers are the database's INTEGER, 32-bit on PostgreSQL: a larger number names nothing,
# and is refused as invalid input before it reaches a query that could not even bind it.
MAX_DB_INT = MAX_VERSION


def _plain_digits(value: Any) -> Any:
    # Pydantic reads " 1\n" as 1 (it strips whitespace): a path naming a key or a version is its digits only.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a plain decimal number")
    return value


# An id or version number in a path: digits only, within the database's INTEGER.
DbId = Annotated[int, BeforeValidator(_plain_digits)]


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    """The shape of every error response."""

    error: ErrorBody


class VersionSummary(BaseModel):
    name: str
    version: int
    reference: str = Field(description="`name:version`, usable wherever a reference is accepted")
    sha256: str
    size: int
    source: str = Field(description="upload, pretrained or job")
    job_id: str | None = Field(description="the meta-training job that made this version, if any")
    aliases: list[str]
    created_at: datetime
    description: str | None
    tags: dict[str, str]

    @classmethod
    def of(cls, v: OptimizerVersion) -> VersionSummary:
        return cls(name=v.optimizer.name, version=v.version, reference=v.reference, sha256=v.sha256, size=v.size,
                   source=v.source, job_id=v.job_id, aliases=[a.name for a in v.aliases], created_at=v.created_at,
                   description=v.description, tags=v.tags)


class VersionDetail(VersionSummary):
    config: dict[str, Any]
    evaluation: dict[str, Any] | None

    @classmethod
    def of(cls, v: OptimizerVersion) -> VersionDetail:
        return cls(**VersionSummary.of(v).model_dump(), config=v.config, evaluation=v.evaluation)


class OptimizerSummary(BaseModel):
    name: str
    latest_version: int | None
    version_count: int
    aliases: dict[str, int]
    created_at: datetime
    description: str | None
    tags: dict[str, str]

    @classmethod
    def of(cls, o: Optimizer) -> OptimizerSummary:
        return cls(name=o.name, latest_version=o.versions[-1].version if o.versions else None,
                   version_count=len(o.versions), aliases={a.name: a.target.version for a in o.aliases},
                   created_at=o.created_at, description=o.description, tags=o.tags)


class OptimizerDetail(OptimizerSummary):
    versions: list[VersionSummary]

    @classmethod
    def of(cls, o: Optimizer) -> OptimizerDetail:
        return cls(**OptimizerSummary.of(o).model_dump(), versions=[VersionSummary.of(v) for v in o.versions])


class MetadataPatch(BaseModel):
    """A JSON merge patch (RFC 7396) of a name's or a version's metadata: a field left out stays as it is,
    `"description": null` clears it, and a tag set to null is removed (service/registry/tags.py bounds both)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, description="up to 4,000 characters; null clears it")
    tags: dict[str, str | None] | None = Field(
        default=None, description="key -> value to set, or key -> null to remove; other tags are kept")


class CurveIn(BaseModel):
    mean: list[float | None] = Field(max_length=100_001)
    std: list[float | None] | None = Field(default=None, max_length=100_001)


class EvaluationIn(BaseModel):
    """An evaluation report (service.metatrain.EvaluationReport.to_dict(), what `l2o train` writes to
    evaluation.json): its curves are checked, since the dashboard draws them; other fields are kept."""

    model_config = ConfigDict(extra="allow")

    curves: dict[str, CurveIn] = Field(min_length=1, max_length=64)


class VersionUpload(BaseModel):
    """An upload as JSON, for a checkpoint that comes with metadata: what the raw upload sends as its body
    is `checkpoint`, base64-encoded."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="the safetensors bytes, base64 (standard alphabet, padded)")
    config: dict[str, Any] | None = Field(default=None, description="for a bare safetensors file without one")
    description: str | None = Field(default=None, description="the version's description")
    tags: dict[str, str] | None = Field(default=None, description="the version's tags")
    evaluation: EvaluationIn | None = Field(default=None, description="its evaluation report")
    optimizer: MetadataPatch | None = Field(default=None, description="merged into the name's own metadata")


class AliasUpdate(BaseModel):
    version: int = Field(ge=1, le=MAX_DB_INT, description="the version number the alias should point to")


class AliasOut(BaseModel):
    name: str
    alias: str
    version: int
    reference: str
    updated_at: datetime

    @classmethod
    def of(cls, a: Alias) -> AliasOut:
        return cls(name=a.optimizer.name, alias=a.name, version=a.target.version,
                   reference=f"{a.optimizer.name}@{a.name}", updated_at=a.updated_at)


# A label shown in lists, logs and the dashboard: printable text, no control characters (line breaks
# included), so it can never split a log line or a header.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=PRINTABLE)
    scopes: list[Scope] = Field(min_length=1)


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, k: ApiKey) -> KeyOut:
        return cls(id=k.id, name=k.name, prefix=k.prefix, scopes=k.scopes, created_at=k.created_at,
                   revoked_at=k.revoked_at)


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


# --- sessions -------------------------------------------------------------------------------------------

StrictDim = Annotated[int, Field(strict=True, ge=0)]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    optimizer: str = Field(description="`name`, `name:N` or `name@alias`; resolved once, pinned for the session")
    shapes: dict[str, list[StrictDim]] = Field(
        description="the shape of every parameter, by name: {\"fc1.weight\": [20, 64], \"fc1.bias\": [20]}")
    state_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="what the server keeps each coordinate's LSTM state in: bfloat16 or "
        "float16 halve the bytes held per coordinate (the step computes in float32 either way)")


class PinnedVersion(BaseModel):
    name: str
    version: int
    reference: str
    digest: str = Field(description="sha256 of the version's checkpoint")


class SessionOut(BaseModel):
    id: str
    optimizer: PinnedVersion
    shapes: dict[str, list[int]]
    n_coords: int
    step: int = Field(description="steps applied so far: the step number the next request must carry")
    state_bytes: int = Field(description="bytes of LSTM state the server holds for this session")
    held_bytes: int = Field(description="what the session counts against the limits: its state, and its "
                                        "parameter names and shapes")
    state_dtype: str = Field(description="what the LSTM state is kept in: float32, bfloat16 or float16")
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime = Field(description="when the session expires unless a step comes first")

    @classmethod
    def of(cls, i: SessionInfo, idle_timeout_s: float) -> SessionOut:
        def at(t: float) -> datetime:
            return datetime.fromtimestamp(t, UTC)

        return cls(id=i.id, optimizer=PinnedVersion(name=i.optimizer, version=i.version,
                                                    reference=f"{i.optimizer}:{i.version}", digest=i.digest),
                   shapes={n: list(s) for n, s in i.shapes.items()}, n_coords=i.n_coords, step=i.step,
                   state_bytes=i.nbytes, held_bytes=i.held_bytes, state_dtype=i.state_dtype,
                   created_at=at(i.created_at), last_used_at=at(i.last_used_at),
                   expires_at=at(i.last_used_at + idle_timeout_s))
