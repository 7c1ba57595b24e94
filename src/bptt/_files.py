"""Writing a file so that a reader finds the old one or the whole new one, never a part."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, write):
    """``write(tmp)`` then rename over ``path``: a reader sees the old file or the whole new
    one. A failed write (a full disk, say) removes its temporary file and leaves ``path``
    as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp), tmp):   # name the file asked for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
