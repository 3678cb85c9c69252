"""Package layout that pyproject.toml cannot express alone: each service lives in its own
top-level folder (services/<name>/) and installs as voltana.services.<name>."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["voltana", "voltana.*"]),
        "voltana.services",
        *(f"voltana.services.{name}" for name in find_packages("services")),
    ],
    package_dir={"voltana.services": "services"},
)
