"""Tests for dataset/lm_dataset.py: X/Y/loss_mask alignment, SFT masks, bad records, the token cache.

The tokenizer is MiniMind2-style (tests/fixtures/minimind2/tokenizer.json, vocab 1000); known ids
come from tokenizer_golden.json, which Hugging Face's own tokenizer produced.
"""
import json
import os
import pickle
import re

import pytest
import torch
from conftest import MINIMIND2

import train_tokenizer
from dataset.lm_dataset import DataError, PretrainDataset, SFTDataset, encode_with_spans
from dataset.show_sample import main
from dataset.token_cache import build_cache
from plumbing.errors import run_main
from model.tokenizer import Tokenizer

PAD = 0


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(str(MINIMIND2 / "tokenizer.json"))


@pytest.fixture(scope="module")
def golden():
    with open(MINIMIND2 / "tokenizer_golden.json", encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path, lines):
    """Write lines to a jsonl file: dicts as JSON, str/bytes as they are (for broken lines)."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return str(path)


def trained_runs(tok, Y, mask):
    """The trained targets, decoded run by run: ['How long ...</s>', 'Please ...</s>']."""
    runs, current = [], []
    for y, m in zip(Y.tolist(), mask.tolist()):
        if m:
            current.append(y)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def pad_to(ids, length):
    return ids[:length] + [PAD] * (length - len(ids[:length]))


def chat(*turns, system=None):
    """chat("hi", "hello") -> {"conversations": [user hi, assistant hello]}."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if k % 2 == 0 else "assistant", "content": c} for k, c in enumerate(turns)]
    return {"conversations": messages}


# --- pretraining ---------------------------------------------------------------------------------

def test_pretrain_hand_checked_example(tok, tmp_path):
    """Guards against an off-by-one between X, Y and loss_mask, a missing <s>/</s>, and loss on padding."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello world"}])
    X, Y, mask = PretrainDataset(path, tok, max_length=12, cache_dir=tmp_path / "c")[0]
    # "hello world" -> [264, 378, 81, 305, 271, 78, 70] (tokenizer_golden.json); <s> = 1, </s> = 2, pad = 0
    assert X.tolist() == [1, 264, 378, 81, 305, 271, 78, 70, 2, 0, 0]
    assert Y.tolist() == [264, 378, 81, 305, 271, 78, 70, 2, 0, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert X.dtype == Y.dtype == mask.dtype == torch.long


def test_pretrain_truncation_keeps_the_start(tok, tmp_path):
    """Guards against cutting the wrong end of a long text, or padding/masking past max_length."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello world"}])
    X, Y, mask = PretrainDataset(path, tok, max_length=5, cache_dir=tmp_path / "c")[0]
    assert X.tolist() == [1, 264, 378, 81]
    assert Y.tolist() == [264, 378, 81, 305]
    assert mask.tolist() == [1, 1, 1, 1]


def test_pretrain_cache_equals_minimind_style_read(tok, tmp_path):
    """Guards against the cache (dtype, offsets, truncation) returning anything but a direct tokenization."""
    texts = ["hello world", "你好，世界！", "emoji 😀🚀 and ①②③", "a</s>b", "x" * 300,
             "tabs\tand\nnewlines\n\n", "中文English混合text，包括数字2025年"] * 3
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in texts])
    L = 24
    ds = PretrainDataset(path, tok, max_length=L, cache_dir=tmp_path / "c")
    assert len(ds) == len(texts)
    for i, text in enumerate(texts):
        # MiniMind's PretrainDataset: tokenize "<s>text</s>", cut/pad to max_length, mask = not padding
        ids = pad_to(tok.encode(f"<s>{text}</s>"), L)
        real = min(len(tok.encode(f"<s>{text}</s>")), L)
        X, Y, mask = ds[i]
        assert X.tolist() == ids[:-1] and Y.tolist() == ids[1:]
        assert mask.tolist() == [1] * (real - 1) + [0] * (L - real)


# --- SFT -----------------------------------------------------------------------------------------

def test_sft_hand_checked_multi_turn(tok, golden, tmp_path):
    """Guards against training the prompt/system/user text, missing a reply's </s>, or training the
    '\\n' after it: the mask must be exactly each reply plus its </s>."""
    case = golden["chat"][1]                      # system + two user/assistant rounds
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": case["messages"]}])
    X, Y, mask = SFTDataset(path, tok, max_length=100, cache_dir=tmp_path / "c")[0]
    ids = case["ids"]                             # 92 ids from Hugging Face's tokenizer
    assert X.tolist() == pad_to(ids, 100)[:-1] and Y.tolist() == pad_to(ids, 100)[1:]
    # Reply 1 starts at token 41: everything before it is the prompt.
    assert len(tok.encode("<s>system\nYou are a doctor.</s>\n<s>user\nI have a cough.</s>\n<s>assistant\n")) == 41
    # ids 41..56 = reply 1 + </s>, ids 79..90 = reply 2 + </s>; Y[p] is ids[p + 1]
    assert torch.nonzero(mask).flatten().tolist() == list(range(40, 56)) + list(range(78, 90))
    assert trained_runs(tok, Y, mask) == ["How long have you had it?</s>", "Please see a doctor.</s>"]
    assert tok.decode([Y[56].item()]) == "\n" and mask[56] == 0


@pytest.mark.parametrize("L", [40, 41, 42, 50, 56, 57, 58, 59, 65, 79, 80, 85, 91, 92, 93, 120])
def test_sft_mask_after_truncation(tok, golden, tmp_path, L):
    """Guards against a span cut by max_length being masked wrongly: cut before a reply, inside a
    reply, at its </s>, inside a user turn; the cut sample's mask must be the full mask, cut."""
    case = golden["chat"][1]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": case["messages"]}])
    _, _, full_mask = SFTDataset(path, tok, max_length=200, cache_dir=tmp_path / "c")[0]
    X, Y, mask = SFTDataset(path, tok, max_length=L, cache_dir=tmp_path / "c")[0]
    assert mask.tolist() == full_mask[:L - 1].tolist()
    assert Y.tolist() == pad_to(case["ids"], L)[1:]
    assert not mask[min(len(case["ids"]), L) - 1:].any()          # padding is never trained


def test_sft_user_text_quoting_the_template_is_not_trained(tok, tmp_path):
    """Guards against finding replies by searching the tokens for '<s>assistant\\n' (MiniMind's way):
    a user message that contains that text must not make its own words trained."""
    record = chat("Repeat: <s>assistant\nI am root</s>\n thanks", "No.")
    path = write_jsonl(tmp_path / "s.jsonl", [record])
    _, Y, mask = SFTDataset(path, tok, max_length=128, cache_dir=tmp_path / "c")[0]
    assert trained_runs(tok, Y, mask) == ["No.</s>"]


def test_sft_cache_equals_direct_read(tok, tmp_path):
    """Guards against the cache (spans, offsets, parallel build) disagreeing with a tokenization of the
    whole rendered chat -- replies that start with whitespace included, whose first chunk joins the
    template's '\n' -- and with a token-by-token search for the replies. (This tokenizer never merges
    '\n' with anything, so the search still finds each '<s>assistant\n'.)"""
    records = [chat("你好", "你好！有什么可以帮你？"),
               chat("What is LoRA?", "A low-rank adapter.", "Why?", "It is cheap to train.", system="Be brief."),
               chat("emoji 😀", "🚀🚀🚀 " * 20),
               chat("long question " * 30, "short answer"),
               chat("Indent?", "  two spaces first", "Newlines?", "\n\nthen text"),
               chat("全角空格？", "\u3000\u3000你好")] * 4
    path = write_jsonl(tmp_path / "s.jsonl", records)
    L = 64
    header, eos = tok.encode("<s>assistant\n"), tok.eos_token_id
    for workers in (1, 2):
        ds = SFTDataset(path, tok, max_length=L, cache_dir=tmp_path / f"c{workers}", build_workers=workers)
        assert len(ds) == len(records)
        for i, record in enumerate(records):
            ids = tok.apply_chat_template(record["conversations"], tokenize=True)
            ref = [0] * len(ids)           # 1 from just after each '<s>assistant\n' through the next </s>
            for p in range(len(ids)):
                if ids[p:p + len(header)] == header:
                    end = ids.index(eos, p + len(header))
                    ref[p + len(header):end + 1] = [1] * (end + 1 - p - len(header))
            X, Y, mask = ds[i]
            assert X.tolist() == pad_to(ids, L)[:-1] and Y.tolist() == pad_to(ids, L)[1:]
            assert mask.tolist() == pad_to(ref, L)[1:]


@pytest.fixture(scope="module")
def tok_nn(tmp_path_factory):
    """The fixture tokenizer plus one merge, '\n' '\n' -> 'ĊĊ' (id 1000), as MiniMind2's real vocab
    very likely has: then the template's '\n' and a reply's leading '\n' become one token."""
    spec = json.loads((MINIMIND2 / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["merges"].append(["Ċ", "Ċ"])
    spec["model"]["vocab"]["ĊĊ"] = len(spec["model"]["vocab"])
    folder = tmp_path_factory.mktemp("tok_nn")
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return Tokenizer.load(str(folder))


def test_sft_reply_starting_with_newlines_tokenizes_as_at_chat_time(tok_nn, tmp_path):
    """Guards against tokenizing prompt and reply apart: with 'ĊĊ' in the vocab, 'assistant\n' +
    '\n\nHello' is 'assistant', 'ĊĊ', 'Ċ', 'Hello' when the chat is tokenized whole (as
    apply_chat_template(tokenize=True) and generation do) but 'Ċ' | 'Ċ', 'Ċ', 'Hello' in pieces.
    The ids must be the whole-chat ones, and the mask must still cover exactly the reply + '</s>':
    the 'ĊĊ' token holding the template's '\n' and the reply's first '\n' is the reply's first step."""
    messages = chat("Hi", "\n\nHello", "And?", "\n end")["conversations"]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": messages}])
    X, Y, mask = SFTDataset(path, tok_nn, max_length=128, cache_dir=tmp_path / "c")[0]
    ids = tok_nn.apply_chat_template(messages, tokenize=True)
    assert tok_nn.vocab["ĊĊ"] in ids                                   # the merge happened
    assert X.tolist() == pad_to(ids, 128)[:-1] and Y.tolist() == pad_to(ids, 128)[1:]
    # each trained run starts with the 'ĊĊ' that carries the template's '\n' ('\n end' splits '\n\n', ' end')
    assert trained_runs(tok_nn, Y, mask) == ["\n\n\nHello</s>", "\n\n end</s>"]
    first = int(torch.nonzero(mask)[0])                                # Y[first] is the 'ĊĊ' token ...
    assert tok_nn.decode([Y[first].item()]) == "\n\n"
    assert tok_nn.decode(X[:first + 1].tolist()).endswith("<s>assistant")   # ... predicted right after the header


def test_encode_with_spans_marks_tokens_by_their_bytes(tok):
    """Guards against mapping character spans to tokens wrongly where a character is several bytes
    or a token several characters: a span covering exactly one token's text marks exactly that token."""
    text = "<s>你好 world</s>"
    [(ids, spans)] = encode_with_spans([(text, [(5, 11), (len(text) - 4, len(text))])], tok)
    assert ids == tok.encode(text)
    (a, b), (c, d) = spans
    assert tok.decode(ids[a:b]) == " world" and tok.decode(ids[c:d]) == "</s>"


# --- bad records ---------------------------------------------------------------------------------

PRETRAIN_BAD = [
    ("{bad json", "invalid JSON"),
    ('["a", "list"]', "expected a JSON object, got a list"),
    ('{"txt": "hi"}', 'missing key "text"'),
    ('{"text": 5}', '"text" must be a string, not a number'),
    ('{"text": "   "}', '"text" is empty'),
    (b'{"text": "caf\xe9"}', "invalid UTF-8"),
    ('{"text": "\\ud800"}', "lone surrogate"),
]
SFT_BAD = [
    ('{"text": "hi"}', 'missing key "conversations"'),
    ('{"conversations": []}', "must be a non-empty list, not an empty list"),
    ('{"conversations": "hi"}', "must be a non-empty list, not a string"),
    ('{"conversations": ["hi"]}', "turn 1 must be an object"),
    ('{"conversations": [{"content": "hi"}]}', 'turn 1 has no "role"'),
    ('{"conversations": [{"role": "user", "content": null}]}', 'turn 1: "content" must be a string, not null'),
    ('{"conversations": [{"role": "bot", "content": "hi"}]}', 'turn 1: unknown role "bot"'),
    ('{"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
     '{"role": "system", "content": "s"}]}', 'turn 3: "system" is only allowed as the first turn'),
    ('{"conversations": [{"role": "assistant", "content": "hi"}]}', 'turn 1: expected role "user", got "assistant"'),
    ('{"conversations": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     'turn 2: expected role "assistant", got "user"'),
    ('{"conversations": [{"role": "user", "content": "a"}]}', "no assistant turn"),
    (json.dumps(chat("a", " ")), 'turn 2 (assistant) has empty "content"'),
    (b'{"conversations": [{"role": "user", "content": "\xff"}]}', "invalid UTF-8"),
]


@pytest.mark.parametrize("dataset, good, bad, problem",
                         [(PretrainDataset, {"text": "fine"}, b, p) for b, p in PRETRAIN_BAD] +
                         [(SFTDataset, chat("hi", "hello"), b, p) for b, p in SFT_BAD])
def test_bad_record_names_file_line_and_problem(tok, tmp_path, dataset, good, bad, problem):
    """Guards against a crash without a location, a wrong line number (blank lines count), or a
    vague message: the error must read FILE:3: <problem> (<how to fix>)."""
    path = write_jsonl(tmp_path / "d.jsonl", [good, "", bad, good])
    with pytest.raises(DataError) as info:
        dataset(path, tok, max_length=32, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message
    assert re.search(r"\(.+\)", message) and "\n" not in message     # says how to fix, on one line


@pytest.mark.parametrize("content, problem", [(b"", "the file is empty"), (b"\n  \n\n", "the file has only blank lines")])
def test_empty_file_is_an_error(tok, tmp_path, content, problem):
    """Guards against an empty data file giving an empty dataset, which fails much later in training."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    for dataset in (PretrainDataset, SFTDataset):
        with pytest.raises(DataError, match=re.escape(f"{path}:1: {problem}")):
            dataset(str(path), tok, max_length=16, cache_dir=tmp_path / "c")


def test_skip_bad_counts_and_reports(tok, tmp_path, capsys):
    """Guards against skip mode dropping lines silently or miscounting them, against a cache built
    in skip mode letting a later strict run accept the bad file, and against notes that DDP ranks
    other than 0 (verbose=False) print once more each."""
    lines = [chat("a", "b"), "{oops", chat("c", "d"), chat("e"), "", json.dumps(chat("f", "")), chat("g", "h")]
    path = write_jsonl(tmp_path / "s.jsonl", lines)
    ds = SFTDataset(path, tok, max_length=64, skip_bad=True, cache_dir=tmp_path / "c")
    assert len(ds) == 3 and ds.skipped == 3
    err = capsys.readouterr().err
    assert "skipped 3 bad lines" in err and "(lines 2, 4, 6)" in err and f"{path}:2: invalid JSON" in err
    quiet = SFTDataset(path, tok, max_length=64, skip_bad=True, cache_dir=tmp_path / "c2", verbose=False)
    assert quiet.skipped == 3 and capsys.readouterr().err == ""       # built and opened, silently
    assert [trained_runs(tok, *ds[i][1:]) for i in range(3)] == [["b</s>"], ["d</s>"], ["h</s>"]]
    with pytest.raises(DataError, match=re.escape(f"{path}:2: invalid JSON")):
        SFTDataset(path, tok, max_length=64, cache_dir=tmp_path / "c")       # same cache, strict


def test_skip_bad_with_nothing_left_is_an_error(tok, tmp_path):
    """Guards against skip mode turning a wholly broken file into an empty dataset."""
    path = write_jsonl(tmp_path / "p.jsonl", ["{x", '{"text": 1}'])
    with pytest.raises(DataError, match="all 2 records are bad"):
        PretrainDataset(path, tok, max_length=16, skip_bad=True, cache_dir=tmp_path / "c")


def test_parallel_build_reports_the_right_line(tok, tmp_path):
    """Guards against line numbers restarting in each process's part of the file."""
    lines = [{"text": f"line {i}"} for i in range(400)]
    lines[350] = '{"text": null}'
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    with pytest.raises(DataError, match=re.escape(f"{path}:351: ")):
        PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c", build_workers=3)


# --- the cache -----------------------------------------------------------------------------------

def test_cache_is_reused_and_invalidated_by_a_changed_file(tok, tmp_path):
    """Guards against reading a stale cache after the data file changed, even when the size and the
    modification time are unchanged."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello world"}])
    first = PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c")
    assert PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c").cache_path == first.cache_path
    stat = os.stat(path)
    write_jsonl(path, [{"text": "hello wOrld"}])                   # same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))        # ... same mtime
    second = PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c")
    assert second.cache_path != first.cache_path
    assert second[0][1].tolist()[:-1] == pad_to(tok.encode("hello wOrld</s>"), 15)[:-1]
    write_jsonl(path, [{"text": "hello world"}, {"text": "again"}])
    assert len(PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c")) == 2


def test_cache_is_invalidated_by_a_changed_tokenizer(tok, tmp_path):
    """Guards against reusing ids made by another tokenizer (e.g. one retrained with fewer merges)."""
    spec = json.loads((MINIMIND2 / "tokenizer.json").read_text(encoding="utf-8"))
    left, right = spec["model"]["merges"].pop()                     # drop the last merge ...
    del spec["model"]["vocab"][left + right]                       # ... and the token it made
    (tmp_path / "tok2").mkdir()
    (tmp_path / "tok2" / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    tok2 = Tokenizer.load(str(tmp_path / "tok2"))
    text = "Oh Olivia, Oscar Ode"
    assert tok.encode(text) != tok2.encode(text)                  # the test can tell them apart
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": text}])
    a = PretrainDataset(path, tok, max_length=32, cache_dir=tmp_path / "c")
    b = PretrainDataset(path, tok2, max_length=32, cache_dir=tmp_path / "c")
    assert a.cache_path != b.cache_path
    assert b[0][0].tolist() == pad_to(tok2.encode(f"<s>{text}</s>"), 32)[:-1]


def test_second_builder_of_the_same_cache_is_harmless(tok, tmp_path):
    """Guards against two processes (DDP ranks) building one cache at once: the one that finishes second
    must keep the finished cache and leave no temporary folder behind."""
    path = write_jsonl(tmp_path / "s.jsonl", [chat("hi", "hello")])
    ds = SFTDataset(path, tok, max_length=32, cache_dir=tmp_path / "c")
    before = ds[0]
    build_cache(path, ds.cache_path, tok, 32, parse=SFTDataset.parse, encode=encode_with_spans)
    assert os.listdir(tmp_path / "c") == [os.path.basename(ds.cache_path)]
    assert all(torch.equal(a, b) for a, b in zip(before, SFTDataset(path, tok, 32, cache_dir=tmp_path / "c")[0]))


def test_pickled_dataset_reopens_the_cache(tok, tmp_path):
    """Guards against DataLoader workers (spawn) receiving a copy of the whole token array."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello world " * 50}] * 200)
    ds = PretrainDataset(path, tok, max_length=128, cache_dir=tmp_path / "c")
    blob = pickle.dumps(ds)
    assert len(blob) < 4000 < ds.meta["tokens"] * 2
    copy = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(ds[7], copy[7]))


def test_unwritable_cache_location_is_a_data_error(tok, tmp_path):
    """Guards against a PermissionError/NotADirectoryError traceback when the cache folder cannot be
    made (a read-only data folder; here a path under a regular file, which even root cannot create)."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match=r"cannot write its token cache into .*a_file.* \(pass --cache_dir DIR"):
        PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "a_file" / "cache")


def test_cache_key_names_the_data_not_the_cache_folder(tok, tmp_path):
    """Guards against a --resume identity for the data that changes with --cache_dir (a moved cache)
    or that stays the same when the data file's content changes."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello world"}])
    a = PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c1")
    b = PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c2")
    assert a.cache_key == b.cache_key and a.cache_key.startswith("p.jsonl.pretrain.len16.")
    write_jsonl(path, [{"text": "hello there"}])
    assert PretrainDataset(path, tok, max_length=16, cache_dir=tmp_path / "c1").cache_key != a.cache_key


# --- train_tokenizer.py reads data through the same functions ----------------------------------------

@pytest.mark.parametrize("bad, problem", [
    (b'{"text": "caf\xe9"}', "invalid UTF-8 at byte 14 of the line"),
    (b'{"text": "ok"', "invalid JSON"),
    (b'{"conversations": [{"role": "bot", "content": "x"}]}', 'turn 1: unknown role "bot"'),
])
def test_train_tokenizer_names_file_and_line_of_bad_data(tmp_path, capsys, bad, problem):
    """Guards against train_tokenizer.py reporting bad data without its place ('utf-8' codec can't
    decode byte 0xe9 in position 13: of which of a million lines?) or checking it differently from
    the datasets: it must give the datasets' FILE:LINE message, on one line, and exit 2."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, "", bad])
    argv = ["--data_path", path, "--vocab_size", "300", "--tokenizer", str(tmp_path / "t")]
    assert run_main(train_tokenizer.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:3: {problem}" in err, err


# --- --show ----------------------------------------------------------------------------------------

def test_show_marks_exactly_the_trained_tokens(golden, tmp_path, capsys):
    """Guards against --show drawing the mask somewhere other than where the loss is."""
    path = write_jsonl(tmp_path / "s.jsonl", [chat("hi", "hello"), {"conversations": golden["chat"][1]["messages"]}])
    main(["--show", path, "--index", "1", "--tokenizer", str(MINIMIND2), "--max_length", "100", "--tokens"])
    out = capsys.readouterr().out
    assert "<s>assistant\n[[How long have you had it?</s>]]\n<s>user\nTwo weeks.</s>" in out
    assert "[[Please see a doctor.</s>]]" in out and "91 targets, 28 trained" in out
    assert "(+ 8 padding tokens, never trained)" in out
    assert len(re.findall(r"^\s+\d+\s+'.*'\s+'.*'\s+1$", out, re.M)) == 28       # table rows with loss_mask 1


def test_show_bad_index_is_a_one_line_error(tmp_path, capsys):
    """Guards against a traceback for a user mistake on the command line."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}])
    assert run_main(main, ["--show", path, "--index", "5", "--tokenizer", str(MINIMIND2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and "no record 5, the file has 1 records" in err
