"""Nothing silently wrong: every failure a one-line error that names what to fix, every cache and file
checked before it is trusted, one run per output. Each section is one kind of failure; each
test's docstring names the defect it guards against.

Everything runs in-process through run_main, as each tool's __main__ runs it, except what needs a
second process: a lock held by another run, bytes on a real stdin, a closed pipe.
"""
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import DEMO_TOKENIZER, ROOT, first_lines, one_line_error, small_model

import eval_model
import train_full_sft
import train_lora
import train_pretrain
import train_tokenizer
from dataset import show_sample
from dataset.lm_dataset import DataError, PretrainDataset
from dataset.token_cache import TEMPORARY_FOLDER, cache_problem
from plumbing import errors, flags, run_lock
from formats.checkpoint import save_model
from model.LMConfig import LMConfig
from formats.loader import checkpoint_meta
from model.model import MiniMindLM
from model.model_lora import apply_lora, save_lora
from model.tokenizer import Tokenizer, TokenizerError

SHAPE = ["--dim", "32", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2"]
FAST = ["--device", "cpu", "--max_seq_len", "64", "--batch_size", "8", "--val_samples", "16"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(DEMO_TOKENIZER)


@pytest.fixture(scope="module")
def out(tmp_path_factory, tok):
    """out/full_sft_32.pth (+ sidecar: demo tokenizer, config.max_seq_len 512), out/lora/good_32.pth,
    a damaged adapter out/lora/broken_32.pth, and small data files."""
    folder = tmp_path_factory.mktemp("out")
    model = small_model(tok.vocab_size, max_seq_len=512)
    save_model(model, folder / "full_sft_32.pth", meta=checkpoint_meta("full_sft", DEMO_TOKENIZER, tok))
    apply_lora(model, rank=2, target_modules=["wq"])
    save_lora(model, folder / "lora" / "good_32.pth")
    (folder / "lora" / "broken_32.pth").write_bytes(b"PK\x03\x04 cut short")
    first_lines("sft_demo.jsonl", 40, folder)
    first_lines("pretrain_demo.jsonl", 120, folder)
    (folder / "eval.jsonl").write_text(json.dumps({"question": "Hi?", "answer": "Hello.", "must_contain": ["hello"]}) + "\n",
                                       encoding="utf-8")
    return folder


@pytest.fixture()
def garbage_weights(out, tmp_path):
    """tmp_path/full_sft_32.pth whose weights are garbage but whose sidecar is the good one: a check made
    before the weights load reports its own problem, one made after reports the garbage."""
    (tmp_path / "full_sft_32.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "full_sft_32.json").write_bytes((out / "full_sft_32.json").read_bytes())
    return tmp_path / "full_sft_32.pth"


# ------------------------------------------------------------------------------------------------
# Damaged token caches


def test_a_truncated_or_changed_token_cache_is_rebuilt_not_used(tok, tmp_path, capsys):
    """Guards against a cut token cache being read without complaint (`truncate -s 1000 tokens.bin` gave
    samples of all padding with trained targets, exit 0) and against one whose bytes changed: each is
    found by its recorded size or sha256, said in one line, and rebuilt to the same samples."""
    data = first_lines("pretrain_demo.jsonl", 50, tmp_path)
    ds = PretrainDataset(data, tok, max_length=64, cache_dir=tmp_path / "c")
    before = [ds[i] for i in range(len(ds))]
    tokens = Path(ds.cache_path) / "tokens.bin"
    size = tokens.stat().st_size
    for damage in ("truncate", "flip a byte"):
        if damage == "truncate":
            os.truncate(tokens, 1000)
        else:
            raw = bytearray(tokens.read_bytes())
            raw[10] ^= 0xFF
            tokens.write_bytes(bytes(raw))
        problem = cache_problem(ds.cache_path)
        assert problem == (f"tokens.bin has 1,000 bytes, {size:,} expected" if damage == "truncate"
                           else "tokens.bin does not have the sha256 recorded in meta.json")
        capsys.readouterr()
        again = PretrainDataset(data, tok, max_length=64, cache_dir=tmp_path / "c")
        assert f"token cache {ds.cache_path} is damaged ({problem}); rebuilding it" in capsys.readouterr().err
        assert all(torch.equal(a, b) for x, y in zip(before, (again[i] for i in range(len(again)))) for a, b in zip(x, y))
    assert os.listdir(tmp_path / "c") == [os.path.basename(ds.cache_path)]  # the damaged copy is gone


@pytest.mark.parametrize("meta, problem", [
    ("[" * 100_000 + "]" * 100_000, "meta.json is unreadable (meta.json is nested 100000 levels deep"),
    (json.dumps({"files": {name: {"size": "many", "sha256": ""} for name in
                           ("tokens.bin", "offsets.bin", "spans.bin", "span_offsets.bin")},
                 "samples": 1, "spans": 1, "dtype": "uint16", "skipped": {}, "no_trained_tokens": 0}),
     "meta.json lacks the sizes and checksums"),
], ids=["deeply nested", "a size that is not a number"])
def test_a_damaged_meta_json_is_a_damaged_cache_not_a_traceback(meta, problem, tmp_path):
    """Guards against a token cache's meta.json nested thousands of levels deep (a RecursionError traceback) or
    recording a size that is not a number (a ValueError formatting it): each is a problem that rebuilds the cache."""
    for name in ("tokens.bin", "offsets.bin", "spans.bin", "span_offsets.bin"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "meta.json").write_text(meta)
    assert cache_problem(tmp_path).startswith(problem), cache_problem(tmp_path)


def test_sizes_alone_catch_a_cut_cache_and_an_unrebuildable_one_names_the_folder(tok, tmp_path, monkeypatch):
    """Guards against DDP ranks re-hashing what rank 0 just checked (checksums=False checks sizes only, which
    still catch a cut file), against an old cache without checksums being trusted, and against a damaged
    cache that cannot be moved away (a read-only folder) ending in a traceback instead of naming it."""
    data = first_lines("pretrain_demo.jsonl", 20, tmp_path)
    ds = PretrainDataset(data, tok, max_length=64, cache_dir=tmp_path / "c")
    assert cache_problem(ds.cache_path, checksums=False) is None
    os.truncate(Path(ds.cache_path) / "offsets.bin", 8)
    assert cache_problem(ds.cache_path, checksums=False).startswith("offsets.bin has 8 bytes")

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", read_only)
    with pytest.raises(DataError, match=re.escape(f"token cache {ds.cache_path} is damaged (offsets.bin has 8 bytes")
                       + r".*cannot be rebuilt here \(Permission denied\): delete that folder and run again"):
        PretrainDataset(data, tok, max_length=64, cache_dir=tmp_path / "c", verbose=False)
    monkeypatch.undo()
    meta_path = Path(ds.cache_path) / "meta.json"
    PretrainDataset(data, tok, max_length=64, cache_dir=tmp_path / "c", verbose=False)  # rebuilt
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # as a cache made before checksums were recorded
    meta_path.write_text(json.dumps(meta))
    assert "lacks the sizes and checksums of the files" in cache_problem(ds.cache_path)


# ------------------------------------------------------------------------------------------------
# The tokenizer a model was trained with


def test_a_tokenizer_retrained_in_place_is_refused_by_evaluation_and_sft(tmp_path, tok, capsys):
    """Guards against a checkpoint whose sidecar named its tokenizer by path only: retraining the tokenizer
    at that path (same size, other ids) made every id mean other text, and eval_model.py and
    train_full_sft.py ran on as if nothing had changed. Both must refuse, naming the recorded tokenizer."""
    tok.save(tmp_path / "tok")
    model = small_model(tok.vocab_size)
    save_model(model, tmp_path / "pretrain_32.pth", meta=checkpoint_meta("pretrain", tmp_path / "tok", tok))
    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġand"] = vocab["Ġand"], vocab["Ġthe"]  # "retrained": same size, different ids
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    expected = f"pretrain_32.pth was trained with tokenizer {tmp_path / 'tok'} (sha256 {tok.fingerprint()[:12]}...), " \
               "but the tokenizer there has changed since"
    for main, argv in ((eval_model.main, ["--ckpt", str(tmp_path / "pretrain_32.pth")]),
                       (train_full_sft.main, ["--base", str(tmp_path / "pretrain_32.pth"), "--out_dir", str(tmp_path / "o")])):
        assert expected in one_line_error(main, argv, capsys)


# ------------------------------------------------------------------------------------------------
# Text that is not UTF-8, in a chat and in the tokenizer's message


def test_the_tokenizer_names_the_right_position_of_a_lone_surrogate(tok):
    """Guards against `text holds a lone surrogate 's' at position 1`: the position was that inside one
    chunk of the text, and the character shown was not even the surrogate."""
    for text, position in (("a\udcffb", 1), ("hello wor\udcffld", 9), ("<s>abc</s> x\ud800", 12)):
        with pytest.raises(TokenizerError, match=re.escape(f"lone surrogate {text[position]!r} at position {position},")):
            tok.encode(text)


def test_chat_survives_bytes_that_are_not_utf8(out):
    """Guards against one invalid UTF-8 byte (or a long paste cut mid-character by the terminal) ending a
    chat session with a traceback: on a real stdin (strict UTF-8, as in a UTF-8 terminal) the bytes are
    replaced with U+FFFD, said once, and the session goes on."""
    stdin = b"caf\xe9\n\xe4\xbd\n/lora\n/exit\n"  # Latin-1 'é', then half of a 3-byte character
    result = subprocess.run([sys.executable, "eval_model.py", "--ckpt", str(out / "full_sft_32.pth"), "--out_dir", str(out),
                             "--mode", "chat", "--max_new_tokens", "2", "--device", "cpu"], input=stdin, cwd=ROOT,
                            capture_output=True, timeout=120, env={**ENV, "PYTHONIOENCODING": "utf-8:strict"})
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 0 and "Traceback" not in stderr, stderr
    assert stdout.count("were replaced with \ufffd") == 1 and stdout.count("🤖: ") == 2, stdout
    assert "available: broken, good" in stdout  # the session went on to the next command


# ------------------------------------------------------------------------------------------------
# A checkpoint without a sidecar is checked like any other


@pytest.mark.parametrize("content", ["truncated", "empty", "random", "list"])
def test_a_damaged_checkpoint_without_sidecar_is_a_one_line_error(content, out, tmp_path, capsys):
    """Guards against `eval_model.py --ckpt FILE` on a file without a sidecar (every MiniMind2 checkpoint)
    bypassing the checked loader: a truncated, empty, random or list-holding file gave a torch traceback,
    with flags or without them."""
    path = tmp_path / "model.pth"
    good = (out / "full_sft_32.pth").read_bytes()
    if content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes({"truncated": good[:len(good) // 2], "empty": b"", "random": os.urandom(4096)}[content])
    for shape_flags in ([], [*SHAPE, "--tokenizer", str(DEMO_TOKENIZER)]):
        err = one_line_error(eval_model.main, ["--ckpt", str(path), "--device", "cpu", *shape_flags], capsys)
        assert f"{path} is not a usable checkpoint: " in err


# ------------------------------------------------------------------------------------------------
# Damaged tokenizer files


def _damage(spec, how):
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    if how == "no merges":
        del spec["model"]["merges"]
    elif how == "no vocab":
        del spec["model"]["vocab"]
    elif how == "malformed merge":
        merges[5] = 17
    elif how == "two tokens, one id":
        vocab["Ġand"] = vocab["Ġthe"]
    elif how == "added token on another token's id":
        spec["added_tokens"][0]["id"] = vocab["Ġthe"]
    return spec


@pytest.mark.parametrize("how, problem", [
    ("no merges", 'no "model": {"merges": [...]}'),
    ("no vocab", 'no "model": {"vocab": {token: id, ...}}'),
    ("malformed merge", "merge #5 17 is not a pair of tokens"),
    ("two tokens, one id", "vocab entries 'Ġthe' and 'Ġand' both have id"),
    ("added token on another token's id", "added token '<unk>' has id"),
    ("cut short", "is not valid JSON (line"),
])
def test_a_damaged_tokenizer_json_is_one_line_naming_the_file(how, problem, tmp_path, capsys):
    """Guards against KeyError/TypeError tracebacks for a tokenizer.json without merges or vocab or with a
    malformed merge, a JSON error that does not name the file, and two tokens with one id accepted (one of
    them then silently unreachable)."""
    text = (DEMO_TOKENIZER / "tokenizer.json").read_text(encoding="utf-8")
    (tmp_path / "tok").mkdir()
    file = tmp_path / "tok" / "tokenizer.json"
    if how == "cut short":
        file.write_text(text[:5000], encoding="utf-8")
    else:
        file.write_text(json.dumps(_damage(json.loads(text), how), ensure_ascii=False), encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(f"{file}") + ".*" + re.escape(problem)):
        Tokenizer.load(tmp_path / "tok")
    err = one_line_error(show_sample.main, ["--show", str(ROOT / "dataset" / "sft_demo.jsonl"), "--tokenizer",
                                           str(tmp_path / "tok")], capsys)
    assert str(file) in err and problem in err


# ------------------------------------------------------------------------------------------------
# Ctrl-C and closed pipes


def ctrl_c_once(real):
    """A stand-in for `real` whose first call is interrupted by a real SIGINT (what Ctrl-C sends)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)
    return wrapped


def test_ctrl_c_during_a_chat_reply_stops_the_reply_not_the_session(out, monkeypatch, capsys):
    """Guards against Ctrl-C during a reply ending the chat with a traceback (and the history lost): the
    reply stops, and the session and its history go on."""
    monkeypatch.setattr(eval_model, "reply", ctrl_c_once(eval_model.reply))
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n/exit\n"))
    argv = ["--ckpt", str(out / "full_sft_32.pth"), "--mode", "chat", "--max_new_tokens", "2", "--device", "cpu"]
    assert errors.run_main(eval_model.main, argv) == 0
    stdout = capsys.readouterr().out
    assert "(reply stopped; Ctrl-C at the prompt ends the chat)" in stdout and stdout.count("🤖: ") == 2


@pytest.mark.parametrize("where", ["scoring", "train_tokenizer"])
def test_ctrl_c_while_scoring_or_training_a_tokenizer_is_a_clean_exit_130(where, out, tmp_path, monkeypatch, capsys):
    """Guards against Ctrl-C during scoring or in train_tokenizer.py ending in a traceback: one line, exit 130."""
    if where == "scoring":
        monkeypatch.setattr(eval_model, "evaluate_set", ctrl_c_once(eval_model.evaluate_set))
        main, argv = eval_model.main, ["--ckpt", str(out / "full_sft_32.pth"), "--eval_data", str(out / "eval.jsonl"),
                                       "--device", "cpu"]
    else:
        monkeypatch.setattr(train_tokenizer, "train_bpe", ctrl_c_once(train_tokenizer.train_bpe))
        main, argv = train_tokenizer.main, ["--data_path", str(out / "sft_demo.jsonl"), "--tokenizer", str(tmp_path / "t")]
    capsys.readouterr()
    assert errors.run_main(main, argv) == errors.INTERRUPTED_EXIT == 130
    err = capsys.readouterr().err
    assert err.strip().endswith(": interrupted") and "Traceback" not in err


def test_a_closed_pipe_ends_quietly_with_141(out):
    """Guards against `eval_model.py ... | head -2` ending in a BrokenPipeError traceback: the reader went
    away, so the tool stops without a word, with 128 + SIGPIPE as a Unix tool killed by it would."""
    process = subprocess.Popen([sys.executable, "eval_model.py", "--ckpt", str(out / "full_sft_32.pth"), "--json",
                                "--max_new_tokens", "2", "--device", "cpu"], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head` does once it has its lines: every later write meets a closed pipe
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == errors.BROKEN_PIPE_EXIT == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# ------------------------------------------------------------------------------------------------
# A full disk and unusable output folders


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(out, tmp_path, monkeypatch, capsys):
    """Guards against a full disk while saving ending in a 40-line chained traceback (torch.save's
    RuntimeError "unexpected pos" over the real OSError): one line, the checkpoint of the previous save
    intact, no temporary file left."""
    folder = tmp_path / "run"
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd):
            self.f = real_fdopen(fd, "wb")

        def writable(self):
            return True

        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            self.f.close()
            super().close()

    def fdopen(fd, mode="r", *args, **kwargs):  # the disk fills up once the first checkpoint is saved
        return FullDisk(fd) if (folder / "pretrain_32_resume.pth").exists() else real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    argv = [*SHAPE, *FAST, "--out_dir", str(folder), "--tokenizer", str(DEMO_TOKENIZER), "--data_path",
            str(out / "pretrain_demo.jsonl"), "--save_interval", "4", "--epochs", "2"]
    checkpoint = folder / "pretrain_32.pth"
    seen = {}
    real_save = train_pretrain.save_model

    def save_and_remember(model, path, meta):
        real_save(model, path, meta)
        seen.setdefault("first", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    monkeypatch.setattr(train_pretrain, "save_model", save_and_remember)
    err = one_line_error(train_pretrain.main, argv, capsys)
    assert err == f"cannot write {checkpoint}: No space left on device; the previous file is unchanged"
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == seen["first"]
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


@pytest.mark.parametrize("case", ["out_dir is a file", "out_dir name too long", "lora folder is a file", "tokenizer out_dir"])
def test_out_dir_problems_are_found_before_anything_loads(case, tmp_path, capsys):
    """Guards against --out_dir problems found only when the first file is saved, after the model and the
    data have loaded (or trained), as a traceback: an existing file, a name too long, out_dir/lora a file.
    Each is found first: before even the missing --tokenizer / --base / --data_path below is looked at."""
    (tmp_path / "file").write_text("")
    (tmp_path / "out" / "lora").parent.mkdir()
    (tmp_path / "out" / "lora").write_text("")
    missing = str(tmp_path / "missing")
    if case == "out_dir is a file":
        main, argv, message = train_pretrain.main, ["--out_dir", str(tmp_path / "file"), "--tokenizer", missing], "is a file, not a folder"
    elif case == "out_dir name too long":
        main, argv, message = train_full_sft.main, ["--out_dir", str(tmp_path / ("x" * 300)), "--base", missing], "(File name too long)"
    elif case == "lora folder is a file":
        main, argv, message = train_lora.main, ["--out_dir", str(tmp_path / "out"), "--base", missing], "lora is a file, not a folder"
    else:
        main, argv, message = train_tokenizer.main, ["--tokenizer", str(tmp_path / "file"), "--data_path", missing], "is a file, not a folder"
    assert message in one_line_error(main, argv, capsys)


def test_a_full_disk_while_claiming_the_out_dir_is_one_line_and_leaves_no_half_note(tmp_path, monkeypatch):
    """Guards against a full disk when the run lock writes who holds it: an OSError traceback, and half a JSON
    note left in OUT_DIR/.pretrain.lock. Now one UserError line, and the lock file empty (read as "starting up")."""
    real_pwrite = os.pwrite

    def half_then_full(fd, data, offset):  # the disk fills up part way through the note
        real_pwrite(fd, data[:10], offset)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(errors.UserError) as caught:
        with run_lock.claim_out_dir(tmp_path, "pretrain"):
            raise AssertionError("the run went on without its lock note")
    assert str(caught.value) == (f"cannot write {tmp_path / '.pretrain.lock'}: No space left on device; free some space, "
                                 "or pass another --out_dir")
    assert (tmp_path / ".pretrain.lock").read_bytes() == b""


# ------------------------------------------------------------------------------------------------
# One run per output


def test_a_second_run_of_the_same_output_is_refused_naming_the_first_and_another_output_runs(tmp_path, capsys):
    """Guards against two runs of one output in one --out_dir both running (interleaved metrics, one shared
    resume file, the last writer's weights): the second stops at once, naming the first; and once the first
    is killed (kill -9, no clean-up) its lock is gone with it. A run of another output (the other adapter,
    which the demo trains side by side) is not held up."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from plumbing.run_lock import claim_out_dir
        with claim_out_dir({str(tmp_path)!r}, "pretrain"):
            print("holding", flush=True)
            sys.stdin.read()
        """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        err = one_line_error(train_pretrain.main, ["--out_dir", str(tmp_path), "--tokenizer", str(tmp_path / "missing")], capsys)
        assert err.startswith(f"{tmp_path} is in use by another run of pretrain (pid {holder.pid} on ") and "-c" in err
        with run_lock.claim_out_dir(tmp_path, "lora_identity", also=["lora"]):  # another output: free
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock.claim_out_dir(tmp_path, "pretrain"):  # released by the kernel when the holder died
        pass


def test_under_torchrun_only_rank_0_claims_the_output(tmp_path):
    """Guards against every DDP rank taking the lock (rank 1 would find it held by rank 0 and stop)."""
    with run_lock.claim_out_dir(tmp_path, "pretrain", is_main=True):
        with run_lock.claim_out_dir(tmp_path, "pretrain", is_main=False):
            pass
        with pytest.raises(errors.UserError, match="is in use by another run of pretrain"):
            with run_lock.claim_out_dir(tmp_path, "pretrain", is_main=True):
                pass


# ------------------------------------------------------------------------------------------------
# What a killed run leaves behind


def test_the_run_holding_the_lock_removes_its_own_stale_temporary_files(tmp_path, capsys):
    """Guards against the checkpoint-sized `.NAME.xxxxxxxx.tmp` files of runs killed while saving
    (kill -9 skips atomic_write's clean-up) staying forever in out/ and out/lora/ -- and against a run
    deleting the temporary file of another output, whose run may be saving it right now."""
    (tmp_path / "lora").mkdir()
    stale = [tmp_path / ".lora_medical_128_metrics.jsonl.k3j9x_2a.tmp", tmp_path / "lora" / ".lora_medical_128.pth.abcdefgh.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / "lora" / "lora_medical_128.pth",
            tmp_path / "lora" / ".lora_identity_128.pth.abcdefgh.tmp", tmp_path / "lora" / ".lora_medical_v2_128.pth.abcdefgh.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    with run_lock.claim_out_dir(tmp_path, "lora_medical", also=["lora"]):
        pass
    assert [p.exists() for p in stale + kept] == [False, False, True, True, True, True]
    assert "removed 2 temporary file(s) (0.0 MB)" in capsys.readouterr().err


def test_a_cache_build_removes_the_temporary_folders_of_dead_builders(tok, tmp_path):
    """Guards against the temporary folders of cache builders killed with kill -9 staying forever: a build
    removes those of builders on this host that no longer run, and leaves a running one's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    cache = tmp_path / "c"
    cache.mkdir()
    names = {"dead": f"x.jsonl.pretrain.len64.0123.tmp-{host}-{dead.pid}-abcd_123",
             "running": f"x.jsonl.pretrain.len64.0123.tmp-{host}-{os.getppid()}-abcd_123",
             "other host": f"x.jsonl.pretrain.len64.0123.tmp-elsewhere-{dead.pid}-abcd_123"}
    for name in names.values():
        assert TEMPORARY_FOLDER.fullmatch(name)
        (cache / name).mkdir()
    PretrainDataset(first_lines("pretrain_demo.jsonl", 5, tmp_path), tok, max_length=64, cache_dir=cache, verbose=False)
    assert {k: (cache / n).exists() for k, n in names.items()} == {"dead": False, "running": True, "other host": True}


# ------------------------------------------------------------------------------------------------
# Switching adapters in a chat (/lora)


def test_chat_lora_stays_inside_out_lora_and_a_failed_switch_keeps_the_adapter(out, monkeypatch, capsys):
    """Guards against `/lora ../../x` loading a file outside out/lora, a listing that shows names /lora
    cannot load, and a failed `/lora` (a damaged adapter file) quietly dropping the active adapter."""
    commands = "/lora ../../x\n/lora\n/lora good\n/lora broken\n/lora\nhello\n/exit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(commands))
    argv = ["--ckpt", str(out / "full_sft_32.pth"), "--out_dir", str(out), "--mode", "chat", "--max_new_tokens", "2",
            "--device", "cpu"]
    assert errors.run_main(eval_model.main, argv) == 0
    stdout = capsys.readouterr().out
    assert "(error: adapter name '../../x' must be a plain name" in stdout
    assert "adapter: none; available: broken, good" in stdout and "(now: +good; history cleared)" in stdout
    assert f"(error: {out / 'lora' / 'broken_32.pth'} is not a usable checkpoint" in stdout and "; still +good)" in stdout
    assert "adapter: good; available: broken, good" in stdout


# ------------------------------------------------------------------------------------------------
# Flags checked before anything loads


@pytest.mark.parametrize("tool, argv, message", [
    # the model's positions: right after the sidecar is read, before the (garbage) weights
    ("eval_model", ["--max_seq_len", "600"], "--max_seq_len 600 is more than the 512 positions of"),
    ("train_full_sft", ["--max_seq_len", "600"], "--max_seq_len 600 is more than the 512 positions of"),
    ("train_lora", ["--max_seq_len", "600"], "--max_seq_len 600 is more than the 512 positions of"),
    # flags that used to be checked only once the model had loaded, or not at all
    ("train_lora", ["--lora_rank", "0"], "--lora_rank must be at least 1"),
    ("train_lora", ["--lora_targets", "wq,wz"], "--lora_targets: 'wz' is not a Linear of the model"),
    ("train_lora", ["--lora_plus_ratio", "nan"], "--lora_plus_ratio must be a positive number"),
    ("train_full_sft", ["--data_path", "{tmp}/none.jsonl"], "--data_path {tmp}/none.jsonl not found"),
    ("train_full_sft", ["--num_workers", "-1"], "--num_workers must be 0 or more"),
    ("eval_model", ["--eval_data", "{tmp}/none.jsonl"], "evaluation file {tmp}/none.jsonl not found"),
    # checked before loading already, and kept so
    ("eval_model", ["--max_seq_len", "1"], "--max_seq_len must be at least 2"),
    ("eval_model", ["--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
    ("eval_model", ["--batch_size", "0"], "--batch_size must be at least 1"),
    ("eval_model", ["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    ("train_full_sft", ["--batch_size", "0"], "--batch_size must be at least 1"),
    ("train_full_sft", ["--learning_rate", "inf"], "--learning_rate must be a positive number"),
] + ([("eval_model", ["--device", "cuda"], "this machine has no CUDA GPU")] if not torch.cuda.is_available() else []),
    ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_every_flag_is_checked_before_anything_loads(tool, argv, message, garbage_weights, tmp_path, capsys):
    """Guards against flags checked late or not at all (`--max_seq_len` beyond the model's positions
    failing at the first long batch, a bad --lora_rank or --eval_data reported after the model loaded):
    the base here has garbage weights, so a check made after loading would report them instead."""
    module = {"eval_model": eval_model, "train_full_sft": train_full_sft, "train_lora": train_lora}[tool]
    where = ["--ckpt" if tool == "eval_model" else "--base", str(garbage_weights)]
    if tool != "eval_model":
        where += ["--out_dir", str(tmp_path / "o")]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert message.replace("{tmp}", str(tmp_path)) in one_line_error(module.main, [*where, *argv], capsys)


def test_pretraining_checks_the_window_against_the_models_positions(tmp_path, capsys):
    """Guards against `train_pretrain.py --max_seq_len 9000` training on (samples are cut to the window, so
    short data never reaches position 8192) or failing at the first long batch."""
    err = one_line_error(train_pretrain.main, ["--max_seq_len", "9000", "--out_dir", str(tmp_path)], capsys)
    assert err == "--max_seq_len 9000 is more than the 8192 positions of the model (its config.max_seq_len); pass at most 8192"


def test_the_lora_targets_checked_before_loading_are_the_models_linears():
    """Guards against plumbing.flags.LINEAR_NAMES (checked before the model exists) drifting from the model,
    dense or a mixture of experts (whose router, 'gate', is a Linear too)."""
    linears = set()
    for use_moe in (False, True):
        model = MiniMindLM(LMConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=300, use_moe=use_moe))
        linears |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears == set(flags.LINEAR_NAMES)


# ------------------------------------------------------------------------------------------------
# Data files: evaluation read as training is, errors that name flags, paths from any directory


def test_evaluation_files_are_read_as_training_files_are(out, tmp_path, capsys):
    """Guards against an evaluation file with a byte-order mark being refused while a training file with one
    is accepted, and against invalid UTF-8 or a "\\ud800" escape in one ending in a traceback."""
    record = json.dumps({"question": "Hi?", "answer": "Hello.", "must_contain": ["hello"]})
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + record.encode() + b"\n")
    assert eval_model.load_eval_set(tmp_path / "bom.jsonl")[0]["question"] == "Hi?"
    (tmp_path / "bad.jsonl").write_bytes(record.encode() + b"\n" + record.encode().replace(b"Hi", b"H\xe9") + b"\n")
    (tmp_path / "escape.jsonl").write_text(record.replace("Hi?", "Hi\\ud800") + "\n", encoding="utf-8")
    for name, problem in (("bad", ":2: invalid UTF-8 at byte"), ("escape", ":1: 'question' holds a lone surrogate")):
        err = one_line_error(eval_model.main, ["--ckpt", str(out / "full_sft_32.pth"), "--eval_data",
                                               str(tmp_path / f"{name}.jsonl"), "--device", "cpu"], capsys)
        assert f"{tmp_path / name}.jsonl{problem}" in err


def test_a_strict_run_after_a_skip_run_names_the_flag(tok, tmp_path):
    """Guards against the error after a --skip_bad_lines run telling a command-line user to pass
    `skip_bad=True`, a name only the code knows."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "fine"}\n{oops\n', encoding="utf-8")
    PretrainDataset(str(path), tok, max_length=16, skip_bad=True, cache_dir=tmp_path / "c", verbose=False)
    with pytest.raises(DataError, match=r"\[1 bad lines; --skip_bad_lines \(skip_bad=True in code\) skips them\]"):
        PretrainDataset(str(path), tok, max_length=16, cache_dir=tmp_path / "c")


def test_a_directory_as_data_path_is_named_and_default_paths_work_from_any_directory(tmp_path, capsys, monkeypatch):
    """Guards against a directory given as --data_path reported as "not found", and against the default
    --tokenizer and --data_path being relative to the current directory (run from outside the repository,
    train_pretrain.py could not find them)."""
    err = one_line_error(train_pretrain.main, ["--data_path", str(tmp_path), "--out_dir", str(tmp_path / "o")], capsys)
    assert err == f"--data_path {tmp_path} is a directory; pass a jsonl file"
    monkeypatch.chdir(tmp_path)
    for module in (train_pretrain, train_full_sft, train_lora, train_tokenizer):
        args = module.build_parser().parse_args([])
        for path in [getattr(args, "tokenizer", None) or DEMO_TOKENIZER, *([args.data_path] if isinstance(args.data_path, str) else args.data_path)]:
            assert os.path.isabs(path) and os.path.exists(path), (module.__name__, path)
