"""Safe outputs: nothing the user has is ever lost, nothing half-written is ever left behind.

Every file and folder recsim-post writes goes through this module.

* :func:`resolve_output` resolves the path (``~``, ``..``, symbolic links) and refuses, before any
  work starts, an output that is the current folder, one of its ancestors, the home folder (or one
  of its ancestors) or the root; that lies under a file; or that cannot be written.
* **One writer per output.** A lock (``flock`` on a hidden sibling ``.NAME.recsim-post.lock`` that
  holds the writer's pid) is taken before the work: a second run on the same output stops at once
  with a one-line error, so two writers can never both "win".
* **Ownership.** A folder recsim-post writes carries a marker, ``.recsim-post.json``, naming the
  command and listing every file it wrote with its size and modification time. A non-empty folder
  is replaced without ``--overwrite`` only when its marker names the same command and it holds
  nothing else: no file added, none changed since. A git repository is never replaced.
* **Atomic replacement.** A folder is built under a hidden sibling ``.NAME.recsim-post-new-*`` and
  swapped in with one ``renameat2(RENAME_EXCHANGE)`` (or, where the filesystem lacks it, the old
  folder renamed aside to ``.NAME.recsim-post-old-*`` and the new one renamed in); only then is the
  old copy deleted. A run killed at any instant leaves the old folder or the new one in place, and
  the next run on the same output deletes the hidden leftovers, or renames the old folder back
  when it was killed between the two renames. Single files (``train``'s policy) are written to a
  unique hidden temporary and renamed over the target.
* **Resumable workspaces** (:class:`Workspace`) for long runs (compare, sweep, the OPE study): each
  finished cell is its own sub-folder, written atomically with its own marker that records the
  cell's key, a hash of its settings and of the code (:func:`code_fingerprint`). A rerun skips
  finished cells; cells computed with other settings or another code version are reported and
  never mixed in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from . import __version__
from .errors import OutputError

MARKER = ".recsim-post.json"
"""The ownership marker of a folder recsim-post wrote."""

CELL_MARKER = ".recsim-post-cell.json"
"""The marker of one finished cell of a :class:`Workspace`."""

CACHE_MARKER = ".recsim-post-cache.json"
"""Marks a folder of disposable caches (``LOGS/cache/``, train's pre-trained π_ref): the entries in
a marked folder (``NAME-<hex key>.pt``, their hidden temporaries, the marker) are recsim-post's own,
so they never make the folder above look foreign or changed; anything else there still does."""

TAG = ".recsim-post-"
"""Part of the name of every hidden temporary this module makes (``.NAME.recsim-post-new-*``)."""

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------- #
# paths
# --------------------------------------------------------------------------------------------- #


def resolve_output(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` made absolute with ``~``, ``..`` and symbolic links resolved; an OutputError when
    it must never be an output (the current folder, an ancestor of it, home, root) or lies under
    a file. ``what`` names the argument in messages."""
    raw = os.fspath(path)
    if not raw.strip():
        raise OutputError(f"{what} is empty: give a folder or file name")
    try:
        resolved = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, an unreadable component
        raise OutputError(f"{what} {raw}: the path cannot be resolved ({err})") from None
    cwd = Path.cwd().resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    never = "recsim-post never writes over it; give a new name, e.g. " + f"{what} results"
    if resolved == Path(resolved.anchor):
        raise OutputError(f"{what} {raw} is the root folder: {never}")
    if resolved == cwd:
        raise OutputError(f"{what} {raw} is the current folder: {never}")
    if resolved in cwd.parents:
        raise OutputError(f"{what} {raw} is an ancestor of the current folder: {never}")
    if home is not None and (resolved == home or resolved in home.parents):
        raise OutputError(f"{what} {raw} is your home folder{'' if resolved == home else ' or holds it'}: {never}")
    for ancestor in resolved.parents:  # nearest first
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{what} {raw} lies under {ancestor}, which is a file, not a folder")
            break
    return resolved


def _make_parents(target: Path, what: str, raw: str) -> list[Path]:
    """Create the missing folders above ``target``; return them (outermost first) so a failed run
    can remove them again."""
    missing = []
    for ancestor in target.parents:
        if ancestor.exists():
            break
        missing.append(ancestor)
    missing.reverse()
    try:
        for folder in missing:
            folder.mkdir()
    except OSError as err:
        _remove_empty(missing)
        raise OutputError(f"cannot create {what} {raw}: {err.strerror or err} ({err.filename or target.parent})") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------------------------- #
# the lock
# --------------------------------------------------------------------------------------------- #


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``.NAME.recsim-post.lock`` beside the output.

    The lock file is unlinked on release; a run that opened the old file just before will notice
    (its inode is no longer the one at the path) and retry on the new file, so two processes never
    both hold the lock. A killed holder's lock is released by the kernel.
    """

    def __init__(self, target: Path, what: str, raw: str) -> None:
        self.path = target.parent / f".{target.name}{TAG[:-1]}.lock"
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"cannot write {what} {raw}: {err.strerror or err} ({target.parent})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputError(
                    f"{what} {raw} is being written by another recsim-post run (pid {holder}); "
                    "wait for it to finish, or choose another name"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder unlinked it between our open and flock: retry
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # unlink before unlocking: see the class docstring
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _recover(target: Path, say: Say) -> None:
    """Clean up after runs on ``target`` that were killed (call with the lock held: no live run
    owns these names). Hidden ``-new-`` folders and temporary files are deleted; an ``-old-``
    folder is deleted when ``target`` exists (its replacement finished) and renamed back when it
    does not (the run was killed between the two renames)."""
    parent = target.parent
    prefix = f".{target.name}{TAG}"
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(prefix) and not n.endswith(".lock"))
    except OSError:
        return
    olds = [parent / n for n in names if n[len(prefix):].startswith("old-")]
    for name in names:
        path = parent / name
        if path in olds:
            continue
        _delete(path)
        say(f"removed {path.name}, left by an interrupted run")
    if olds and not os.path.lexists(target):
        newest = max(olds, key=lambda p: p.lstat().st_mtime_ns)
        os.rename(newest, target)
        olds.remove(newest)
        say(f"restored {target} from a replacement that was interrupted")
    for path in olds:
        _delete(path)
        say(f"removed {path.name}, the old copy of a finished replacement")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- #
# atomic swap
# --------------------------------------------------------------------------------------------- #

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step; False where the system or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; delete what was there only once the new one is in place."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if _exchange(new, target):
        old = new  # now holds the old content, under a -new- name the next run would clean up
    else:
        old = target.parent / f".{target.name}{TAG}old-{_token()}"
        os.rename(target, old)
        os.rename(new, target)
    _delete(old)


# --------------------------------------------------------------------------------------------- #
# ownership markers
# --------------------------------------------------------------------------------------------- #


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stat_key(path: Path) -> list[int]:
    st = path.lstat()
    return [st.st_size, st.st_mtime_ns]


_CACHE_ENTRY = re.compile(r"[a-z_]+-[0-9a-f]{16,64}\.pt|\.[a-z_]+-[0-9a-f]{16,64}\.pt\.recsim-post-[0-9]+-[0-9a-f]+\.tmp")


def is_cache_entry(folder: Path, name: str) -> bool:
    """Whether file ``name`` in ``folder`` belongs to a recsim-post cache (see :data:`CACHE_MARKER`)."""
    marked = (folder / CACHE_MARKER).is_file()
    return marked and (name == CACHE_MARKER or _CACHE_ENTRY.fullmatch(name) is not None)


def _files(folder: Path, skip_cells: bool = True) -> dict[str, list[int]]:
    """Every file under ``folder`` (relative path -> [size, mtime_ns]), markers excluded; with
    ``skip_cells`` the sub-folders that hold a cell marker are left to their own marker, and the
    entries of a cache folder (:data:`CACHE_MARKER`) are left out (recsim-post's own, disposable)."""
    out: dict[str, list[int]] = {}
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        if skip_cells:
            dirs[:] = [d for d in dirs if not (here / d / CELL_MARKER).is_file()]
        cache = skip_cells and (here / CACHE_MARKER).is_file()
        for name in names:
            if here == folder and name in (MARKER, CELL_MARKER):
                continue
            if cache and is_cache_entry(here, name):
                continue
            out[(here / name).relative_to(folder).as_posix()] = _stat_key(here / name)
    return out


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.parent / f".{path.name}{TAG}{_token()}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_marker(folder: Path, command: str, files: Mapping[str, list[int]] | None = None, **extra: Any) -> None:
    """Record that ``recsim-post <command>`` wrote ``folder``: its files (default: every file in it,
    cells excepted), their sizes and times."""
    data = {"tool": "recsim-post", "version": __version__, "command": command, **extra,
            "files": _files(folder) if files is None else dict(files)}
    _write_json_atomic(folder / MARKER, data)


def _short(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _cells(folder: Path) -> dict[str, dict[str, Any]]:
    """The finished cells under ``folder``: relative path -> the cell's marker."""
    out = {}
    for root, dirs, _ in os.walk(folder):
        here = Path(root)
        for d in list(dirs):
            marker = _read_json(here / d / CELL_MARKER)
            if marker is not None:
                out[(here / d).relative_to(folder).as_posix()] = marker
                dirs.remove(d)
    return out


def foreign(folder: Path, command: str) -> str | None:
    """None when ``folder`` holds only what ``recsim-post <command>`` wrote there (cells included,
    unchanged since); else why not, as a phrase ("holds files recsim-post did not write: a.txt")."""
    marker = _read_json(folder / MARKER)
    if marker is None or marker.get("tool") != "recsim-post" or not isinstance(marker.get("files"), dict):
        names = sorted(p.name for p in folder.iterdir())
        return f"holds files recsim-post did not write ({_short(names)})"
    if marker.get("command") != command:
        return f"was written by 'recsim-post {marker.get('command')}', not by '{command}'"
    problems = _tree_problems(folder, marker["files"])
    for cell, cm in _cells(folder).items():
        listed = cm.get("files") if isinstance(cm.get("files"), dict) else {}
        problems += [f"{cell}/{p}" for p in _tree_problems(folder / cell, listed)]
    if problems:
        return f"holds files added or changed since recsim-post {command} wrote it ({_short(problems)})"
    return None


def _tree_problems(folder: Path, listed: Mapping[str, Any]) -> list[str]:
    """Files under ``folder`` that its marker does not list as they are now. A file listed as
    pending (None: a report being written when the run was killed) is the run's own."""
    now = _files(folder)
    return sorted(name for name, key in now.items() if not (name in listed and listed[name] in (None, key)))


def _check_replaceable(target: Path, command: str, overwrite: bool, replace_own: bool, what: str, raw: str) -> None:
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"{what} {raw} is a file, not a folder")
    if not target.is_dir() or not any(target.iterdir()):
        return
    why = foreign(target, command)
    if why is None and replace_own:
        return
    if (target / ".git").exists():
        raise OutputError(f"{what} {raw} is a git repository: recsim-post never replaces one, even with --overwrite")
    if not overwrite:
        why = why or f"holds the results of an earlier 'recsim-post {command}'"
        raise OutputError(f"{what} {raw} is not empty: it {why}; pass --overwrite to replace it, or choose another name")


def _keep_aside(tmp: Path, target: Path) -> Path:
    """Rename a finished temporary to a visible, unused sibling name (``NAME.new``, ``NAME.new-2``...)."""
    for i in range(1, 10_000):
        keep = target.with_name(f"{target.name}.new" + ("" if i == 1 else f"-{i}"))
        if not os.path.lexists(keep):
            os.rename(tmp, keep)
            return keep
    raise OutputError(f"no free name next to {target} to keep the new results in {tmp}")  # pragma: no cover


# --------------------------------------------------------------------------------------------- #
# one folder, one file
# --------------------------------------------------------------------------------------------- #


class OutputFolder:
    """An output folder built under a hidden temporary name and swapped in atomically on success.

    Everything is checked when the object is made, before the caller's work starts::

        out = OutputFolder("results", "demo", overwrite=False)   # refuses at once if unsafe
        with out as tmp:
            ...write into tmp...                                  # replaced atomically on success

    ``replace_own``: a folder this command wrote, unchanged since, is replaced without
    ``overwrite`` (demo); False refuses any non-empty folder without it (simulate: logs are data).
    """

    def __init__(
        self, out: str | os.PathLike[str], command: str, *, overwrite: bool = False, replace_own: bool = True,
        what: str = "--out", say: Say = _quiet, marker: Mapping[str, Any] | None = None,
    ) -> None:
        self.raw, self.command, self.what, self.say = os.fspath(out), command, what, say
        self.extra = dict(marker or {})
        self.target = resolve_output(out, what)
        self._created = _make_parents(self.target, what, self.raw)
        self._lock: _Lock | None = None
        self.tmp: Path | None = None
        try:
            self._lock = _Lock(self.target, what, self.raw)
            _recover(self.target, say)
            _check_replaceable(self.target, command, overwrite, replace_own, what, self.raw)
            self._before = _snapshot(self.target)
        except BaseException:
            self._release(failed=True)
            raise

    def __enter__(self) -> Path:
        self.tmp = self.target.parent / f".{self.target.name}{TAG}new-{_token()}"
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        assert self.tmp is not None
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            if _snapshot(self.target) != self._before:
                keep = _keep_aside(self.tmp, self.target)
                raise OutputError(
                    f"{self.what} {self.raw} changed while this run was working, so it was not replaced; "
                    f"the new results are in {keep}"
                )
            write_marker(self.tmp, self.command, **self.extra)
            _swap_in(self.tmp, self.target)
        finally:
            self._release(failed=exc_type is not None)

    def _release(self, failed: bool) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed:
            _remove_empty(self._created)


def _snapshot(path: Path) -> Any:
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return ("file", _stat_key(path))
    return _files(path, skip_cells=False)


class OutputFile:
    """One output file, written to a unique hidden temporary beside it and renamed over it.

    ``with OutputFile("p.pt", overwrite=False) as tmp: save(tmp)``; checked when made.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False, what: str = "--out",
                 say: Say = _quiet) -> None:
        self.raw, self.what, self.overwrite = os.fspath(out), what, overwrite
        self.target = resolve_output(out, what)
        if self.target.is_dir():
            raise OutputError(f"{what} {self.raw} is a folder: give a file name, e.g. {Path(self.raw) / 'policy.pt'}")
        self._created = _make_parents(self.target, what, self.raw)
        self._lock: _Lock | None = None
        try:
            self._lock = _Lock(self.target, what, self.raw)
            _recover(self.target, say)
            if os.path.lexists(self.target) and not overwrite:
                raise OutputError(f"{what} {self.raw} already exists; pass --overwrite to replace it")
            self._before = _snapshot(self.target)
        except BaseException:
            self._release(failed=True)
            raise
        self.tmp = self.target.parent / f".{self.target.name}{TAG}{_token()}.tmp"

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            if exc_type is not None:
                self.tmp.unlink(missing_ok=True)
                return
            if not self.tmp.exists():
                raise OutputError(f"nothing was written for {self.raw}")  # pragma: no cover - a caller's bug
            if _snapshot(self.target) != self._before:
                keep = self.target.with_name(f"{self.target.stem}.new-{_token()}{self.target.suffix}")
                os.rename(self.tmp, keep)
                raise OutputError(f"{self.what} {self.raw} changed while this run was working, so it was "
                                  f"not replaced; the new file is {keep}")
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.target)
        finally:
            self._release(failed=exc_type is not None)

    def _release(self, failed: bool) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed:
            _remove_empty(self._created)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write one file through ``write(handle)`` to a unique temporary beside it, then rename it
    into place (for files inside a folder this run owns: no lock, no ownership check)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TAG}{_token()}.tmp"
    try:
        with open(tmp, "xb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------- #
# resumable workspaces
# --------------------------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the package's source files: results computed by other code are never reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(__version__.encode())
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cell_key(spec: Mapping[str, Any], code: str | None = None) -> str:
    """The key of a cell: a hash of its settings (plain data) and of the code (``code``: another
    version's :func:`code_fingerprint`, as a finished cell's marker records it; default this one)."""
    text = json.dumps({"spec": spec, "code": code_fingerprint() if code is None else code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Workspace:
    """A resumable output folder: one atomically written sub-folder per finished cell.

    ``cells`` maps each cell's folder name (relative, may contain ``/``) to its key
    (:func:`cell_key`). Opening checks, before any work: the folder is new, empty, or a workspace
    of the same command whose finished cells all belong to this grid (else an OutputError, unless
    ``overwrite``, which starts over). A rerun of an interrupted command therefore resumes::

        with Workspace("sweep-out", "sweep", cells, overwrite=False, say=print) as ws:
            for name in cells:
                if not ws.done(name):
                    with ws.cell(name) as tmp: ...write the cell into tmp...
            ws.write("summary.csv", lambda fh: ...)     # top-level files, atomically
    """

    def __init__(
        self, out: str | os.PathLike[str], command: str, cells: Mapping[str, str], *, overwrite: bool = False,
        what: str = "--out", say: Say = _quiet, specs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.raw, self.command, self.what, self.say = os.fspath(out), command, what, say
        self.keys = dict(cells)
        # specs given (a report from finished cells): a cell computed by another code version counts
        # as this grid's when its key is that of the same settings under the code it records
        self.specs = dict(specs) if specs is not None else None
        self.target = resolve_output(out, what)
        self._created = _make_parents(self.target, what, self.raw)
        self._lock: _Lock | None = None
        self._fresh = False  # this run made the folder (or found it empty): remove it if nothing finishes
        self._existed = self.target.is_dir()
        self._written: set[str] = set()
        try:
            self._lock = _Lock(self.target, what, self.raw)
            _recover(self.target, say)
            self._open(overwrite)
        except BaseException:
            self._release(failed=True)
            raise

    def _open(self, overwrite: bool) -> None:
        t = self.target
        if os.path.lexists(t) and not t.is_dir():
            raise OutputError(f"{self.what} {self.raw} is a file, not a folder")
        if t.is_dir():
            for name in os.listdir(t):  # temporaries of cells and reports whose run was killed
                if TAG in name and name not in (MARKER, CELL_MARKER):
                    _delete(t / name)
                    self.say(f"removed {name}, left unfinished by an interrupted run")
        if not t.is_dir() or not any(t.iterdir()):
            self._start()
            return
        why = foreign(t, self.command)
        stale = {}
        if why is None:
            found = _cells(t)
            stale = {n: m for n, m in found.items() if not self._belongs(n, m)}
            if not stale:
                done = sum(n in found for n in self.keys)
                if done:
                    self.say(f"resuming: {done} of {len(self.keys)} cells already finished in {self.raw}")
                return
            name, m = next(iter(stale.items()))
            # with specs, any code version is welcome: what does not match is the settings
            reason = "another code version" if m.get("code") != code_fingerprint() and self.specs is None else "other settings"
            why = (f"holds {len(stale)} finished cell{'s' if len(stale) > 1 else ''} computed with other settings "
                   f"or another code version (e.g. {name}: {reason}), which are never mixed with this run's")
        if (t / ".git").exists():
            raise OutputError(f"{self.what} {self.raw} is a git repository: recsim-post never replaces one, even with --overwrite")
        if not overwrite:
            raise OutputError(f"{self.what} {self.raw} is not empty: it {why}; pass --overwrite to start over, "
                              "or choose another name")
        old = t.parent / f".{t.name}{TAG}old-{_token()}"
        os.rename(t, old)
        self._start()
        _delete(old)
        self.say(f"replaced {self.raw} (--overwrite)")

    def _start(self) -> None:
        self._existed = self.target.is_dir()
        self.target.mkdir(exist_ok=True)
        self._fresh = True
        write_marker(self.target, self.command, {}, state="running", code=code_fingerprint())

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self._release(failed=exc_type is not None)

    def _release(self, failed: bool) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed and self._fresh and self.target.is_dir() and not _cells(self.target) and not self._written:
            # a new workspace that finished nothing: leave no trace of it (an empty folder that was
            # there before stays, empty)
            if self._existed:
                (self.target / MARKER).unlink(missing_ok=True)
            else:
                shutil.rmtree(self.target, ignore_errors=True)
            _remove_empty(self._created)

    def _belongs(self, name: str, m: Mapping[str, Any] | None) -> bool:
        if m is None or name not in self.keys:
            return False
        if m.get("key") == self.keys[name]:
            return True
        return (self.specs is not None and name in self.specs and isinstance(m.get("code"), str)
                and m.get("key") == cell_key(self.specs[name], m["code"]))

    def done(self, name: str) -> bool:
        """Whether cell ``name`` finished (with this grid's key) in this or an earlier run."""
        return self._belongs(name, _read_json(self.target / name / CELL_MARKER))

    def code_versions(self) -> dict[str, int]:
        """The code fingerprints that computed this grid's finished cells, with their counts."""
        counts: dict[str, int] = {}
        for name in self.keys:
            m = _read_json(self.target / name / CELL_MARKER)
            if self._belongs(name, m):
                counts[m.get("code", "?")] = counts.get(m.get("code", "?"), 0) + 1
        return counts

    def path(self, name: str) -> Path:
        """The folder of finished cell ``name``."""
        return self.target / name

    def info(self, name: str) -> dict[str, Any]:
        """What was recorded with cell ``name`` (``cell(name, info=...)``)."""
        m = _read_json(self.target / name / CELL_MARKER) or {}
        return dict(m.get("info", {}))

    @contextlib.contextmanager
    def cell(self, name: str, info: Mapping[str, Any] | None = None) -> Iterator[Path]:
        """A temporary folder for cell ``name``; renamed into place, with its marker, on success."""
        if name not in self.keys:
            raise KeyError(f"cell {name!r} is not part of this workspace")
        tmp = self.target / f".{Path(name).name}{TAG}new-{_token()}"
        tmp.mkdir()
        try:
            yield tmp
            _write_json_atomic(tmp / CELL_MARKER, {
                "key": self.keys[name], "code": code_fingerprint(), "name": name, "info": dict(info or {}),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": _files(tmp),
            })
            dest = self.target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _swap_in(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._mark("running")

    def write(self, name: str, writer: Callable[[Path], object]) -> Path:
        """A top-level file of the workspace (a report): ``writer(path)`` must write it atomically
        (``atomic_write``, ``report.write_csv``...). The marker lists it as pending first, so a
        kill at any point leaves a file the next run knows as its own."""
        name = Path(name).as_posix()
        self._mark("running", pending=name)
        writer(self.target / name)
        self._written.add(name)
        self._mark("running")
        return self.target / name

    def finish(self) -> None:
        """Record that every cell and report is written."""
        self._mark("complete")

    def _mark(self, state: str, pending: str | None = None) -> None:
        # only files this workspace wrote: a file someone drops in meanwhile stays foreign
        listed = (_read_json(self.target / MARKER) or {}).get("files", {})
        listed = listed if isinstance(listed, dict) else {}
        files: dict[str, list[int] | None] = {}
        for n in sorted(set(listed) | self._written):
            if (self.target / n).is_file():
                files[n] = _stat_key(self.target / n)
        if pending is not None:
            files[pending] = None
        write_marker(self.target, self.command, files, state=state, code=code_fingerprint())

    def save_frame(self, name: str, frame: Any, info: Mapping[str, Any] | None = None) -> None:
        """Finish cell ``name`` holding one table (``results.parquet``)."""
        self.save_frames(name, {"results": frame}, info)

    def save_frames(self, name: str, frames: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> None:
        """Finish cell ``name`` holding several tables (``<key>.parquet`` each; ``results`` is the one
        :meth:`load_frame` reads)."""
        with self.cell(name, info) as tmp:
            for key, frame in frames.items():
                frame.to_parquet(tmp / f"{key}.parquet")

    def load_frame(self, name: str) -> Any:
        """The table of finished cell ``name``."""
        import pandas as pd

        return pd.read_parquet(self.path(name) / "results.parquet")


__all__ = [
    "CACHE_MARKER", "CELL_MARKER", "MARKER", "is_cache_entry", "OutputFile", "OutputFolder", "Workspace", "atomic_write", "cell_key",
    "code_fingerprint", "foreign", "resolve_output", "write_marker",
]
