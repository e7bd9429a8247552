"""What the server does on start so that a new user can open a session at once: an admin key for the
embedded default, and the pretrained optimizers shipped in service/pretrained/<name>/ registered."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from service.errors import L2OError
from service.lopt import Checkpoint, CheckpointError
from service.lopt.checkpoint import WEIGHTS_FILE
from service.registry import keys, repository
from service.registry import service as registry
from service.registry.db import Database
from service.registry.names import NAME_RE

log = logging.getLogger(__name__)


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only; the mode is set before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_admin_key(db: Database, path: Path) -> Path | None:
    """Create an all-scopes key and write it to `path` when the database has no live key. Returns the
    path when it wrote one. The key itself is never logged."""
    with db.session() as session:
        if repository.count_live_keys(session) > 0:
            return None
        _, key = keys.create_key(session, "admin (created on first start)", keys.SCOPES)
        write_secret(path, key + "\n")
        session.commit()
    log.warning("created an admin API key; it is in %s (readable only by you)", path)
    return path


def read_evaluation(folder: Path) -> dict | None:
    """The evaluation report `l2o train` wrote beside the checkpoint, when there is one."""
    path = folder / "evaluation.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        log.error("ignoring %s: not valid JSON (%s)", path, exc)
        return None
    return report if isinstance(report, dict) else None


def register_pretrained(db: Database, directory: Path) -> list[str]:
    """Register each <directory>/<name>/ checkpoint whose bytes are not yet a version of <name>.
    Returns the references registered. A broken folder is logged and skipped, never fatal."""
    registered: list[str] = []
    if not directory.is_dir():
        return registered
    for folder in sorted(p for p in directory.iterdir() if (p / WEIGHTS_FILE).is_file()):
        if not NAME_RE.match(folder.name):
            log.error("skipping pretrained folder %s: %r is not a valid optimizer name", folder, folder.name)
            continue
        try:
            Checkpoint.load(folder)  # checks config.json's digest against the weights file
            data = (folder / WEIGHTS_FILE).read_bytes()
            evaluation = read_evaluation(folder)
            with db.session() as session:
                version = registry.register_if_new(session, folder.name, data, source="pretrained",
                                                   evaluation=evaluation)
                reference = version.reference if version is not None else None
                session.commit()
        except (CheckpointError, L2OError) as exc:
            log.error("skipping pretrained checkpoint %s: %s", folder, exc)
            continue
        except IntegrityError:
            continue  # another worker process registered it at the same moment
        if reference is not None:
            registered.append(reference)
            log.info("registered pretrained optimizer %s", reference)
    return registered
