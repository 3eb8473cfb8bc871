"""Atomic file writes: a reader (or a run killed mid-save) sees the old file or the new one, never half.

Every file this project writes that something else later reads -- checkpoints, their JSON
sidecars, tokenizer.json, dataset caches -- goes through `atomic_write`. The recipe:

  1. write to a temporary file in the SAME directory (os.replace is only atomic within one
     filesystem, and /tmp may be another one);
  2. flush and fsync it, so the bytes are on disk before the name points at them (otherwise a
     power cut right after the rename can leave an empty file under the final name);
  3. os.replace it onto the final name -- one atomic step on POSIX and Windows;
  4. on any error (including Ctrl-C) remove the temporary file and re-raise, leaving the old file.

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
import tempfile


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
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # BaseException: a Ctrl-C mid-write must not leave the temp file either
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8 (whatever the platform's default encoding)."""
    atomic_write_bytes(path, text.encode("utf-8"))
