#!/usr/bin/env bash
# Make ./.venv ready: a link to a virtual environment cached outside the clone, keyed by the
# hash of pyproject.toml (the pins). Builds it on a machine with no cache, reuses it
# otherwise, keeps at most two, and (re)installs kdtune itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "kdtune needs Python 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 2
}
cache_root=${KDTUNE_VENV_CACHE:-$HOME/.cache/kdtune}
# The key is the pins alone, so editing other parts of pyproject.toml keeps the environment.
hash=$("$PY" - <<'PYEOF'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = [project["dependencies"], project.get("optional-dependencies", {}), sys.version_info[:2]]
print(hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:12])
PYEOF
)
venv="$cache_root/venv-$hash"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "building the environment in $venv (first time: a few minutes)" >&2
    rm -rf "$venv" "$venv.tmp"
    mkdir -p "$cache_root"
    "$PY" -m venv "$venv"
    log="$cache_root/install-$hash.log"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check ".[dev]" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
        echo "pip install failed; full log: $log" >&2
        rm -rf "$venv"  # an incomplete environment must not count as one to keep below
        exit 1
    fi
    "$venv/bin/python" -m pip uninstall -q -y kdtune
    touch "$venv/.complete"
    # keep this environment and the most recent other one
    for old in $(ls -1dt "$cache_root"/venv-* | tail -n +3); do rm -rf "$old"; done
fi
if [ -e .venv ] && [ ! -L .venv ]; then
    echo ".venv exists and is not the cached environment; remove it and run again" >&2
    exit 2
fi
ln -sfn "$venv" .venv
# Point the editable install at this checkout (several clones may share one environment).
here=$(pwd -P)
if [ "$(.venv/bin/python -I -c 'import kdtune, pathlib; print(pathlib.Path(kdtune.__file__).resolve().parent.parent)' 2>/dev/null)" != "$here" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
fi
