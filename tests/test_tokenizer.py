"""Tests for model/tokenizer.py and train_tokenizer.py: exactness against MiniMind2's golden ids,
round trips, special tokens, the streaming decoder, file I/O and the BPE trainer."""
import collections
import heapq
import json
import os
import pickle
import random
import subprocess
import sys

import pytest
from conftest import DEMO_TOKENIZER, MINIMIND2, ROOT

from model import tokenizer as tokenizer_module
from model.tokenizer import (DEFAULT_SYSTEM_PROMPT, MINIMIND2_CHAT_TEMPLATE, Tokenizer, bytes_to_unicode,
                             gpt2_split_pattern, split_chunks)
from train_tokenizer import count_chunks, train_bpe

with open(MINIMIND2 / "tokenizer_golden.json", encoding="utf-8") as _f:
    GOLDEN = json.load(_f)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(MINIMIND2)


# ---- exactness against Hugging Face (golden ids produced by HF tokenizers on MiniMind2's settings)

@pytest.mark.parametrize("case", GOLDEN["strings"], ids=lambda c: repr(c["text"])[:30])
def test_golden_ids(tok, case):
    """Guards against any divergence from HF: split pattern, byte table, merge order, specials."""
    assert tok.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", GOLDEN["chat"], ids=lambda c: c["messages"][-1]["content"][:20])
def test_golden_chat_template(tok, case):
    """Guards against a chat format that differs from MiniMind2's (default system, turn markers)."""
    text = tok.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"])
    assert text == case["text"]
    ids = tok.apply_chat_template(case["messages"], tokenize=True,
                                  add_generation_prompt=case["add_generation_prompt"])
    assert ids == case["ids"]


def test_special_ids_and_vocab_size(tok):
    """Guards against bos/eos/pad ids or the embedding-table size being read wrongly from the file."""
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.vocab_size == 1000
    assert GOLDEN["default_system_prompt"] == DEFAULT_SYSTEM_PROMPT


# ---- the split pattern

@pytest.mark.parametrize("text, chunks", [
    ("Hello, world!  ok", ["Hello", ",", " world", "!", " ", " ok"]),
    ("I'm 25, ok?", ["I", "'m", " 25", ",", " ok", "?"]),
    ("二〇二四年", ["二", "〇", "二四年"]),          # 〇 is a number (Nl), not a letter
    ("a①②b", ["a", "①②", "b"]),                # circled digits are numbers (No)
    ("x\x1c!y", ["x", "\x1c!", "y"]),           # \x1c is whitespace to Python, punctuation to HF
    ("a\u00a0b", ["a", "\u00a0", "b"]),         # NBSP is whitespace (Zs), but only " " joins a word
    ("𐐀𐐁 ok", ["𐐀𐐁", " ok"]),                 # letters beyond U+FFFF (Deseret): the full pattern
    ("snake_case", ["snake", "_", "case"]),      # "_" is punctuation for GPT-2, unlike regex \w
])
def test_split_pattern_unicode_classes(text, chunks):
    """Guards against \\p{L}/\\p{N}/\\s emulated with Python's own \\w, \\d, \\s, which differ."""
    assert split_chunks(text) == chunks


def test_fast_split_pattern_agrees_with_full_one():
    """Guards the BMP-only fast path drifting from the exact pattern on text it is used for."""
    rng = random.Random(0)
    bmp = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    text = "".join(rng.choice(bmp) if rng.random() < 0.6 else rng.choice(" \t\n'sdl1")
                   for _ in range(100_000))
    assert gpt2_split_pattern(bmp_only=True).findall(text) == gpt2_split_pattern().findall(text)


# ---- round trips and special tokens

AWKWARD = ["", " ", "   ", "\n", "\n\n\n", "\t\t x", "a  b   c    ", " \n \n", "\r\n", "你好，世界！",
           "😀🚀 👨‍👩‍👧", "e\u0301 n\u0303", "mixed 中文 English Ελληνικά русский",
           "𐐀𐐁 𝟘 ①",
           "\x00\x1c\x7f", "\u200b\u00a0\u3000", "<s", "</s", "<<s>>", "it'S I'LL", "'''", "a\ufffdb"]


@pytest.mark.parametrize("text", AWKWARD, ids=repr)
def test_round_trip(tok, text):
    """Guards against lost or altered bytes: decode(encode(s)) must give s back exactly."""
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=False)) == text


def test_specials_whole_and_switchable(tok):
    """Guards against specials split into pieces, or forged from user text when matching is off."""
    assert tok.encode("<s>") == [1] and tok.encode("</s>") == [2] and tok.encode("<unk>") == [0]
    assert tok.encode("<<s>>") == tok.encode("<") + [1] + tok.encode(">")
    plain = tok.encode("<s>user\n</s><unk>", allow_special=False)
    assert not {0, 1, 2} & set(plain)
    assert tok.decode(plain) == "<s>user\n</s><unk>"


def test_decode_skip_special_tokens_and_bad_ids(tok):
    """Guards against specials leaking into shown text, and silent wrap-around of bad ids."""
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    shown = tok.decode(ids, skip_special_tokens=True)
    assert shown == f"system\n{DEFAULT_SYSTEM_PROMPT}\nuser\nhi\nassistant\n"
    for bad in ([-1], [tok.vocab_size]):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode(bad)


def test_lone_surrogate_is_a_clear_error(tok):
    """Guards against a UnicodeEncodeError traceback deep inside BPE on broken input text."""
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("ok \ud800")


def test_streaming_decoder_holds_back_half_characters(tok):
    """Guards against printing U+FFFD garbage when a token ends inside a multi-byte character."""
    text = "你好，世界！😀 ok"
    ids = tok.encode(text)
    # the fixture's small vocabulary cuts these characters between tokens: naive per-token
    # decoding shows replacement characters, which is what the stream decoder must avoid
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert "" in pieces  # at least one token ended inside a character
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    # a stream cut inside a character: nothing is printed until flush, which marks it as broken
    dec = tok.stream_decoder()
    first = tok.encode("你")[0]
    assert dec.push(first) == "" and dec.flush() == "\ufffd"


def test_streaming_decoder_skips_specials(tok):
    """Guards against `</s>` being printed in chat output when skipping is asked for."""
    dec = tok.stream_decoder(skip_special_tokens=True)
    out = "".join(dec.push(i) for i in tok.encode("hi</s>")) + dec.flush()
    assert out == "hi"


# ---- the chat template

def test_chat_template_matches_its_jinja_twin(tok):
    """Guards against the Python template and the jinja one written to tokenizer_config.json drifting."""
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(MINIMIND2_CHAT_TEMPLATE)
    conversations = [case["messages"] for case in GOLDEN["chat"]] + [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}],
    ]
    for messages in conversations:
        for gen in (False, True):
            assert tok.apply_chat_template(messages, add_generation_prompt=gen) == \
                template.render(messages=messages, add_generation_prompt=gen)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "tool", "content": "x"}], "role 'tool'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "first message"),
    ([{"role": "user"}], "content"),
])
def test_chat_template_rejects_what_minimind_would_drop(tok, messages, match):
    """Guards against conversation text being silently dropped (MiniMind2's jinja ignores it)."""
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(messages)


# ---- file I/O

def test_save_load_round_trip(tok, tmp_path):
    """Guards against vocab, merges, specials or the chat template being lost or changed on save."""
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.vocab == tok.vocab and again.merges == tok.merges
    for case in GOLDEN["strings"]:
        assert again.encode(case["text"]) == case["ids"]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == MINIMIND2_CHAT_TEMPLATE
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>", "<unk>")
    first = (tmp_path / "tokenizer.json").read_bytes()
    again.save(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == first  # deterministic output


def test_save_is_atomic_with_ordinary_permissions(tok, tmp_path):
    """Guards against save() leaving temp files, or writing files with a fixed mode (0644) that
    ignores the umask, instead of sharing plumbing/atomic.py's writer."""
    old = os.umask(0o002)
    try:
        tok.save(tmp_path)
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_config.json"]
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664


def test_load_both_merge_forms(tmp_path):
    """Guards against reading only one of HF's two merge spellings ("a b" vs ["a", "b"])."""
    with open(MINIMIND2 / "tokenizer.json", encoding="utf-8") as f:
        spec = json.load(f)
    assert isinstance(spec["model"]["merges"][0], list)  # the fixture uses the pair form
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    strings_form = Tokenizer.load(tmp_path / "tokenizer.json")
    for case in GOLDEN["strings"]:
        assert strings_form.encode(case["text"]) == case["ids"]


def test_load_refuses_unsupported_files(tmp_path):
    """Guards against silently mis-encoding with a tokenizer.json this code does not implement."""
    with open(MINIMIND2 / "tokenizer.json", encoding="utf-8") as f:
        spec = json.load(f)
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported tokenizer"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py"):
        Tokenizer.load(tmp_path / "missing")


def test_encode_batch_processes_and_pickling(tok):
    """Guards against worker processes reordering, dropping or mis-encoding texts."""
    texts = [case["text"] for case in GOLDEN["strings"]] * 3
    expected = [case["ids"] for case in GOLDEN["strings"]] * 3
    assert tok.encode_batch(texts, num_workers=2) == expected
    assert tok.encode_batch(texts) == expected
    assert pickle.loads(pickle.dumps(tok)).encode("hello world") == tok.encode("hello world")


def test_cache_does_not_change_results(tok):
    """Guards against the per-chunk cache (or its emptying) altering ids."""
    fresh = Tokenizer.load(MINIMIND2)
    fresh.CACHE_LIMIT = 3  # empties the cache on nearly every call
    text = "the cat sat on the mat, 猫坐在垫子上。the cat"
    assert fresh.encode(text) == fresh.encode(text) == tok.encode(text)


def full_scan_bpe(tok, chunk):
    """The plain BPE loop, O(n^2) in the chunk's length: scan all pairs for the lowest rank, merge its
    leftmost occurrence, repeat. The reference that Tokenizer._bpe's heap must agree with."""
    parts = list(chunk.encode("utf-8").decode("latin-1").translate(tok._bytes_to_ids))
    while True:
        ranks = [tok._merge_rank.get(a + b) for a, b in zip(parts, parts[1:])]
        known = [r for r in ranks if r is not None]
        if not known:
            return "".join(parts)
        i = ranks.index(min(known))
        parts[i:i + 2] = [tok._merge_by_rank[ranks[i]]]


def random_word(rng, letters, n):
    return "".join(rng.choice(letters) for _ in range(n))


@pytest.mark.parametrize("path", [MINIMIND2, DEMO_TOKENIZER], ids=["minimind2", "demo"])
def test_bpe_of_long_words_equals_the_full_scan(path):
    """Guards against the heap-based merge loop giving other tokens than the plain one: a pair some
    merge ended taken as still there, ties between equal ranks broken other than leftmost first, the
    pairs a merge creates with its neighbours not queued. Long single words (up to 3,000 bytes) of
    letters, runs of one letter (overlapping pairs), CJK, spaces, digits."""
    tok = Tokenizer.load(path)
    rng = random.Random(0)
    words = [random_word(rng, "etaoinshrdlucmfw", n) for n in (2, 17, 300, 3000)]
    words += ["a" * 1001, "ab" * 700, "aaab" * 300, " " * 517, "0" * 999, "你好世界" * 200,
              random_word(rng, "的一是不了人我在有他这中大来上国", 600), random_word(rng, "ab", 2000)]
    for word in words:
        for chunk in split_chunks(word):
            assert tok._bpe(chunk) == full_scan_bpe(tok, chunk), (path, chunk[:20], len(chunk))


def test_bpe_work_is_linear_in_the_length_of_a_word(tok, monkeypatch):
    """Guards against a merge loop quadratic in one word's length (a full scan of the pairs per merge:
    a 100 KB word took 21 s, a 200 KB one 95 s, and a server spent that on one request). The heap
    operations are counted, not timed, each O(log n): fewer than n pairs to start with, two pushed per
    merge (fewer than n merges), each popped at most once, so under 6 per byte whatever the word's
    length. A 200 KB word is then encoded and decoded whole."""
    counts = collections.Counter()

    class CountingHeapq:
        def heapify(heap):
            counts["ops"] += len(heap)
            heapq.heapify(heap)

        def heappush(heap, item):
            counts["ops"] += 1
            heapq.heappush(heap, item)

        def heappop(heap):
            counts["ops"] += 1
            return heapq.heappop(heap)

    monkeypatch.setattr(tokenizer_module, "heapq", CountingHeapq, raising=False)
    rng = random.Random(0)
    for n in (1_000, 10_000, 50_000):
        counts.clear()
        tok._bpe(random_word(rng, "etaoinshrdlu", n))  # frequent letters: many merges
        assert 0 < counts["ops"] < 6 * n, (n, counts)
    word = random_word(rng, "etaoinshrdlu", 200_000)
    assert tok.decode(tok.encode(word)) == word


def test_long_chunks_are_merged_but_not_cached():
    """Guards against the chunk cache keeping every long word it is given: a server tokenizes what
    clients send, and 500,000 cached 100 KB "words" are 50 GB."""
    fresh = Tokenizer.load(MINIMIND2)
    long_word = "x" * 1000
    assert fresh.encode(long_word) == fresh.encode(long_word)
    fresh.encode("hello world")
    assert long_word not in fresh._cache and "hello" in fresh._cache


# ---- training

def test_train_known_answer():
    """Guards against wrong pair counting, tie-breaking or merge application (checked by hand).

    "aaabdaaabac": pairs aa:4 ... -> merge (a,a)=259: aa a b d aa a b a c
    then (aa,a):2 and (a,b):2 tie; (a,b) has the smaller ids -> 260: aa ab d aa ab a c
    then (aa,ab):2 -> 261: aaab d aaab a c
    """
    tokenizer = train_bpe({"aaabdaaabac": 1}, vocab_size=262, progress=False)
    assert tokenizer.merges == [("a", "a"), ("a", "b"), ("aa", "ab")]
    assert [tokenizer.vocab[t] for t in ("aa", "ab", "aaab")] == [259, 260, 261]
    assert tokenizer.encode("aaabdaaabac") == [261, tokenizer.vocab["d"], 261, tokenizer.vocab["a"],
                                               tokenizer.vocab["c"]]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_train_max_token_length():
    """Guards against --max_token_length letting a longer token through, or stopping merges that fit.

    As in the known answer above, but "aaab" (4 bytes) may not be made with max_token_length 2:
    after aa and ab, the only 2-byte pair left is (a, c), counted once -> 261 = "ac".
    """
    tokenizer = train_bpe({"aaabdaaabac": 1}, vocab_size=262, progress=False, max_token_length=2)
    assert tokenizer.merges == [("a", "a"), ("a", "b"), ("a", "c")]


def test_train_starting_vocabulary_is_hf_order(tok):
    """Guards against a base vocabulary (specials, then the 256 bytes) ordered unlike HF's trainer,
    which would make our ids disagree with a tokenizer HF trains on the same text."""
    tokenizer = train_bpe({"ab": 1}, vocab_size=259, progress=False)
    assert tokenizer.vocab == {t: i for t, i in tok.vocab.items() if i < 259}


def _naive_train(chunk_counts, n_merges):
    """Reference trainer: recount every pair from scratch before each merge."""
    byte_char = bytes_to_unicode()
    base = {c: 3 + k for k, c in enumerate(sorted(byte_char.values()))}
    names = {i: c for c, i in base.items()}
    words = {tuple(base[byte_char[b]] for b in w.encode("utf-8")): n for w, n in chunk_counts.items()}
    merges = []
    for _ in range(n_merges):
        counts = collections.Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += n
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        new = 259 + len(merges)
        names[new] = names[best[0]] + names[best[1]]
        merges.append((names[best[0]], names[best[1]]))
        merged = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


@pytest.mark.parametrize("seed", range(4))
def test_incremental_training_matches_full_recount(seed):
    """Guards against the incremental pair-count updates drifting from a full recount
    (overlapping pairs like "aaaa", repeated X X neighbours, multi-byte characters)."""
    rng = random.Random(seed)
    alphabet = ["a", "b", "a", "a", "c", "你", " "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(60)]
    counts = count_chunks(texts)
    tokenizer = train_bpe(counts, vocab_size=259 + 40, progress=False)
    assert tokenizer.merges == _naive_train(counts, len(tokenizer.merges))
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_training_ignores_special_tokens_in_text():
    """Guards against "<s>" in training text teaching merges of "<", "s", ">"."""
    counts = count_chunks(["<s>hello</s>"] * 50 + ["hello"])
    assert "<" not in "".join(counts)
    tokenizer = train_bpe(counts, vocab_size=270, progress=False)
    assert tokenizer.encode("<s>hello</s>") == [1, tokenizer.vocab["hello"], 2]


def _run_train_tokenizer(args, hash_seed):
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    return subprocess.run([sys.executable, str(ROOT / "train_tokenizer.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)


def test_train_tokenizer_script_is_deterministic(tmp_path):
    """Guards against hash-order or tie-order dependence: reruns must write identical files."""
    data = tmp_path / "data.jsonl"
    rng = random.Random(0)
    words = ["model", "模型", "token", "数据", "the", "训练", "loss", "<s>"]
    with open(data, "w", encoding="utf-8") as f:
        for k in range(200):
            text = " ".join(rng.choice(words) for _ in range(12))
            if k % 2:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            else:
                f.write(json.dumps({"conversations": [{"role": "user", "content": text},
                                                      {"role": "assistant", "content": "好的"}]},
                                   ensure_ascii=False) + "\n")
    outputs = []
    for seed in (1, 2):
        out = tmp_path / f"tok{seed}"
        result = _run_train_tokenizer(["--data_path", str(data), "--vocab_size", "300",
                                       "--tokenizer", str(out)], seed)
        assert result.returncode == 0, result.stderr
        outputs.append((out / "tokenizer.json").read_bytes())
    assert outputs[0] == outputs[1]
    trained = Tokenizer.load(tmp_path / "tok1")
    assert trained.vocab_size == 300
    assert trained.decode(trained.encode("训练 the model")) == "训练 the model"


def test_train_tokenizer_bad_line_is_one_line_error(tmp_path):
    """Guards against a traceback (or a silent skip) on a malformed data line."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "ok"}\n\n{"txt": "typo"}\n', encoding="utf-8")
    result = _run_train_tokenizer(["--data_path", str(data), "--vocab_size", "300",
                                   "--tokenizer", str(tmp_path / "out")], 0)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and f"{data}:3:" in result.stderr
    assert "Traceback" not in result.stderr


# ---- the committed demo tokenizer

def test_demo_tokenizer_is_reproducible(tmp_path, monkeypatch):
    """Guards against a committed model/demo_tokenizer that the demo's own tokenizer command no
    longer makes (demo data changed without retraining, the demo's settings changed, or training
    stopped being deterministic): the default tokenizer and the demo's are one and the same."""
    import run_demo
    import train_tokenizer
    committed = DEMO_TOKENIZER
    [command] = [command for stage, command in run_demo.demo_stages("out") if stage == "tokenizer"]
    assert command == ["train_tokenizer.py"]  # the demo trains the scripts' default tokenizer ...
    assert os.path.samefile(train_tokenizer.build_parser().parse_args([]).tokenizer, committed)  # ... into the committed folder
    train_tokenizer.main(["--tokenizer", str(tmp_path)])  # the defaults, elsewhere
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(committed / name, "rb") as f:
            assert (tmp_path / name).read_bytes() == f.read(), (
                f"model/demo_tokenizer/{name} is stale: rerun python train_tokenizer.py")
    demo = Tokenizer.load(committed)
    assert (demo.vocab_size, demo.pad_token_id, demo.bos_token_id, demo.eos_token_id) == (2048, 0, 1, 2)
