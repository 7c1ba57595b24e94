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


def cached_source(folder, stem: str, text: str, keep: int) -> Path:
    """folder/stem.py holding ``text`` (stem names the text by a hash of it, so an existing
    file is never rewritten), written whole where it is missing; each call records a use in
    folder/stem.used. Writing a new one prunes the folder to the ``keep`` sources used last:
    the others go, with what was compiled from them in __pycache__ (Python's bytecode,
    Numba's index and code), so that the cache stays bounded however many versions of a
    cell or of bptt have run. The use is marked beside the source, never on it: Numba keys
    its cache by the source's mtime."""
    folder = Path(folder)
    path = folder / f"{stem}.py"
    made = not path.exists()
    if made:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{stem}.py.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    (folder / f"{stem}.used").touch()
    if made:
        _keep_recent(folder, keep)
    return path


def _last_use(source: Path) -> float:
    """When source (a cached .py) was last used: its marker's mtime, else its own (written
    by a version without markers), else 0 (gone meanwhile)."""
    for marker in (source.with_suffix(".used"), source):
        try:
            return marker.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _keep_recent(folder: Path, keep: int):
    """Delete all but the ``keep`` sources of folder used last, with their markers and
    compiled files; a file another process deletes first is no error."""
    for source in sorted(folder.glob("*.py"), key=_last_use, reverse=True)[keep:]:
        for f in (source, source.with_suffix(".used"), *folder.glob(f"__pycache__/{source.stem}.*")):
            try:
                f.unlink()
            except OSError:
                pass
