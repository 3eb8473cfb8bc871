"""Atomic file writes: a reader (or a run killed mid-save) sees the old file or the new one, never half.

Every file this project writes that something else later reads -- checkpoints, their JSON
sidecars, tokenizer.json, dataset caches -- goes through `atomic_write`. The recipe:

  1. write to a temporary file in the SAME directory (os.replace is only atomic within one
     filesystem, and /tmp may be another one);
  2. flush and fsync it, so the bytes are on disk before the name points at them (otherwise a
     power cut right after the rename can leave an empty file under the final name);
  3. os.replace it onto the final name -- one atomic step on POSIX and Windows;
  4. on any error (including Ctrl-C) remove the temporary file and re-raise, leaving the old file.
     A file-system error (a full disk, a read-only folder) is re-raised as a WriteError: a UserError,
     so a command reports it in one line ("cannot write out/pretrain_128.pth: No space left on device;
     the previous file is unchanged") instead of a traceback.

A run killed with SIGKILL (or by a power cut) gets no step 4 and leaves its temporary file behind,
as big as the file it was writing: `.pretrain_128.pth.k3j9x_2a.tmp`. `stale_temporaries` finds
them; a training run removes those in its output folder once it holds the folder's lock
(plumbing/run_lock.py), when no other run can be writing them.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> atomic_write_text(os.path.join(d, "a.txt"), "hello\\n")
    >>> open(os.path.join(d, "a.txt")).read()
    'hello\\n'
    >>> sorted(os.listdir(d))                      # no temporary file left behind
    ['a.txt']

Standard library only, so the data scripts can use it without importing torch.
"""

import os
import re
import tempfile

from plumbing.errors import UserError

# the temporary files atomic_write makes: "." + final name + "." + mkstemp's 8 random characters + ".tmp"
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class WriteError(UserError, OSError):
    """A file could not be written (disk full, no permission, read-only file system); the old one is kept.
    An OSError too, with the cause's errno and strerror, for callers that catch those."""

    def __init__(self, message, cause: OSError):
        super().__init__(cause.errno, cause.strerror)
        self.message = message

    def __str__(self):
        return self.message


def _os_error_in(error):
    """The OSError behind `error`, if any. torch.save on a full disk raises a RuntimeError ("unexpected
    pos 704 vs 598") whose __context__ is the real OSError (No space left on device)."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _current_umask() -> int:
    """The process umask. os.umask can only be read by setting it, so set it and put it back."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path, write) -> None:
    """Call write(f) on a binary temporary file beside `path`, fsync it, then rename it onto `path`.

    The file gets the permissions an ordinary open() would give (0666 less the umask): mkstemp
    makes files private (0600), but checkpoints and tokenizers are meant to be shared.
    The parent directory is created if needed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:  # e.g. the folder's name is taken by a file, or it is read-only
        raise WriteError(f"cannot write {path}: {e.strerror or e} ({directory})", e) from None
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # BaseException: a Ctrl-C mid-write must not leave the temp file either
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error_in(e) if isinstance(e, Exception) and not isinstance(e, UserError) else None
        if cause is None:
            raise
        kept = "the previous file is unchanged" if os.path.exists(path) else "nothing was written"
        raise WriteError(f"cannot write {path}: {cause.strerror or cause}; {kept}", cause) from e


def stale_temporaries(directory) -> list:
    """The temporary files of atomic_write in `directory` (not in its subfolders), e.g.
    ['out/.pretrain_128.pth.k3j9x_2a.tmp']. Only a caller that knows no write is under way there may
    delete them: one holding the folder's run lock."""
    try:
        names = os.listdir(directory)
    except OSError:  # no such folder: nothing left behind
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if TEMPORARY_NAME.fullmatch(n) and os.path.isfile(os.path.join(directory, n)))


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8 (whatever the platform's default encoding)."""
    atomic_write_bytes(path, text.encode("utf-8"))
