"""One run per output: a lock on OUT_DIR/.NAME.lock, held from before anything loads to the end.

Two runs that write the same output (the same stage, or the same adapter) into one --out_dir would
otherwise both run, and spoil each other without a word: their metrics lines interleave in one log,
they share one resume file, and whichever saves last wins the weights. So each training script claims
its output first, by the name its files start with:

    with claim_out_dir(args.out_dir, args.lora_name, also=["lora"]):   # a second run stops here, in one line
        ... load, train, save ...

and a second run of the same output is refused with who holds it:

    train_lora.py: error: out is in use by another run of lora_medical (pid 4242 on gpu1, since 2025-06-01
    12:00:03: train_lora.py --lora_name lora_medical); wait for it to finish, or pass another --out_dir

Runs of *different* outputs share a folder freely: the demo trains lora_medical and lora_identity side
by side in out/, each writing only its own files (lora/NAME_DIM.pth, NAME_DIM_metrics.jsonl, ...).

The lock is `fcntl.flock` on OUT_DIR/.NAME.lock, and the kernel releases it when the process ends,
however it ends (an error, Ctrl-C, kill -9, a power cut): a dead run's lock never blocks the next one,
and there is nothing to clean up by hand. The file's text (pid, host, command, start time) is only for
the message. The file is never deleted: a run that deleted it on the way out would let a third run
lock a new file of the same name while a second one still holds the old one.

Claiming also checks the folder, before the model and the data load: --out_dir naming a file, a folder
that cannot be created (a name too long, no permission) or written, is one UserError. And once the
lock is held no other run can be writing NAME's files, so the temporary files a run of NAME killed
while saving left behind (plumbing/atomic.py: stale_temporaries, as big as a checkpoint) are removed;
other outputs' are left alone: their runs may be saving right now.

Under torchrun only rank 0 claims the output (the other ranks write nothing). Across machines that
share the folder over NFS the lock holds too: Linux emulates flock there with a whole-file fcntl lock.
Without fcntl (Windows) the folder is checked and cleaned but not locked.
"""
import errno
import json
import os
import re
import shlex
import socket
import sys
import time
from contextlib import contextmanager

from plumbing.atomic import stale_temporaries
from plumbing.errors import UserError
from plumbing.untrusted_json import loads

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_SUFFIX = ".lock"  # OUT_DIR/.NAME.lock, one per output


def make_out_dir(folder, flag="--out_dir"):
    """Create `folder` if needed, or a UserError saying why it cannot be one (a file has its name, the
    name is too long, no permission). Also for tools that write a folder without locking it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder} is a file, not a folder; move the file away, or pass another {flag} "
                        "(a folder is created if missing)")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {folder} cannot be created ({e.strerror}); pass another {flag}") from None


def _holder(fd) -> str:
    """What the lock file says about the run holding it, e.g. 'pid 4242 on gpu1, since ...: train_lora.py ...'."""
    try:
        info = loads(os.pread(fd, 4096, 0), "the lock file")  # JSONError is a ValueError
        return f"pid {info['pid']} on {info['host']}, since {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):  # empty: that run is writing it right now
        return "starting up"


def _write_holder(fd, path) -> None:
    """Write who holds the lock into its file, or a UserError (a full disk) that leaves the file empty: a run
    that cannot write a few bytes here could not save a checkpoint either, so it stops before it trains."""
    command = shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:300]
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    data = (json.dumps(info) + "\n").encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        if os.pwrite(fd, data, 0) != len(data):  # a short write: the disk filled up part way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        try:
            os.ftruncate(fd, 0)  # no half a note: _holder reads an empty file as "starting up"
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {e.strerror or e}; free some space, or pass another --out_dir") from None


def _remove_stale_temporaries(folders, name) -> None:
    """Delete what a killed run of `name` left behind in its atomic writes (.NAME_128.pth.xxxxxxxx.tmp,
    .NAME_128_metrics.jsonl..., a _moe model's too); one line on stderr if there was any."""
    own = re.compile(rf"\.{re.escape(name)}_\d+(_moe)?[._].*")
    found = [path for folder in folders for path in stale_temporaries(folder) if own.fullmatch(os.path.basename(path))]
    if not found:
        return
    size = sum(os.path.getsize(p) for p in found)
    for path in found:
        os.remove(path)
    print(f"removed {len(found)} temporary file(s) ({size / 1e6:,.1f} MB) left in {folders[0]} by a run of {name} "
          "killed while saving", file=sys.stderr)


@contextmanager
def claim_out_dir(out_dir, name, also=(), is_main=None):
    """Check and create out_dir (and its subfolders `also`, e.g. ["lora"]), hold the lock of output `name`
    (a stage, "pretrain", or an adapter, "lora_medical") in it for the body, and remove the stale
    temporary files of that output in out_dir and out_dir/lora.

    is_main: whether this process claims the output; default: rank 0 under torchrun, else True.
    Raises UserError when another run holds the output, or the folder cannot be one we write in.
    """
    if is_main is None:
        is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:
        yield
        return
    out_dir = os.fspath(out_dir)
    make_out_dir(out_dir)
    for sub in also:
        make_out_dir(os.path.join(out_dir, sub), flag=f"OUT_DIR/{sub} of --out_dir")
    path = os.path.join(out_dir, f".{name}{LOCK_SUFFIX}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"--out_dir {out_dir} is not writable ({e.strerror}); pass another --out_dir") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # NB: fail at once instead of waiting
            except BlockingIOError:
                raise UserError(f"{out_dir} is in use by another run of {name} ({_holder(fd)}); wait for it to "
                                "finish, or pass another --out_dir (one run per output)") from None
        _write_holder(fd, path)
        _remove_stale_temporaries([out_dir, os.path.join(out_dir, "lora")], name)
        yield
    finally:
        os.close(fd)  # releases the lock
