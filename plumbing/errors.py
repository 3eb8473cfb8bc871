"""One error type for the problems a user can fix, and one way every command-line tool reports them.

A missing file, a flag out of range, a checkpoint that does not fit the model, a bad data record:
the person running the command can fix each of these, so they deserve one line that says what is
wrong and how to fix it -- not a 40-line traceback. Every module raises `UserError` (or a subclass
that names the kind: `CheckpointError`, `DataError`, ...) for such problems, and every script's
`__main__` goes through `run_main`, which prints

    train_lora.py: error: out/full_sft_128.pth not found: make it with `python train_full_sft.py --dim 128`

on stderr and exits with code 2: the form and the code argparse itself uses for a bad flag, so a
caller sees one convention whatever went wrong. Anything else (a bug) keeps its traceback.

Two more ways a command ends that are not bugs, handled here once for every tool:
  - Ctrl-C: one line (`on_interrupt`, e.g. how to resume) and exit code 130, the shell's 128 + SIGINT;
  - the reader of a pipe went away (`python eval_model.py | head -2`): no output, no traceback, exit
    code 141, the 128 + SIGPIPE that `yes | head` reports for `yes`, so `set -o pipefail` sees what it
    sees for any Unix tool.

Standard library only, so the data scripts can use it without importing torch.
"""
import os
import sys

USER_ERROR_EXIT = 2  # argparse's exit code for a bad command line; ours for every user error
INTERRUPTED_EXIT = 130  # the shell's convention for a program stopped by Ctrl-C (128 + SIGINT)
BROKEN_PIPE_EXIT = 141  # ... and for one whose output pipe was closed by its reader (128 + SIGPIPE)


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it, in one line."""


def run_main(main, argv=None, on_interrupt="interrupted") -> int:
    """Run `main(argv)` and turn a UserError into `PROG: error: MESSAGE` on stderr and exit code 2.

    Ctrl-C prints `on_interrupt` (e.g. how to resume) and exits with 130; a closed output pipe exits
    quietly with 141. Under torchrun only rank 0 reports: every rank meets the same error, and N copies
    of one line would be noise.
    Use: `sys.exit(run_main(main))` under `if __name__ == "__main__":`.
    """
    prog = os.path.basename(sys.argv[0]) or "python"
    is_main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        main(argv)
        sys.stdout.flush()  # output still buffered meets a closed pipe here, where it can be handled
        return 0
    except BrokenPipeError:
        # Python's documented recipe: point stdout at /dev/null, so that the flush at interpreter exit
        # does not fail a second time ("Exception ignored ... BrokenPipeError").
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (a test's capture): nothing to silence
            pass
        return BROKEN_PIPE_EXIT
    except UserError as e:
        if is_main_rank:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        if is_main_rank:
            print(f"\n{prog}: {on_interrupt}", file=sys.stderr)
        return INTERRUPTED_EXIT
