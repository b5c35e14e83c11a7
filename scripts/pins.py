"""What a pyproject extra needs, resolved through the installed packages' metadata, each pinned to its installed version.

The environment `make setup` builds (what the tests run in) is the one truth: scripts/gpu_wheels.py carries these
pins to the GPU machine, scripts/serve_lock.py writes them as the serving image's lock.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def target_environment(python_version: str, extra: str = "") -> dict[str, str]:
    """PEP 508 marker values of CPython ``python_version`` on Linux x86-64 (the device), not of this machine."""
    return {
        "python_version": python_version, "python_full_version": f"{python_version}.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
        "platform_machine": "x86_64", "os_name": "posix", "implementation_version": f"{python_version}.0", "extra": extra,
    }


def applies(requirement: Requirement, python_version: str, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate(target_environment(python_version, extra)) for extra in extras | {""})


def resolve(pyproject: dict, extra: str, python_version: str, leave_out: set[str] = frozenset()) -> dict[str, str]:
    """{distribution name: installed version} of everything pyproject's ``extra`` needs on the target, ``leave_out`` (and
    what only they need) left out."""
    project = pyproject["project"]
    own = canonicalize_name(project["name"])
    extras = project["optional-dependencies"]
    if extra not in extras:
        raise SystemExit(f"pyproject.toml has no [project.optional-dependencies] {extra}")
    pending = [Requirement(r) for r in extras[extra]]
    wanted: dict[str, set[str]] = {}  # distribution -> extras already followed
    pins: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name == own:  # "elunet[serve]": the project's dependencies and those extras, from pyproject itself
            pending += [Requirement(r) for r in project["dependencies"]]
            pending += [Requirement(r) for extra in requirement.extras for r in extras[extra]]
            continue
        if name in leave_out:
            continue
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement} is needed but not installed in {sys.prefix}, whose versions the wheels are "
                             "pinned to: run `make setup` (or pip install the missing package) first") from None
        if version not in requirement.specifier:
            raise SystemExit(f"{requirement} is needed but {name} {version} is installed in {sys.prefix}: "
                             "reinstall it (make setup) so the device runs a version the requirement allows")
        followed = wanted.setdefault(name, set())
        new_extras = set(requirement.extras) - followed
        if name in pins and not new_extras:
            continue
        pins[name] = version
        followed |= set(requirement.extras)
        for line in metadata.requires(name) or []:
            dependency = Requirement(line)
            if applies(dependency, python_version, followed):
                pending.append(dependency)
    return pins
