"""What every result records about where it was measured (versions, threads, device, machine, commit), and
how results reach the disk: output folders checked before any work, files written whole or not at all."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from pathlib import Path

from poisonlab.errors import PoisonlabError


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, text: str | bytes) -> None:
    """Write ``text`` (UTF-8) or bytes to ``path`` through a temporary file in the same folder, then rename
    it: a reader never sees half a file, and a failure leaves the old file (or none). Mode 0666 minus the
    umask, as open()."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(
    path: str | os.PathLike, what: str = "--out", files: tuple[str, ...] = (), folders: tuple[str, ...] = ()
) -> Path:
    """Refuse, before any work, an output folder that cannot be written: an existing file, a path below a
    file, a read-only place, or one where the ``files`` to write are folders (or the ``folders``, files).
    Creates nothing (a probe file in the nearest existing folder is removed)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise PoisonlabError(f"{what} {path}: exists and is not a folder")
        for name in files:
            if (path / name).is_dir():
                raise PoisonlabError(f"{what} {path}: {name} is a folder, where a file is written")
        for name in folders:
            if (path / name).exists() and not (path / name).is_dir():
                raise PoisonlabError(f"{what} {path}: {name} is a file, where a folder is written")
        probe = path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise PoisonlabError(f"{what} {path}: {probe} is a file, not a folder")
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".poisonlab-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise PoisonlabError(f"{what} {path}: cannot write there ({err.strerror or err})") from None
    return path


def git_commit() -> str | None:
    """The poisonlab checkout's commit (with ``+dirty`` when it has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def environment(device: str | None = None) -> dict[str, object]:
    """Versions, torch's thread count (metrics differ between 1 and 2 threads) and OpenMP wait policy,
    device and machine."""
    import numpy as np
    import torch

    import poisonlab

    return {
        "poisonlab": poisonlab.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # poisonlab's default: PASSIVE
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "git_commit": git_commit(),
    }
