"""A cache of decoded datasets: arrays that take seconds to decode from the files a user has (CIFAR-10's
JPEG images, FEMNIST's JSON), kept as ``.npy`` files under ``$BRMTRL_CACHE`` (default
``~/.cache/brmtrl``), keyed by those files' real paths, sizes and modification times (an edited or
replaced file is decoded again; a symbolic link shares its target's cache), and read back
memory-mapped, so that a process that needs a few clients' samples (a Flower node) reads only those.

Each array is written to its own temporary file (process id and a random suffix in the name) and renamed
into place, so concurrent runs never read or clobber a half-written file; one process at a time decodes a
given source (a lock file beside its cache), so processes starting together (a federation's nodes, a
sweep's workers) decode it once, not once each. Caching is an optimisation only: an unwritable cache is
skipped, and where the platform has no ``fcntl`` each process decodes on its own.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

__all__ = ["cache_dir", "cached_arrays", "source_key", "temp_name", "write_array"]

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    return Path(os.environ.get("BRMTRL_CACHE", Path.home() / ".cache" / "brmtrl"))


def source_key(files: Sequence[Path]) -> str:
    """A short key for the contents of ``files`` as the file system describes them (real path, size and
    modification time of each)."""
    parts = []
    for f in files:
        real = Path(f).resolve()
        st = real.stat()
        parts.append(f"{real}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def temp_name(path: Path) -> Path:
    """A temporary file beside ``path``, unique to this process and call."""
    return path.with_name(f"{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def write_array(path: Path, arr: np.ndarray) -> None:
    """Atomically write ``arr`` to ``path`` (``.npy``); an unwritable cache is skipped, and the temporary
    file never outlives a failure."""
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, arr)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(exc, OSError):
            raise


def _read(stem: Path, names: Sequence[str], valid: Callable[[Arrays], bool]) -> Arrays | None:
    try:
        arrays = {n: np.load(stem.with_name(f"{stem.name}.{n}.npy"), mmap_mode="r") for n in names}
    except (OSError, ValueError):
        return None
    return arrays if valid(arrays) else None


@contextmanager
def _one_decoder(stem: Path) -> Iterator[None]:
    """Held while this process decodes ``stem``'s source; a process that needs it meanwhile waits."""
    try:
        import fcntl

        stem.parent.mkdir(parents=True, exist_ok=True)
        fh = open(stem.with_name(stem.name + ".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_arrays(stem: Path, names: Sequence[str], decode: Callable[[], Arrays],
                  valid: Callable[[Arrays], bool] = lambda a: True) -> Arrays:
    """The arrays ``names`` cached under ``stem`` (``<stem>.<name>.npy``, memory-mapped), else ``decode()``'s,
    cached for next time (written in the order of ``names``: the last one's presence means all are there).
    A cache that is missing, unreadable or not ``valid`` is decoded again."""
    found = _read(stem, names, valid)
    if found is not None:
        return found
    with _one_decoder(stem):
        found = _read(stem, names, valid)   # decoded by another process while this one waited
        if found is not None:
            return found
        arrays = decode()
        for n in names:
            write_array(stem.with_name(f"{stem.name}.{n}.npy"), arrays[n])
    return arrays
