"""Checkpoint folders: ``OUTPUT_DIR/checkpoints/step-NNNNNN/``, written atomically, checksummed.

A checkpoint is written into a hidden temporary folder beside the others, every file is fsynced,
a ``MANIFEST.json`` with the SHA-256 of each file is written last, and only then is the folder
renamed to its final name. A crash at any moment leaves either the previous checkpoints alone or
a complete new one; a stray temporary folder is removed on the next start. On resume, a folder
whose files do not match its manifest (truncated, bit rot) is skipped with a warning and the
previous one is used.

>>> import tempfile
>>> run = Path(tempfile.mkdtemp())
>>> p = save_checkpoint(run, 20, lambda d: (d / "x.txt").write_text("hi"), {"step": 20}, keep=2)
>>> p.name, read_meta(p)["step"], [s for s, _ in list_checkpoints(run)]
('step-000020', 20, [20])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
MANIFEST = "MANIFEST.json"
META = "trainer.json"
_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupted, incomplete or from another run)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_atomic_dir(final: Path, write: Callable[[Path], None], *, manifest: bool = True) -> Path:
    """Create folder ``final`` atomically: ``write(tmp)`` fills a temporary folder first.

    Used for checkpoints and for ``pureml predict``'s output: an existing ``final`` is replaced
    only once the new one is complete, so a crash never leaves neither. ``manifest=False``
    leaves out ``MANIFEST.json`` (a brat folder for people to open, not a checkpoint).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # what an earlier writer killed before its cleanup left (SIGKILL, power loss): its pid,
    # in the name, is not ours
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        write(tmp)
        files = _files(tmp)
        if manifest:
            digests = {str(p.relative_to(tmp)): _sha256(p) for p in files}
            (tmp / MANIFEST).write_text(json.dumps(digests, indent=1, sort_keys=True))
            files.append(tmp / MANIFEST)
        for p in files:
            fsync_path(p)
        fsync_path(tmp)
        old = None
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_dir(folder: Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches ``MANIFEST.json``."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {MANIFEST} (incomplete write)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: unreadable {MANIFEST}: {e}") from None
    for rel, digest in manifest.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{folder}: missing file {rel}")
        if _sha256(path) != digest:
            raise CheckpointError(f"{folder}: checksum mismatch in {rel}")


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_state: Callable[[Path], None],
    meta: dict[str, Any],
    *,
    keep: int,
) -> Path:
    """Write ``checkpoints/step-NNNNNN`` (state via ``write_state``, ``meta`` as JSON).

    Keeps the ``keep`` latest checkpoints and deletes older ones (after the new one is safe).
    """
    root = Path(run_dir) / CHECKPOINTS

    def write(tmp: Path) -> None:
        write_state(tmp)
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))

    path = write_atomic_dir(root / checkpoint_name(step), write)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoint folders, oldest first (temporary folders ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def lock_run_dir(run_dir: Path) -> int | None:
    """Lock the folder ``run_dir`` for this process (an exclusive ``flock`` on the folder itself:
    no file is written) until the returned descriptor is closed; raise :class:`CheckpointError`
    if another run holds it.

    Two runs writing into one folder interleave their logs and checkpoints into a folder no run
    can resume. The lock dies with its process: a SIGKILL leaves nothing to clean up. Returns
    None where the file system has no such locks.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointError(
            f"{run_dir} is in use by another run (a live process holds its lock): wait for it "
            "to end or stop it, or choose another train.output_dir"
        ) from None
    except OSError:  # no locks on this file system
        os.close(fd)
        return None
    return fd


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary folders left by a crash during a write."""
    for parent in (Path(run_dir) / CHECKPOINTS, Path(run_dir)):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
                    shutil.rmtree(p, ignore_errors=True)


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def latest_checkpoint(
    run_dir: Path,
    *,
    at_most: int | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Path | None:
    """The newest checkpoint that verifies (at or before step ``at_most``), or None.

    Corrupted ones are skipped with a warning naming what was wrong (through ``on_skip`` if
    given, else ``warnings.warn``).
    """
    candidates = [p for s, p in list_checkpoints(run_dir) if at_most is None or s <= at_most]
    for path in reversed(candidates):
        try:
            verify_dir(path)
            read_meta(path)
            return path
        except (CheckpointError, OSError, ValueError) as e:
            text = f"skipping corrupted checkpoint: {e}; falling back to an earlier one"
            if on_skip is not None:
                on_skip(text)
            else:
                warnings.warn(text, stacklevel=2)
    return None
