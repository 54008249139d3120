"""One disk cache for generated training sets, and one content hash for dataset versions.

Generated data (rendered galaxies, simulated light curves) takes seconds to minutes to make,
so it is kept under ``runtime.cache_dir()/<namespace>/`` as one ``.npz`` per spec (a hash of
everything that decides its content). Files are written to a temporary name and renamed, so
an interrupted write never leaves a file under the final name; an unreadable file is made
again. Arrays only: ``allow_pickle=False`` on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from astroflax.runtime import cache_dir

Arrays = dict[str, np.ndarray]


def content_hash(*parts: Any, length: int = 16) -> str:
    """SHA-256 of arrays (``str(dtype) + str(shape)``, then the bytes), bytes as they are, and
    anything else as sorted JSON; ``length`` hex digits. The array layout is the one the
    dataset versions of astroflax 0.1 used, so existing runs keep their versions."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, (bytes, bytearray)):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:length]


def cached_arrays(namespace: str, spec: Any, make: Callable[[], Arrays], *, enabled: bool = True,
                  prefix: str = "") -> tuple[Arrays, str]:
    """``make()``'s flat dict of arrays, from ``cache_dir()/namespace/<prefix><hash>.npz`` when present.

    Returns the arrays and the spec's hash (use it in the dataset version).
    """
    key = content_hash(spec)
    path = cache_dir() / namespace / f"{prefix}{key}.npz"
    if enabled and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, key
        except (OSError, KeyError, ValueError, EOFError):
            pass  # unreadable (e.g. written by an interrupted older version): make it again
    arrays = make()
    if enabled:
        _write_atomic(path, arrays)
    return arrays, key


def _write_atomic(path: Path, arrays: Arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full or read-only cache disk is not an error: the data are in memory
