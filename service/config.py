"""Settings: every knob of the service, each read from an `L2O_`-prefixed environment variable.

    L2O_DATA_DIR          where the embedded database and the admin key live
                          (default: $XDG_DATA_HOME/l2o, else ~/.local/share/l2o)
    L2O_DATABASE_URL      SQLAlchemy URL; unset means the embedded SQLite file <data_dir>/l2o.db.
                          PostgreSQL: postgresql+psycopg://user:pass@host:5432/dbname
    L2O_PRETRAINED_DIR    folders of shipped checkpoints registered at start (default: service/pretrained)
    L2O_REGISTER_PRETRAINED  register those checkpoints at start (default: true)
    L2O_HOST, L2O_PORT    where `l2o serve` listens (default: 127.0.0.1:8000)
    L2O_WORKERS           uvicorn worker processes for `l2o serve` (default: 1; more than 1 needs the Redis store)
    L2O_MAX_UPLOAD_BYTES  largest checkpoint upload accepted, else 413 (default: 64 MiB)
    L2O_LOG_LEVEL         logging level for `l2o serve` (default: info)
    L2O_SESSION_STORE     where session state lives: `memory` (default; saved to <data_dir>/sessions.safetensors
                          on graceful shutdown, loaded on start) or redis://host:6379/0 (shared by every process)
    L2O_SESSION_KEY_PREFIX   prefix of every Redis key the session store writes (default: l2o:)
    L2O_SESSION_IDLE_TIMEOUT_S  a session with no step for this long expires (default: 3600)
    L2O_SESSION_MAX_COORDS      most coordinates (parameter entries) in one session (default: 1000000)
    L2O_SESSION_MAX_PER_KEY     most live sessions one API key may hold (default: 16)
    L2O_SESSION_MAX_STATE_BYTES most bytes held for all sessions together: LSTM state, and each session's
                          parameter names and shapes (default: 2 GiB)
    L2O_SESSION_MAX_BYTES_PER_KEY  most bytes one key's sessions may hold together, counted so (default: 1 GiB)
    L2O_SESSION_MAX_PARAMETERS  most parameters (named tensors) in one session (default: 10000)
    L2O_SESSION_MAX_NAME_BYTES  most bytes of parameter names in one session, all together (default: 1 MiB)
    L2O_SESSION_MAX_SHAPE_ENTRIES  most dimensions in one session's shapes, all together (default: 65536)
    L2O_STEP_MAX_BODY_BYTES     largest step request body accepted, else 413 (default: 64 MiB)
    L2O_STEP_DEVICE       torch device steps run on: `cpu` (default), `cuda`, `cuda:N`, or `auto` (cuda when
                          available); the memory store keeps session states in that device's memory, Redis on
                          the host (they cross to the GPU and back at each step)
    L2O_KERNEL            the CPU step: `auto` (default: the native operator, built at start-up, where a C++
                          compiler is present, else torch), `native` (fail to start without it) or `torch`
    L2O_MAX_BODY_BYTES    largest body of any other request (JSON specs: keys, aliases, jobs), else 413 (default: 1 MiB)
    L2O_HEADER_TIMEOUT_S  a request's header must arrive in full within this many seconds of its first byte, else
                          408 and the connection is closed (default: 10)
    L2O_BODY_TIMEOUT_S    a request body that sends nothing for this many seconds is answered 408 and its
                          connection closed (default: 30)
    L2O_RATE_LIMIT_PER_S  requests per second each API key may make on average, else 429 with Retry-After
                          (default: 0, no limit); counted per process with the memory store, in Redis with Redis
    L2O_RATE_LIMIT_BURST  requests a key may make at once before the average applies (default: 0, meaning the
                          rate rounded up, at least 1)
    L2O_AUTH_GRACE_S      while the database is unreachable, a key checked valid within this many seconds keeps
                          working, so live sessions keep stepping (default: 300; 0: every request needs the database)
    L2O_JOB_EXECUTOR      who runs meta-training jobs: `auto` (default: `embedded` on SQLite, `procrastinate` on
                          PostgreSQL), `embedded` (the API process starts each job in a process of its own, one
                          at a time) or
                          `procrastinate` (the PostgreSQL task queue; `l2o worker` processes run the jobs)
    L2O_JOB_DEVICE        torch device jobs train on: `auto` (default: cuda when available, else cpu), cpu, cuda, cuda:N
    L2O_JOB_LEASE_S       a job whose worker sent no heartbeat for this long is taken over and resumed (default: 30)
    L2O_JOB_MAX_ATTEMPTS  a job started this many times without finishing is marked failed (default: 5)
    L2O_JOB_POLL_S        how often idle workers look for jobs and job event streams look for progress (default: 1)
    L2O_WORKER_CONCURRENCY  jobs one `l2o worker` process runs at once (default: 1)
    L2O_EVENTS_MAX_PER_KEY  job event streams one API key may hold open at once, per API process, else 429 (default: 8)
    L2O_EVENTS_MAX_TOTAL    job event streams open at once in all, per API process, else 429 (default: 256)
    L2O_EVENTS_IDLE_TIMEOUT_S  an event stream whose job did not change for this long ends; clients reconnect
                          (default: 300)
    L2O_JOB_MAX_MEMORY_BYTES  address-space cap of each job's process (every job runs in one of its own); a job
                          past it fails saying so, and a spec estimated to need more is refused with 422
                          (default: 4 GiB; 0: no cap and no memory check; not applied on CUDA devices)
    L2O_JOB_MAX_FLOPS     a spec estimated to need more floating-point operations (training and evaluation) is
                          refused with 422 (default: 1e15, about a day of one CPU core; 0: no check)
    L2O_JOB_STOP_GRACE_S  how long a job's process has to honour a cancel or a stop before it is killed; the job
                          is then cancelled, or handed back from its last resume checkpoint (default: 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from client._base import default_data_dir  # one definition: the SDK finds the embedded server's key there

PACKAGE_DIR = Path(__file__).resolve().parent
ADMIN_KEY_FILE = "admin.key"
DATABASE_FILE = "l2o.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="L2O_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    pretrained_dir: Path = PACKAGE_DIR / "pretrained"
    register_pretrained: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    log_level: str = "info"
    session_store: str = "memory"
    session_key_prefix: str = "l2o:"
    session_idle_timeout_s: float = Field(default=3600.0, gt=0)
    session_max_coords: int = Field(default=1_000_000, ge=1)
    session_max_per_key: int = Field(default=16, ge=1)
    session_max_state_bytes: int = Field(default=2 * 1024**3, ge=1)
    session_max_bytes_per_key: int = Field(default=1024**3, ge=1)
    session_max_parameters: int = Field(default=10_000, ge=1)
    session_max_name_bytes: int = Field(default=1024**2, ge=1)
    session_max_shape_entries: int = Field(default=65_536, ge=1)
    step_max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    kernel: Literal["auto", "native", "torch"] = "auto"
    step_device: str = Field(default="cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=0, ge=0)
    auth_grace_s: float = Field(default=300.0, ge=0)
    job_executor: Literal["auto", "embedded", "procrastinate"] = "auto"
    job_device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    job_lease_s: float = Field(default=30.0, gt=0)
    job_max_attempts: int = Field(default=5, ge=1)
    job_poll_s: float = Field(default=1.0, gt=0)
    worker_concurrency: int = Field(default=1, ge=1)
    events_max_per_key: int = Field(default=8, ge=1)
    events_max_total: int = Field(default=256, ge=1)
    events_idle_timeout_s: float = Field(default=300.0, gt=0)
    job_max_memory_bytes: int = Field(default=4 * 1024**3, ge=0)
    job_max_flops: float = Field(default=1e15, ge=0)
    job_stop_grace_s: float = Field(default=3.0, gt=0, le=10)

    @field_validator("data_dir", "pretrained_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def embedded(self) -> bool:
        """True when no database was configured: the SQLite file in the data directory is used."""
        return self.database_url is None

    @property
    def db_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.data_dir / DATABASE_FILE}"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / ADMIN_KEY_FILE
