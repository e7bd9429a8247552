"""The one thing pyproject.toml cannot say: migrations/ stays at the repository root, and a wheel carries it
as the package service.migrations (service/registry/migrate.py looks in both places)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["service", "service.*", "client", "client.*"]),
                "service.migrations", "service.migrations.versions"],
      package_dir={"service.migrations": "migrations"})
