"""The deployment files, checked without a Docker engine: docker-compose.yml against the Compose
Specification's JSON schema (the copy check-jsonschema vendors, so no download at test time), every
setting it gives our services against Settings, every command against the `l2o` parser, and the Dockerfile's
promises (one image, a CUDA base by build argument, torch pinned and installed first)."""

from __future__ import annotations

import json
import os
import re
import shlex
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from service.cli import build_parser
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OUR_IMAGE = "l2o:latest"


@pytest.fixture(scope="module")
def compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())  # the safe loader resolves the `<<` merge keys


@pytest.fixture(scope="module")
def ours(compose) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == OUR_IMAGE}


def compose_schema() -> dict:
    return json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def test_the_compose_file_is_valid_against_the_compose_specification(compose):
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose):
    validator = jsonschema.validators.validator_for(compose_schema())(compose_schema())
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["healthcheck"]["disabled"] = True
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_variable_set_for_our_services_is_a_real_setting_with_a_valid_value(ours, monkeypatch):
    assert set(ours) == {"migrate", "api", "worker"}
    fields = {f"L2O_{name.upper()}" for name in Settings.model_fields}
    for name, service in ours.items():
        env = environment(service)
        assert env, f"{name} sets no environment"
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{name} sets {unknown}, which are not settings (service/config.py)"
        for key in list(os.environ):
            if key.startswith("L2O_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # each value parses and passes its field's checks
        assert settings.database_url.startswith("postgresql+psycopg://") and not settings.embedded
    assert environment(ours["api"])["L2O_SESSION_STORE"].startswith("redis://")


def test_every_command_is_an_l2o_command_and_migrations_run_first(ours, compose):
    parser = build_parser()
    commands = {name: svc["command"] for name, svc in ours.items()}
    assert commands["migrate"][:3] == ["l2o", "db", "upgrade"]
    assert commands["api"][:2] == ["l2o", "serve"] and commands["worker"][:2] == ["l2o", "worker"]
    for name, command in commands.items():
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown command or option
        assert callable(args.func), name
    for name in ("api", "worker"):
        assert ours[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert ours[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ours["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_health_checks_use_routes_the_app_serves(compose):
    from service.api.health import router

    paths = {route.path for route in router.routes}
    assert {"/healthz", "/readyz"} <= paths
    for name in ("postgres", "redis", "api"):
        assert compose["services"][name]["healthcheck"]["test"], name
    probe = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert re.search(r"127\.0\.0\.1:8000(/\w+)", probe).group(1) in paths
    docker_probe = re.search(r"HEALTHCHECK .*?127\.0\.0\.1:8000(/\w+)", DOCKERFILE.read_text(), re.S).group(1)
    assert docker_probe in paths


def test_the_gpu_reservation_sits_commented_in_the_worker():
    text = COMPOSE.read_text()
    worker = text[text.index("\n  worker:"):text.index("\nvolumes:")]
    commented = "\n".join(line.strip()[1:].strip() for line in worker.splitlines() if line.strip().startswith("#"))
    assert "driver: nvidia" in commented and "capabilities: [gpu]" in commented
    assert "BASE_IMAGE: nvidia/cuda" in commented


def test_the_dockerfile_is_one_image_with_a_cuda_base_argument_and_torch_pinned_first():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=python:3.11") and lines[1] == "FROM ${BASE_IMAGE}"
    assert sum(line.startswith("FROM ") for line in lines) == 1
    assert "ARG TORCH_VERSION=2.13.0" in lines and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    torch_at = next(i for i, line in enumerate(lines) if 'pip install "torch==${TORCH_VERSION}"' in line)
    project_at = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install -e ."))
    assert torch_at < project_at
    # The last CMD is the image's (the other is the HEALTHCHECK's, on its continuation line).
    cmd = json.loads([line for line in lines if line.startswith("CMD ")][-1][4:])
    assert build_parser().parse_args(cmd[1:]).command == "serve"
    copied = {shlex.split(line)[1] for line in lines if line.startswith("COPY ")}
    assert {"service", "client", "migrations"} <= copied  # migrations/ must sit beside the package
