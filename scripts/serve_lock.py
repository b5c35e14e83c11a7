"""Write deploy/serve.lock: every package the serve extra needs, at the version the tests ran with.

    python scripts/serve_lock.py           # after `make setup`, when a serving dependency changed
    python scripts/serve_lock.py --check   # exit 1 if the lock differs from the installed versions

pyproject.toml bounds each serving dependency to the minor releases CI tests; this lock pins them exactly,
with what they need, for CPython 3.12 on Linux x86-64 (the images' Python). `make setup` installs with it
as a constraint, and so do the images (deploy/install-serve.sh): the server that ships is the one tested.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from pins import resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "deploy" / "serve.lock"
HEADER = "# Written by scripts/serve_lock.py from the versions `make setup` installed; a pip constraints file.\n"


def lock_text() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # What the serving image installs: elunet's own dependencies and its serve extra.
    pyproject["project"]["optional-dependencies"]["image"] = [f"{pyproject['project']['name']}[serve]"]
    pins = resolve(pyproject, "image", "3.12")
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = lock_text()
    if args.check:
        if LOCK.read_text() != text:
            print(f"{LOCK} differs from the installed versions: run python scripts/serve_lock.py", file=sys.stderr)
            return 1
        return 0
    LOCK.write_text(text)
    print(f"{LOCK}: {text.count(chr(10)) - 1} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
