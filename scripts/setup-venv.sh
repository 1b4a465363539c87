#!/usr/bin/env bash
# Make ./.venv ready. The dependencies live in one environment cached outside the clone and
# keyed by the hash of the pins (~/.cache/kdtune/venv-<hash>), built on a machine with no
# cache and shared by every clone with the same pins. kdtune itself is never installed there:
# each clone's ./.venv is a small environment of its own that reaches the cached
# site-packages (a .pth that calls site.addsitedir, so the cached environment's own .pth
# files are processed too) and holds the editable install of this clone alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "kdtune needs Python 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 2
}
# ./.venv is this clone's own environment (an older layout's link to the cache is replaced)
if [ -L .venv ]; then
    rm .venv
elif [ -e .venv ] && [ ! -f .venv/kdtune-shared ]; then
    echo ".venv exists and is not kdtune's environment; remove it and run again" >&2
    exit 2
fi
cache_root=${KDTUNE_VENV_CACHE:-$HOME/.cache/kdtune}
# The key is the pins alone, so editing other parts of pyproject.toml keeps the environment.
hash=$("$PY" - <<'PYEOF'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = [project["dependencies"], project.get("optional-dependencies", {}), sys.version_info[:2]]
print(hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:12])
PYEOF
)
shared="$cache_root/venv-$hash"
here=$(pwd -P)
if [ ! -x "$shared/bin/python" ] || [ ! -f "$shared/.complete" ]; then
    echo "building the environment in $shared (first time: a few minutes)" >&2
    rm -rf "$shared"
    mkdir -p "$cache_root"
    "$PY" -m venv "$shared"
    log="$cache_root/install-$hash.log"
    # the dependencies only: kdtune is installed into each clone's own .venv below
    if ! "$shared/bin/python" - > "$log.requirements" <<'PYEOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
PYEOF
    then
        echo "could not read the pins from pyproject.toml" >&2
        exit 1
    fi
    if ! "$shared/bin/python" -m pip install --disable-pip-version-check \
            -r "$log.requirements" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
        echo "pip install failed; full log: $log" >&2
        rm -rf "$shared"  # an incomplete environment must not count as one
        exit 1
    fi
    touch "$shared/.complete"
fi
# an environment cached by an older layout may hold an editable kdtune of some other clone
if "$shared/bin/python" -m pip show -q kdtune >/dev/null 2>&1; then
    "$shared/bin/python" -m pip uninstall -q -y kdtune >/dev/null
fi
site=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f .venv/kdtune-shared ] || [ "$(cat .venv/kdtune-shared)" != "$shared" ] \
        || [ ! -x .venv/bin/python ]; then
    rm -rf .venv
    "$PY" -m venv --without-pip .venv
    own=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf 'import site; site.addsitedir(%s)\n' "'$site'" > "$own/kdtune-shared.pth"
    echo "$shared" > .venv/kdtune-shared
fi
if [ "$(.venv/bin/python -I -c 'import kdtune, pathlib; print(pathlib.Path(kdtune.__file__).resolve().parent.parent)' 2>/dev/null)" != "$here" ]; then
    log="$cache_root/install-$hash-editable.log"
    if ! .venv/bin/python -m pip install --disable-pip-version-check --no-deps \
            --no-build-isolation -e . >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "installing kdtune into .venv failed; full log: $log" >&2
        exit 1
    fi
fi
# Record this clone as a user of the shared environment, then drop cached environments that
# no clone uses any more (keeping the newest unused one besides this clone's).
"$shared/bin/python" scripts/venv_cache.py "$cache_root" "$shared" "$here"
