"""The deployment files, checked without a Docker engine: docker-compose.yml against the Compose
Specification's JSON schema (the copy check-jsonschema vendors, so no download at test time), every
setting it gives our services against Settings, every command against the `l2o` parser, the load
balancer's config against the API service it fronts, and the Dockerfile's promises (one image, a CUDA base
by build argument, torch pinned and installed first, a health check for either role)."""

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
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
README = (ROOT / "README.md").read_text()
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
    assert set(ours) == {"migrate", "admin-key", "api", "worker"}
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
    assert commands["admin-key"] == ["l2o", "keys", "bootstrap"]
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
    # The image's check and the worker's are `l2o health`, which asks a worker for its own heartbeat.
    docker_probe = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", DOCKERFILE.read_text(), re.S).group(1))
    worker_probe = compose["services"]["worker"]["healthcheck"]["test"]
    assert worker_probe[0] == "CMD" and "/healthz" not in " ".join(worker_probe)
    for probe in (docker_probe, worker_probe[1:]):
        assert probe[0] == "l2o" and build_parser().parse_args(probe[1:]).command == "health", probe
    assert build_parser().parse_args(worker_probe[2:]).role == "worker"


def test_the_load_balancer_fronts_every_api_replica_by_service_name_and_port(compose):
    services = compose["services"]
    lb, api = services["lb"], services["api"]
    assert re.fullmatch(r"nginx:[\w.-]+", lb["image"]), "the official nginx image"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in lb["volumes"]}
    assert mounts["./deploy/nginx.conf"] == "/etc/nginx/conf.d/default.conf"
    assert "ports" not in api, "a fixed host port on the API would stop `--scale api=N`"
    listen = int(api["command"][api["command"].index("--port") + 1])
    assert [str(p) for p in api["expose"]] == [str(listen)]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    published = [p for p in lb["ports"] if str(p).endswith(":80")]
    assert published, lb["ports"]

    conf = re.sub(r"#.*", "", NGINX_CONF.read_text())
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream, "no upstream block"
    assert re.search(rf"server\s+api:{listen}\s+resolve;", upstream.group(2)), "the upstream must name api:PORT"
    assert "zone " in upstream.group(2)  # `resolve` needs a shared zone
    assert re.search(r"resolver\s+127\.0\.0\.11", conf), "Docker's DNS, so new replicas are found"
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    assert re.search(r"listen\s+80;", conf)


def test_the_readme_says_how_to_scale_and_read_the_admin_key(compose):
    from service.config import Settings

    assert "docker compose up --scale api=3 --scale worker=2" in README
    reader = "docker compose run --rm --no-deps admin-key cat /data/admin.key"
    assert reader in README and reader in COMPOSE.read_text()
    admin = compose["services"]["admin-key"]
    assert "l2o-data:/data" in admin["volumes"] and "l2o-data" in compose["volumes"]
    assert "ENV" in DOCKERFILE.read_text() and "L2O_DATA_DIR=/data" in DOCKERFILE.read_text()
    assert Settings(data_dir="/data").admin_key_path.as_posix() == "/data/admin.key"


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
    project_at = next(i for i, line in enumerate(lines) if line.startswith('RUN pip install ".[server]"'))
    assert torch_at < project_at
    # The last CMD is the image's (the other is the HEALTHCHECK's, on its continuation line).
    cmd = json.loads([line for line in lines if line.startswith("CMD ")][-1][4:])
    assert build_parser().parse_args(cmd[1:]).command == "serve"
    copied = {source for line in lines if line.startswith("COPY ") for source in shlex.split(line)[1:-1]}
    assert {"service", "client", "migrations", "setup.py"} <= copied  # setup.py maps migrations/ into the wheel
