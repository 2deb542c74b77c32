"""Writing output files: atomically, with the permissions the user's umask gives (0644 usually)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | os.PathLike, *, parents: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` (``os.replace``).

    ``path`` holds either its old content or the complete new one, never half a file; on an error
    the temporary file is removed. Write the temporary file with ``open`` (or a library that does),
    so its mode follows the umask like every other output (``tempfile`` would make it 0600).
    ``parents=True`` creates the missing folders above ``path`` first.
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, parents: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (:func:`replacing`), synced to disk before the replace."""
    with replacing(path, parents=parents) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str, *, parents: bool = False) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"), parents=parents)


def write_json_atomic(path: str | os.PathLike, payload: Any, *, parents: bool = False, **dumps_options: Any) -> None:
    """:func:`write_text_atomic` for ``json.dumps(payload, indent=2, **dumps_options)`` and a final newline."""
    write_text_atomic(path, json.dumps(payload, indent=2, **dumps_options) + "\n", parents=parents)
