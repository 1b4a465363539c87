"""The cache of shared environments (``~/.cache/kdtune/venv-<hash>``): who uses which, and
which can go.

    python scripts/venv_cache.py CACHE_ROOT SHARED_ENV CLONE

records CLONE as a user of SHARED_ENV, then removes every cached environment that no clone
uses any more, except the newest such one (a clone checked out again at other pins finds
it). A clone uses an environment while its ``.venv/kdtune-shared`` names it; a deleted clone,
or one whose ``.venv`` moved to other pins, no longer does. The standard library only: it
runs under the shared environment's Python before anything is imported from it.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

USERS = "users"  # a folder in each shared environment: one file per clone, holding its path
MARKER = Path(".venv") / "kdtune-shared"  # in a clone: the shared environment it uses


def record_user(env: Path, clone: Path) -> None:
    users = env / USERS
    users.mkdir(exist_ok=True)
    key = hashlib.sha256(str(clone).encode()).hexdigest()[:16]
    (users / key).write_text(str(clone))


def live_users(env: Path) -> list[Path]:
    """The clones whose ``.venv`` uses ``env`` now."""
    folder = env / USERS
    if not folder.is_dir():
        return []
    clones = []
    for entry in folder.iterdir():
        clone = Path(entry.read_text().strip())
        try:
            uses = (clone / MARKER).read_text().strip() == str(env)
        except OSError:
            uses = False
        if uses:
            clones.append(clone)
        else:
            entry.unlink(missing_ok=True)
    return clones


def prune(root: Path, current: Path) -> list[Path]:
    """Remove the environments under ``root`` no clone uses, but the newest of them; return
    what was removed."""
    unused = [env for env in root.glob("venv-*")
              if env.is_dir() and env != current and not live_users(env)]
    unused.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for env in unused[1:]:
        shutil.rmtree(env, ignore_errors=True)
    return unused[1:]


def main(argv: list[str]) -> int:
    root, env, clone = (Path(a) for a in argv)
    record_user(env, clone)
    for removed in prune(root, env):
        print(f"removed the unused environment {removed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
