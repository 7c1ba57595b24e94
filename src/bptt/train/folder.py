"""A run folder belongs to one run, and to one process at a time.

    check_folder(path, option)  a folder that can be written in, or created (train, resume,
                                flow), nothing created
    check_new(path, fresh)      what claim_new would refuse, nothing created
    claim_new(path, fresh)      a new run: the folder is created, or exists and is empty or
                                holds only a run that failed in its first update (its
                                config.json and an empty metrics.jsonl)
                                (``fresh``: an earlier run in it is deleted first); locked
    claim_existing(path)        a run to continue: locked, nothing moved
    set_aside_halves(path)      once the run may go on: halves of checkpoints cut short are
                                moved into set-aside/ (never overwritten later)
    default_name()              runs/DATE-TIME, made atomically, never shared by two runs
    saved_config(path, config)  what an edited config.json changes for resume (or an error)

The lock is ``fcntl.flock`` on RUN/.lock, held as long as the run writes: the operating
system drops it with the process, so a run killed with SIGKILL leaves no stale lock, and a
second writer is refused with one line. Refusals change nothing in the folder, and a run
stopped before it writes takes back what its claim made (``Lock.discard``): the lock file,
and the folder where the claim created it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from . import runs
from .config import CHANGEABLE_ON_RESUME, Config

try:
    import fcntl
except ImportError:                            # pragma: no cover - not POSIX: no lock
    fcntl = None

LOCK = ".lock"
OWN_FILES = ("config.json", "metrics.jsonl", "loss.png", "best.json", "best.safetensors")
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".json.tmp", ".safetensors.tmp", ".safetensors.old.tmp")   # ckpt-<update>


class FolderError(ValueError):
    """A run folder that cannot be used as asked: one line, nothing in it changed."""


def default_name(parent="runs", prefix="") -> Path:
    """runs/[PREFIX]YYYYMMDD-HHMMSS, made now, or -2, -3, … when one started in the same second."""
    base = Path(parent) / time.strftime(f"{prefix}%Y%m%d-%H%M%S")
    Path(parent).mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FolderError(f"--out: no free run folder name beside {base}")   # pragma: no cover


def _config_of(path: Path):
    """The run configuration in config.json, or None when it is not a bptt run's."""
    try:
        values = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return values if isinstance(values, dict) and {"task", "cell", "hidden", "steps"} <= set(values) else None


def run_step(path: Path):
    """The update of a run's newest complete checkpoint; 0 for a run with none; None if the
    folder is not a run."""
    path = Path(path)
    found = runs.checkpoints(path)
    if found:
        return runs.step_of(found[-1])
    if _config_of(path) is not None or any(runs.numbered(path, suffix) for suffix in CHECKPOINT_SUFFIXES[:2]):
        return 0
    return None


def _contents(path: Path) -> list:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK)


def holds_only_lock(path) -> bool:
    """Whether the folder holds nothing but its lock file: its run has written nothing."""
    try:
        return not _contents(Path(path))
    except OSError:
        return False


def nearest_existing(path: Path) -> Path:
    """The nearest folder or file above ``path`` that exists: where creating it would start."""
    above = Path(path).absolute().parent
    while not above.exists():
        above = above.parent
    return above


def check_folder(path, option: str, writer: str = "the run"):
    """``path`` is a folder ``writer`` can write in, or can create (the nearest existing
    folder above it can be written), checked without creating anything: else a FolderError
    naming the option, what came and what was expected."""
    path = Path(path)
    if path.is_symlink() and not path.exists():      # no folder can be made in its place
        raise FolderError(f"{option}: expected a folder for {writer}, got {path} (a link to "
                          f"{os.readlink(path)}, which does not exist)")
    if path.exists() and not path.is_dir():
        raise FolderError(f"{option}: expected a folder for {writer}, got {path} (a file)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise FolderError(f"{option}: expected a folder {writer} can write in, got {path} (not writable)")
        return
    above = nearest_existing(path)
    if not above.is_dir():
        raise FolderError(f"{option}: expected a folder for {writer}, got {path} ({above} is a file)")
    if not os.access(above, os.W_OK | os.X_OK):
        raise FolderError(f"{option}: expected a folder {writer} can create, got {path} ({above} is not writable)")


def remove_if_empty(path) -> None:
    """A folder made here goes where a stop or a failure left it empty; one holding anything
    stays (never raises: it runs on the way out of an error)."""
    try:
        Path(path).rmdir()              # removes an empty folder only
    except OSError:
        pass


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not removed or replaced since)."""
    try:
        now, ours = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)


class Lock:
    """An exclusive lock on RUN/.lock for this process (released with it, whatever kills it).
    ``made``: the claim made the folder, and ``discard`` takes it back while it is empty."""

    def __init__(self, run: Path, option: str, made: bool = False):
        self.path = Path(run) / LOCK
        self.made = made
        self.created = False                   # the lock file is this Lock's own
        self.fd = None
        if fcntl is None:                      # pragma: no cover
            return
        for attempt in range(10):
            fd, created = _open_lock(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise FolderError(f"{option}: {run} is in use by another bptt process (pid {holder}); "
                                  f"wait for it to finish or stop it") from None
            except BaseException:
                os.close(fd)
                if created:
                    self.path.unlink(missing_ok=True)
                raise
            if _same_file(fd, self.path) or attempt == 9:
                break
            os.close(fd)                       # removed by its discarding holder since it was opened: again
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self.created = fd, created

    def release(self):
        if self.fd is not None:
            os.close(self.fd)                  # closing the last descriptor drops the flock
            self.fd = None

    def discard(self):
        """Released, and the folder left as the claim found it where the run wrote nothing:
        the lock file goes if this Lock created it (and it is still that file), then the
        folder if the claim made it and it is empty."""
        if self.fd is not None and self.created and _same_file(self.fd, self.path):
            try:
                self.path.unlink()             # while still locked: a process that opened it locks it anew
            except OSError:
                pass
        self.release()
        if self.made:
            remove_if_empty(self.path.parent)

    def __del__(self):
        self.release()


def _open_lock(path: Path) -> tuple:
    """(descriptor, whether this call created the file) of the lock file at ``path``."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(path, os.O_RDWR), False
        except FileNotFoundError:              # removed in between: create it
            continue


def check_new(path, fresh: bool = False, option: str = "--out") -> None:
    """What ``claim_new`` would refuse, checked without creating or changing anything."""
    path = Path(path)
    check_folder(path, option)
    if path.exists():
        _refuse_unless_empty(path, fresh, option)


def claim_new(path, fresh: bool = False, option: str = "--out") -> tuple:
    """(path, Lock) for a new run in ``path`` (None: a new default name). A folder made here
    is the Lock's to take back (``Lock.discard``) if the run stops before it writes."""
    default = path is None
    if default:
        path, made = default_name(), True
    else:
        path = Path(path)
        check_new(path, fresh, option)
        try:
            path.mkdir(parents=True)
            made = True
        except FileExistsError:
            made = False
    try:
        lock = Lock(path, option, made=made)
    except BaseException:
        if made:
            remove_if_empty(path)
        raise
    if default:
        return path, lock
    try:
        _refuse_unless_empty(path, fresh, option, locked=True)   # again, now that nobody else can write
        if fresh:
            _delete_run(path)
    except BaseException:
        lock.discard()
        raise
    return path, lock


def _in_use(path: Path) -> str | None:
    """The pid written in a lock that another process holds now, else None (tests the lock
    without creating anything)."""
    if fcntl is None:                           # pragma: no cover
        return None
    try:
        fd = os.open(Path(path) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)                            # closing drops a lock taken here


def _refuse_unless_empty(path: Path, fresh: bool, option: str, locked: bool = False):
    names = _contents(path)
    if not names:
        return
    holder = None if locked else _in_use(path)
    if holder is not None:
        raise FolderError(f"{option}: {path} is in use by another bptt process (pid {holder}); "
                          f"wait for it to finish or stop it")
    step = run_step(path)
    if step is None:
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        raise FolderError(f"{'--fresh' if fresh else option}: {path} is not empty ({len(names)} "
                          f"{'entry' if len(names) == 1 else 'entries'}: {shown}) and is not a run"
                          f"{' to start over' if fresh else ''}; choose an empty or new folder")
    if not fresh and set(names) == {"config.json", "metrics.jsonl"} and (path / "metrics.jsonl").is_file() \
            and not runs.Metrics(path).read():
        return                  # a run that failed in its first update (memory, a non-finite gradient): nothing to keep
    if not fresh and not runs.checkpoints(path):
        raise FolderError(f"{option}: {path} holds a run that stopped before its first checkpoint (nothing to "
                          f"resume); --fresh deletes it and starts over")
    if not fresh:
        raise FolderError(f"{option}: {path} holds a run (at update {step}); `bptt resume {path}` continues it, "
                          f"--fresh deletes it and starts over")


def _delete_run(path: Path):
    """--fresh: the earlier run's own files go (checkpoints, best model, metrics, config, plot,
    set-aside/); files that are not a run's stay."""
    for name in OWN_FILES:
        for end in ("", ".tmp", ".old.tmp"):        # .old.tmp: what a write killed midway kept (_files.py)
            (path / f"{name}{end}").unlink(missing_ok=True)
    for suffix in CHECKPOINT_SUFFIXES:
        for p in runs.numbered(path, suffix):
            p.unlink(missing_ok=True)
    shutil.rmtree(path / runs.SET_ASIDE, ignore_errors=True)


def claim_existing(path, option: str = "RUN") -> Lock:
    """The Lock for continuing the run in ``path`` (RUN/.lock made if missing); nothing else
    in the folder changes (the run's checks come next, and a refusal leaves it as it was)."""
    path = Path(path)
    if not path.exists():                     # before check_folder: resume creates nothing
        raise FolderError(f"{option}: no such run folder: {path}")
    check_folder(path, option)
    try:
        runs.check_readable(path, option)
    except ValueError as exc:
        raise FolderError(str(exc)) from None
    if run_step(path) is None:
        saved = runs.saved_model_note(path)
        raise FolderError(f"{option}: {path} is not a run (no config.json or checkpoint of bptt's)"
                          + (f"; {saved}" if saved else ""))
    return Lock(path, option)


def set_aside_halves(path) -> list:
    """Halves of checkpoints cut short, moved into set-aside/ so that the continuing run
    never overwrites them: a note for each."""
    notes = []
    for half in runs.incomplete(path):
        other = ".json" if half.suffix == ".safetensors" else ".safetensors"
        moved = runs.set_aside(path, half)
        notes.append(f"{half.name} has no {half.stem}{other} (a checkpoint cut short); "
                     f"moved to {moved.relative_to(path)}")
    return notes


def saved_config(run, checkpoint_config: dict) -> dict:
    """RUN/config.json as the user may have edited it. A changed key that resume can honour
    (CHANGEABLE_ON_RESUME) is returned, and ``text`` where it names another place for the
    run's text file (resume checks that its SHA-256 is the checkpoint's); any other change
    is an error, never ignored."""
    path = Path(run) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"RUN: {path} is unreadable: {exc}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"RUN: {path} is not a JSON object of options")
    ckpt = checkpoint_config
    unknown = sorted(k for k in saved if k not in Config.__dataclass_fields__)   # a misspelt key would do nothing
    if unknown:
        raise ValueError(f"RUN: {path} has an unknown key {unknown[0]!r}; expected the options of a run (the "
                         f"keys bptt wrote there), of which resume can change {', '.join(CHANGEABLE_ON_RESUME)}")
    changed = sorted(k for k in saved if k in ckpt and k not in CHANGEABLE_ON_RESUME + ("out", "text")
                     and saved[k] != ckpt[k])
    if changed:
        k = changed[0]
        raise ValueError(f"RUN: {path} says {k} = {saved[k]!r}, the checkpoint {k} = {ckpt[k]!r}; resume continues "
                         f"the checkpoint's model and data (it can change only {', '.join(CHANGEABLE_ON_RESUME)}): "
                         f"undo the edit, or start a new run with `bptt train`")
    moved = {"text": saved["text"]} if saved.get("text") not in (None, ckpt.get("text")) else {}
    return {k: saved[k] for k in CHANGEABLE_ON_RESUME if k in saved} | moved
