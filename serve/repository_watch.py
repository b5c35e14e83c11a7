"""What the model repository on disk says each model should serve, and how a change there is seen.

A model's wanted versions are those its config.pbtxt's ``version_policy``
selects of its version folders (latest N, specific, all; Triton's default: the
latest one). Each carries a fingerprint: the hashes of the version's files and
of the model's config.pbtxt and label files, so that poll mode reloads a version
exactly when one of them changed. Hashes are kept by file stamp (size, mtime,
inode), so a poll reads only the files that changed.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
from dataclasses import dataclass
from pathlib import Path

from elunet.errors import ElunetError
from elunet.files import sha256_file
from elunet.model_config import read_config
from elunet.repository import CONFIG_FILE, LABELS_FILE, ModelRepository


@dataclass
class Desired:
    """What the repository says one model should serve now."""

    config: object | None
    versions: dict[int, str]  # version -> fingerprint, as the version policy selects them
    problem: str | None = None


class RepositoryWatch:
    def __init__(self, repository: ModelRepository):
        self.repository = repository
        self._hashes: dict[Path, tuple[tuple, str]] = {}  # file -> (stat stamp, sha256), so unchanged files are not read again

    def desired(self, name: str, config_override=None) -> Desired:
        """What ``name`` should serve by the files now (blocking: run it in a thread, it hashes files).

        ``config_override``: a config given with a load request, used instead of config.pbtxt.
        """
        model_dir = self.repository.model_dir(name)
        if not model_dir.is_dir():
            return Desired(None, {}, "no such model in the repository")
        config = config_override
        if config is None and (model_dir / CONFIG_FILE).is_file():
            try:
                config = read_config(model_dir / CONFIG_FILE)
            except ElunetError as exc:
                return Desired(None, {}, f"{CONFIG_FILE}: {self.relative(exc.message)}")
        available = [v.version for v in self.repository.versions(name)]
        if not available:
            return Desired(config, {}, "no version folders (expected <model>/<integer>/)")
        chosen, problem = select_versions(config, available)
        if not chosen:
            return Desired(config, {}, problem)
        # the label files too that config.pbtxt names (a plain Triton model's label_filename), so that editing one reloads it
        named = [o.label_filename for o in config.output if o.label_filename and Path(o.label_filename).name == o.label_filename] if config else []
        shared = "".join(self._hash(model_dir / f) for f in dict.fromkeys((CONFIG_FILE, LABELS_FILE, *named)) if (model_dir / f).is_file())
        if config_override is not None:
            shared += str(config_override)
        return Desired(config, {v: self._fingerprint(model_dir / str(v), shared) for v in chosen})

    def relative(self, text: str) -> str:
        """Reasons name files relative to the repository: clients see no absolute server paths."""
        root = self.repository.root
        return text.replace(f"{root.resolve()}/", "").replace(f"{root}/", "")

    def _fingerprint(self, folder: Path, shared: str) -> str:
        h = hashlib.sha256(shared.encode())
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(f"{path.relative_to(folder)}\0{self._hash(path)}\0".encode())
        return h.hexdigest()

    def _hash(self, path: Path) -> str:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._hashes[path] = (stamp, sha256_file(path))
        return cached[1]


def select_versions(config, available: list[int]) -> tuple[list[int], str | None]:
    """The versions ``config``'s version_policy serves of ``available`` (Triton's default: the latest one)."""
    policy = config.version_policy if config is not None and config.HasField("version_policy") else None
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if kind == "all":
        return sorted(available), None
    if kind == "specific":
        wanted = set(policy.specific.versions)
        chosen = sorted(wanted & set(available))
        if not chosen:
            return [], f"version_policy specific {sorted(wanted)}: none of these versions has a folder (folders: {sorted(available)})"
        return chosen, None
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return sorted(available)[-count:], None


def return_memory() -> None:
    """Give freed heap back to the operating system after an unload (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
