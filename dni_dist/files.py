"""Every file a run writes goes through here: atomic, private, and one clear line on failure.

A file is written to a temporary name in its own directory (``<path>.tmp.<pid>``), flushed,
fsynced, and renamed over ``path`` (``os.replace``, atomic on POSIX); the directory is fsynced
after. A write that fails (a full disk, a read-only place) removes its temporary file and leaves
the previous ``path`` as it was, and raises :class:`WriteError`: one line naming the path, the
cause (errno) and the free space of its filesystem.

Files are created with mode 0600 (readable by their owner only: checkpoints and metrics can hold
what the run learnt); set ``DNI_DIST_FILE_MODE`` (octal, e.g. ``644``) to create them otherwise.
``--metrics-csv`` grows by appended rows (:class:`RowFile`); earlier rows are never rewritten in
place, and a failure to append degrades to a warning while the rows are kept in memory.
"""
from __future__ import annotations

import errno as errno_names
import io
import json
import os
import shutil
import warnings

MODE_ENV = "DNI_DIST_FILE_MODE"
DEFAULT_MODE = 0o600

# Tests set this to a function of the path that raises (a fault hook for a full disk).
fault = None


class WriteError(OSError):
    """A file of the run could not be written; the previous version (if any) is unchanged."""

    def __str__(self) -> str:
        return str(self.strerror)


def file_mode() -> int:
    """The mode new files get: 0600, or ``DNI_DIST_FILE_MODE`` (octal)."""
    raw = os.environ.get(MODE_ENV, "").strip()
    if not raw:
        return DEFAULT_MODE
    try:
        mode = int(raw, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{MODE_ENV}={raw!r}: expected an octal file mode such as 600 or 644")
    return mode


def free_space(path: str) -> str:
    """``"12.3 MiB free of 64.0 MiB on <dir>"`` for the filesystem that holds ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    while d and not os.path.isdir(d):
        d = os.path.dirname(d)
    try:
        u = shutil.disk_usage(d)
    except OSError:
        return f"free space of {d} unknown"
    return f"{_size(u.free)} free of {_size(u.total)} on {d}"


def describe(path: str, e: BaseException, what: str = "") -> str:
    """One line: what could not be written where, why (errno name), and the free space there."""
    label = f"{what} {path!r}" if what else repr(path)
    code = getattr(e, "errno", None)
    if isinstance(e, OSError) and code:
        cause = f"{e.strerror or os.strerror(code)} ({errno_names.errorcode.get(code, code)})"
    else:
        cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return f"cannot write {label}: {cause}; {free_space(path)}"


def write_bytes(path: str, data: bytes, what: str = "") -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    mode = file_mode()
    try:
        if fault is not None:
            fault(path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)  # exactly the mode asked for, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - any failure: keep the old file, say why in one line
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise WriteError(getattr(e, "errno", None) or errno_names.EIO, describe(path, e, what)) from e
    _sync_dir(directory)


def write_text(path: str, text: str, what: str = "") -> None:
    write_bytes(path, text.encode("utf-8"), what)


def write_json(path: str, obj, what: str = "") -> None:
    write_text(path, json.dumps(obj), what)


def save_torch(obj, path: str, what: str = "") -> None:
    """``torch.save(obj)`` atomically: serialised in memory first, so a full disk is an ``OSError``
    with its errno (not torch's "unexpected pos" from inside the zip writer)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer(), what)


class RowFile:
    """A text file that grows by whole lines (``--metrics-csv``). ``start(keep)`` begins it: a new
    file holding ``header``, or, when resuming, the existing file cut to its first ``keep`` data
    rows (rewritten atomically: a killed run's rows past its checkpoint are not repeated).
    ``add(line)`` appends; the first failure is one warning naming the path and the cause, and
    from then on rows are only kept in memory; :meth:`close` then tries once more to write them
    all (atomically)."""

    def __init__(self, path: str, header: str, what: str):
        self.path, self.header, self.what = path, header, what
        self.lines: list[str] = []
        self.f = None
        self.failed = False

    def start(self, keep: int | None) -> None:
        old = []
        if keep and os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    old = [ln if ln.endswith("\n") else ln + "\n" for ln in f.readlines()[1:]]
            except (OSError, UnicodeDecodeError) as e:
                warnings.warn(f"dni_dist: {self.what} {self.path!r} cannot be read to continue it ({e}); "
                              "starting it anew", RuntimeWarning)
                old = []
            old = [ln for ln in old if ln.strip()][:keep]
        self.lines = old
        try:
            write_text(self.path, self.header + "".join(old), self.what)
            self.f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            self._fail(e)

    def add(self, line: str) -> None:
        self.lines.append(line)
        if self.f is not None:
            try:
                if fault is not None:
                    fault(self.path)
                self.f.write(line)
            except OSError as e:
                self._fail(e)

    def flush(self) -> None:
        if self.f is not None:
            try:
                if fault is not None:
                    fault(self.path)
                self.f.flush()
            except OSError as e:
                self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if not self.failed:
            warnings.warn(f"dni_dist: {describe(self.path, e, self.what)}; training goes on, its rows are kept in "
                          "memory (and in the metrics JSON's losses)", RuntimeWarning)
        self.failed = True
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None

    def close(self) -> None:
        if self.f is not None:
            try:
                self.f.flush()
                os.fsync(self.f.fileno())
                self.f.close()
            except OSError as e:
                self._fail(e)
            self.f = None
        if self.failed:
            try:
                write_text(self.path, self.header + "".join(self.lines), self.what)
                self.failed = False
            except OSError as e:
                warnings.warn(f"dni_dist: {e}; its rows were not written (the metrics JSON has the losses)",
                              RuntimeWarning)


def _sync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
