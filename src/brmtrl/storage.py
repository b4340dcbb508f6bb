"""Files that survive a crash: atomic writes (a temporary file, flushed, synced and renamed over the
final name), the cleanup of temporary files that killed writes left behind, and JSON in and out. Every
file a run or a sweep writes goes through here; nothing here imports the rest of brmtrl."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "load_json", "remove_stale_temps", "temp_path", "write_json"]

log = logging.getLogger("brmtrl")

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
# temporary names of earlier brmtrl versions: .checkpoint.pt.<pid>.tmp and .<name>.tmp
_OLD_TEMP = re.compile(r"^\.(?:checkpoint\.pt\.(?P<pid>\d+)|(?:results\.json|config\.json|progress\.json))\.tmp$")

_in_flight: set[str] = set()  # names of this process's temporary files being written (names are unique)
_in_flight_lock = threading.Lock()


def temp_path(path: Path) -> Path:
    """A fresh temporary name next to ``path``: ``.<name>.<pid>-<8 hex digits>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success it is flushed, synced and renamed
    over ``path``; on any error (or KeyboardInterrupt) it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    with _in_flight_lock:
        _in_flight.add(tmp.name)
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    finally:
        with _in_flight_lock:
            _in_flight.discard(tmp.name)


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs now (this process counts as running)."""
    if pid == os.getpid():
        return False
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OverflowError, ValueError):
        return True
    except OSError:  # PermissionError: it exists, owned by someone else
        return False
    return False


def _is_stale(path: Path) -> bool:
    """Whether ``path`` is a temporary file of one of our writers that nobody is writing any more."""
    m = _TEMP.match(path.name)
    if m is None:
        old = _OLD_TEMP.match(path.name)
        if old is None:
            return False
        pid = old["pid"]  # this version never writes these names: only a gone writer can have left one
        return pid is None or int(pid) == os.getpid() or _process_gone(int(pid))
    pid = int(m["pid"])
    if pid == os.getpid():
        with _in_flight_lock:
            return path.name not in _in_flight
    return _process_gone(pid)


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files that killed or failed writes left in ``run_dir``; return them.

    A temporary file is stale when the process that wrote it is gone, or when it is this process's and
    no write of this process is using it. Files of other programs are never touched."""
    folder = Path(run_dir)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.endswith(".tmp") and _is_stale(entry) and entry.is_file():
            try:
                entry.unlink()
            except OSError:  # gone already, or not ours to remove: never fail a run over it
                continue
            removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def _clean(obj: Any) -> Any:
    """JSON without NaN: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (non-finite floats as null), written atomically."""
    text = json.dumps(_clean(obj), indent=2) + "\n"
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def load_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
