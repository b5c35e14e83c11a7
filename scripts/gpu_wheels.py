"""Download every wheel scripts/gpu_check.sh needs into one folder, for the lent GPU machine (no network there).

    make gpu-wheels        # runs: python scripts/gpu_wheels.py --dest .whl

What to carry is pyproject.toml's ``gpu-check`` extra, one source of truth: it is resolved through the
dependency metadata of the packages installed in the Python running this script (the environment
`make test` runs in), each pinned to its installed version so the device runs what the tests ran, minus
the packages the device image already has (``--image``; their own dependencies are not followed
either). The wheels are for ``--python-version`` (3.12) on manylinux x86-64, downloaded without
dependencies (the resolution above is the dependency list). Wheels in the folder that are no longer
wanted are removed; the folder's size is printed and must stay under ``--max-mib`` (what a device run
carries, all files together).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pins import resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTRA = "gpu-check"
# The lent machine's image: PyTorch (CUDA build), numpy, onnxruntime (CPU) and nvcc, which is no Python package.
IMAGE_PACKAGES = ("torch", "numpy", "onnxruntime")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def download(pins: dict[str, str], dest: Path, python_version: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(dest),
               *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    if subprocess.run(command).returncode != 0:
        raise SystemExit("pip could not download every wheel (see above): each pin needs a wheel for "
                         f"CPython {python_version} on manylinux x86-64 or a py3-none-any one")


def wheels_by_name(dest: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for wheel in dest.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found.setdefault(f"{name}=={version}", []).append(wheel)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--python-version", default="3.12", help="the device's Python (major.minor)")
    parser.add_argument("--image", nargs="*", default=list(IMAGE_PACKAGES), help="packages the device image already has")
    parser.add_argument("--max-mib", type=float, default=64.0, help="what a device run may carry, all files together")
    args = parser.parse_args()

    pins = resolve(tomllib.loads((ROOT / "pyproject.toml").read_text()), EXTRA, args.python_version,
                   {canonicalize_name(n) for n in args.image})
    wanted = {f"{name}=={version}" for name, version in pins.items()}
    args.dest.mkdir(exist_ok=True)
    for key, wheels in wheels_by_name(args.dest).items():
        if key not in wanted:
            for wheel in wheels:
                wheel.unlink()
    download(pins, args.dest, args.python_version)
    have = wheels_by_name(args.dest)
    missing = sorted(wanted - set(have))
    if missing:
        raise SystemExit(f"no wheel in {args.dest} for: {', '.join(missing)}")
    total = 0
    for key in sorted(wanted):
        for wheel in have[key]:
            size = wheel.stat().st_size
            total += size
            print(f"{size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{len(wanted)} distributions, {total / 2**20:.1f} MiB in {args.dest} (limit {args.max_mib:g} MiB; "
          f"left out, the image's: {', '.join(args.image)})")
    if total > args.max_mib * 2**20:
        print(f"{args.dest} is over {args.max_mib:g} MiB: the device run cannot carry it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
