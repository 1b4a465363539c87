"""The versions of kdtune and the libraries a sweep's numbers depend on, read from the
installed packages' metadata (nothing is imported)."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: Packages whose versions a sweep records (tag ``kdtune.versions``) and a report shows.
RECORDED_PACKAGES = ("kdtune", "torch", "ray", "optuna", "mlflow")


def package_versions(packages: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """``{package: version}``; a package that is not installed reads ``"not installed"``."""
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_sha() -> str:
    """The commit of the kdtune checkout in use, or ``unknown`` (an installed wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
