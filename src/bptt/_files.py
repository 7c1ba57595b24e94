"""Writing a file so that a reader finds the old one or the whole new one, never a part;
reading a saved file only where it is one."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
import warnings
from pathlib import Path


def atomic_write(path: Path, write):
    """``write(tmp)`` then rename over ``path``: a reader sees the old file or the whole new
    one. A failed write (a full disk, say) removes its temporary file and leaves ``path``
    as it was. A link at ``path`` is written through, as open(path, "w") would: the file
    it names is replaced and the link stays."""
    atomic_write_all([(path, write)])


def atomic_write_all(files):
    """``atomic_write`` for several ``(path, write)``: every file is written to its
    temporary name and flushed before the first is renamed, so a failed write leaves all
    of them as they were. A rename that fails after others succeeded undoes them (each
    file they replaced is kept under a second name until all are renamed): new tensors
    beside the old JSON that records their digest would make a model that loads no more."""
    pending, kept, new, renamed = [], [], [], 0
    try:
        for path, write in files:
            target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
            pending.append((target.with_name(target.name + ".tmp"), path, target))
            write(pending[-1][0])
            with open(pending[-1][0], "rb+") as f:
                os.fsync(f.fileno())
        new = [not target.exists() for _, _, target in pending]
        kept = [None if made else _second_name(target) for (_, _, target), made in zip(pending[:-1], new)]
        for tmp, _, target in pending:
            os.replace(tmp, target)
            renamed += 1
        for link in kept:
            _unlink(link)
    except BaseException as exc:
        for (_, _, target), link, made in reversed(list(zip(pending[:renamed], kept, new))):
            try:                            # the file it replaced back, or the new one gone
                if link is not None:
                    os.replace(link, target)
                elif made:
                    target.unlink()
            except OSError:
                pass
        for link in kept[renamed:]:
            _unlink(link)
        for tmp, _, _ in pending:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        named = {str(tmp): path for tmp, path, _ in pending}
        if isinstance(exc, OSError) and (exc.filename is None or str(exc.filename) in named):   # name the file asked for
            path = named.get(str(exc.filename), pending[-1][1] if pending else None)
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def kept_name(path: Path) -> Path:
    return path.with_name(path.name + ".old.tmp")


def kept_instead(path: Path, data: bytes, digest: str, recorded) -> tuple:
    """(bytes, SHA-256) of the file a write killed between renaming ``path`` and the JSON
    that records its digest replaced, kept as PATH.old.tmp, where they are the ``recorded``
    ones: the pair the JSON in place describes. Otherwise ``data`` and its ``digest`` (at once
    where they are the recorded ones: the usual case)."""
    if digest == recorded:
        return data, digest
    try:
        kept = read_file(kept_name(path))
    except OSError:
        return data, digest
    kept_digest = hashlib.sha256(kept).hexdigest()
    return (kept, kept_digest) if kept_digest == recorded else (data, digest)


def read_file(path) -> bytes:
    """The bytes of the regular file at ``path`` (a link is followed). Anything else is an
    OSError naming it: a link to /dev/zero would be read until memory runs out, and a FIFO
    waits for a writer for ever."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "expected a regular file, got a device, FIFO or socket", str(path))
    return Path(path).read_bytes()


def _second_name(target: Path):
    """A hard link NAME.old.tmp to the file at ``target``, to put it back if its
    replacement must be undone (or, after a kill between the renames, for ``kept_instead``
    to read); None where the file system makes no links."""
    link = kept_name(target)
    try:
        link.unlink(missing_ok=True)
        os.link(target, link)
    except OSError:
        return None
    return link


def _unlink(path) -> None:
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def cached_source(folder, stem: str, text: str, keep: int) -> Path:
    """folder/stem.py holding ``text`` (stem names the text by a hash of it, so an existing
    file is never rewritten), written whole where it is missing; each call records a use in
    folder/stem.used. Writing a new one prunes the folder to the ``keep`` sources used last
    of stem's family (names that begin as stem does up to its last "_": "loops_" for the
    loops; other files in the folder are the user's and stay): the others go, with what
    was compiled from them in __pycache__ (Python's bytecode, Numba's index and code), so
    that the cache stays bounded however many versions of a cell or of bptt have run. The use is marked beside the source, never on it: Numba keys
    its cache by the source's mtime."""
    folder = Path(folder)
    path = folder / f"{stem}.py"
    made = not path.exists()
    if made:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{stem}.py.{os.getpid()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            _warn_unwritable(folder, exc)
            raise
    try:
        (folder / f"{stem}.used").touch()
    except OSError:                    # a cache others wrote, read-only here: read it all the same
        pass
    if made:
        _keep_recent(folder, keep, stem[:stem.rfind("_") + 1])
    return path


_WARNED: set = set()


def _warn_unwritable(folder: Path, exc: OSError) -> None:
    """Once per folder and process: the caller compiles in memory instead, which every new
    process pays for again (tens of seconds for a new cell), so the user learns why."""
    if folder not in _WARNED:
        _WARNED.add(folder)
        warnings.warn(f"BPTT_CACHE_DIR: cannot write compiled loops to {folder} ({exc.strerror or exc}); "
                      f"they are compiled again in every process. Expected a writable folder: set "
                      f"BPTT_CACHE_DIR to one", RuntimeWarning, stacklevel=3)


def _last_use(source: Path) -> float:
    """When source (a cached .py) was last used: its marker's mtime, else its own (written
    by a version without markers), else 0 (gone meanwhile)."""
    for marker in (source.with_suffix(".used"), source):
        try:
            return marker.stat().st_mtime
        except OSError:
            continue
    return 0.0


ORPHAN_AGE_S = 3600


def _keep_recent(folder: Path, keep: int, family: str):
    """Delete all but the ``keep`` sources of folder used last whose names begin with
    ``family``, with their markers and compiled files; then, an hour after their last
    change, files of the family that no source kept owns (a marker or compiled code a
    process wrote for a source deleted meanwhile) and writes cut short (*.tmp). A file
    another process deletes first is no error."""
    doomed, sources = [], list(folder.glob(f"{family}*.py"))
    for source in sorted(sources, key=_last_use, reverse=True)[keep:]:
        doomed += [source, source.with_suffix(".used"), *folder.glob(f"__pycache__/{source.stem}.*")]
    owners = {p.stem for p in sources} - {p.stem for p in doomed}
    for f in [*folder.glob(f"{family}*"), *folder.glob(f"__pycache__/{family}*")]:
        if f.is_file() and (f.name.split(".")[0] not in owners or f.suffix == ".tmp") and f not in doomed:
            try:
                if time.time() - f.stat().st_mtime > ORPHAN_AGE_S:
                    doomed.append(f)
            except OSError:
                pass
    for f in doomed:
        try:
            f.unlink()
        except OSError:
            pass
