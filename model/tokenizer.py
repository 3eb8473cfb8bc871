"""
A byte-level BPE tokenizer, written by hand, that reads and writes Hugging Face `tokenizer.json`.

MiniMind trains and runs its tokenizer with the Hugging Face `tokenizers` library (Rust). This file
does the same job in plain Python (standard library only), and gives the same ids on
MiniMind2's own `minimind_tokenizer/tokenizer.json`. It reads top to bottom:

  the byte table        every byte gets a visible stand-in character (GPT-2's table), so a token
                        is a short string and the vocabulary is plain JSON;
  the split pattern     text is first cut into chunks (words, numbers, punctuation, whitespace)
                        with GPT-2's regex; merges never cross a chunk boundary;
  the chat format       MiniMind2's `<s>system ... </s>` conversation template;
  streaming decoding    ids -> UTF-8 text as they are generated, never half a character;
  the Tokenizer class   ties them together: BPE merges (adjacent tokens merged, lowest rank
                        first) -> encoding (special tokens `<unk>` `<s>` `</s>` cut out whole
                        first) -> decoding -> the chat template -> tokenizer.json file I/O.

How merges are learned is the subject of `train_tokenizer.py`.

Worked example (MiniMind2-style vocabulary, ids illustrative):
    "hi hi" -> chunks ["hi", " hi"] -> bytes [h, i], [Ġ, h, i] -> merges (h,i), (Ġ,hi) -> ids [hi, Ġhi]
"""
import bisect
import codecs
import functools
import hashlib
import heapq
import itertools
import multiprocessing
import operator
import os
import re
import sys
import unicodedata
import warnings

from formats.tokenizer_json import TokenizerError, read_tokenizer_json, tokenizer_json_files
from plumbing.atomic import atomic_write_text


# ----------------------------------------------------------------------------------------------
# The byte table


def bytes_to_unicode():
    """GPT-2's table giving each of the 256 byte values a printable stand-in character.

    Printable Latin-1 bytes stand for themselves; the other 68 (control codes, space, DEL, NBSP,
    soft hyphen) are moved up to chr(256 + k). So a space is written 'Ġ' (chr(288)) and a newline
    'Ċ' (chr(266)) in tokenizer.json, and every token is a visible, JSON-friendly string.

    >>> table = bytes_to_unicode(); table[ord("a")], table[ord(" ")], table[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, moved = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


# ----------------------------------------------------------------------------------------------
# The split pattern


def _unicode_classes(first, last):
    """Regex class bodies ("a-zà-ö...") of the letters (L*), numbers (N*) and whitespace among the
    code points first..last.

    One pass over the code points: each is labelled by its general category, and maximal runs of
    one label become ranges. Whitespace is Unicode's White_Space set, which is what Oniguruma's
    (HF's regex engine) \\s matches: \\t \\n \\v \\f \\r, NEL (\\x85) and categories Zs, Zl, Zp.
    """
    def label(ch):
        category = unicodedata.category(ch)
        if category in ("Zs", "Zl", "Zp") or ch in "\t\n\x0b\x0c\r\x85":
            return "space"
        return category[0]  # "L", "N", or something we do not need

    classes = {"L": [], "N": [], "space": []}
    start = first
    for kind, run in itertools.groupby(map(label, map(chr, range(first, last + 1)))):
        length = sum(1 for _ in run)
        if kind in classes:
            a, b = re.escape(chr(start)), re.escape(chr(start + length - 1))
            classes[kind].append(a if length == 1 else f"{a}-{b}")
        start += length
    return {kind: "".join(parts) for kind, parts in classes.items()}


@functools.lru_cache(maxsize=2)
def gpt2_split_pattern(bmp_only=False):
    """GPT-2's pre-tokenizer regex (the one HF's `ByteLevel(use_regex=True)` uses), for Python's `re`.

    The original is
        's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    Python's `re` has no \\p{L} (letters) or \\p{N} (numbers), so both classes are spelled out
    from `unicodedata`. Its `\\s` is also wider than Oniguruma's: Python counts the separators
    \\x1c-\\x1f as whitespace, Unicode does not, so whitespace is spelled out too.

    bmp_only=True spells the classes with code points up to U+FFFF only. That pattern is exact on
    text with no character beyond U+FFFF (no emoji, no rare CJK extension) and ~4x faster: `re`
    tests the U+0000-U+FFFF part of a class with a bitmap, but walks the ranges above one by one.
    Building a pattern takes ~0.1-0.3 s, once per process.

    "Hello, world!  ok" -> ["Hello", ",", " world", "!", " ", " ok"]
    (a run of spaces gives its last space to the next word: `\\s+(?!\\S)` stops one short of it.)
    """
    c = _unicode_classes(0, 0xFFFF if bmp_only else sys.maxunicode)
    letters, numbers, space = c["L"], c["N"], c["space"]
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+"
        rf"|[{space}]+(?![^{space}])|[{space}]+"
    )


def split_chunks(text):
    """Cut text into the chunks BPE works on (merges never cross a chunk boundary).

    split_chunks("I'm 25, ok?") -> ["I", "'m", " 25", ",", " ok", "?"]
    """
    bmp_only = max(text, default="") <= "\uffff"  # max() of a str runs in C, far faster than the regex
    return gpt2_split_pattern(bmp_only).findall(text)


# ----------------------------------------------------------------------------------------------
# MiniMind2's chat format (rendered by Tokenizer.apply_chat_template below)

DEFAULT_SYSTEM_PROMPT = "你是 MiniMind，是一个有用的人工智能助手。"

# MiniMind2's tokenizer_config.json template, character for character, so that transformers'
# `apply_chat_template` (and any other jinja-reading tool) renders what `Tokenizer.apply_chat_template`
# renders. Inside the jinja string literals `\n` is an escape that jinja turns into a newline.
MINIMIND2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}"
    "{{ '<s>system\\n' + system_message + '</s>\\n' }}"
    "{% else %}"
    "{{ '<s>system\\n" + DEFAULT_SYSTEM_PROMPT + "</s>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<s>user\\n' + content + '</s>\\n<s>assistant\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ content + '</s>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
)


# ----------------------------------------------------------------------------------------------
# Streaming decoding (handed out by Tokenizer.stream_decoder below)


class StreamDecoder:
    """Turns token ids into text one id at a time, holding back incomplete UTF-8 characters.

    A byte-level token can end in the middle of a character: '你' is 3 bytes (e4 bd a0) and a
    small vocabulary may spell it as two tokens, [e4 bd] [a0]. Decoding each token on its own would
    print '\\ufffd' garbage; this keeps the unfinished bytes until the character is complete.

        dec = tok.stream_decoder()
        dec.push(id_of_e4bd) -> ''      dec.push(id_of_a0) -> '你'      dec.flush() -> ''
    """

    def __init__(self, token_bytes, special_ids, skip_special_tokens):
        self._token_bytes = token_bytes
        self._skip_ids = special_ids if skip_special_tokens else frozenset()
        # errors="replace": bytes that can never become a character (not just unfinished) are
        # shown as U+FFFD right away, exactly as decode() shows them
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        """Add one token id; return the text that is now complete (possibly '')."""
        token_id = int(token_id)  # accepts a Python int or a 0-d / 1-element tensor
        if not 0 <= token_id < len(self._token_bytes):
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self._token_bytes)})")
        if token_id in self._skip_ids:
            return ""
        return self._utf8.decode(self._token_bytes[token_id])

    def flush(self):
        """End of stream: return what is left (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


# ----------------------------------------------------------------------------------------------
# The tokenizer


class _ChunkCache(dict):
    """chunk -> its BPE result; a miss runs BPE once (dict's __missing__ hook), a hit costs one lookup.

    Text repeats itself: the same words come back again and again, so caching per chunk turns most of
    the encoding into dictionary lookups done inside C (`map(cache.__getitem__, chunks)`).
    A chunk longer than LONGEST characters is merged but not kept: real words are far shorter, and
    keeping every long one a client sends would let a server's cache grow to gigabytes.
    """

    LONGEST = 64

    def __init__(self, bpe):
        super().__init__()
        self._bpe = bpe

    def __missing__(self, chunk):
        merged = self._bpe(chunk)
        if len(chunk) <= self.LONGEST:
            self[chunk] = merged
        return merged


class Tokenizer:
    """Byte-level BPE with special tokens and MiniMind2's chat template.

    Build one with `Tokenizer.load(path)` (a directory or a tokenizer.json) or, when training, from
    a vocabulary and a merge list. Internally every token id is also written as one character,
    chr(id): a pair of tokens is then a 2-character string (a fast dict key), a merged chunk is
    a short `str` worth caching, and the text of all chunks turns into ids with one
    `map(ord, ...)`. That keeps most per-byte work inside C, which is what makes a pure-Python
    BPE fast enough for data sets.
    """

    # above this many cached chunks the cache is emptied (bounds memory on multi-GB corpora;
    # frequent chunks come straight back)
    CACHE_LIMIT = 500_000

    def __init__(self, vocab, merges, added_tokens, bos_token="<s>", eos_token="</s>", pad_token="<unk>"):
        """
        vocab:        {token string (byte-level characters): id}, the BPE model's vocabulary.
        merges:       [(left, right), ...] in rank order (rank 0 is applied first).
        added_tokens: [{"id": int, "content": str, "special": bool}, ...], matched whole in text.
        bos/eos/pad_token: contents of the added tokens used as begin/end of sequence and padding.
        """
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.added_tokens = [dict(t) for t in added_tokens]
        self._byte_to_char = bytes_to_unicode()
        char_to_byte = {c: b for b, c in self._byte_to_char.items()}

        # id -> bytes, for decoding. Added tokens decode to their own text.
        size = 1 + max(list(self.vocab.values()) + [t["id"] for t in self.added_tokens])
        token_bytes = [None] * size
        for token, i in self.vocab.items():
            try:
                token_bytes[i] = bytes(char_to_byte[c] for c in token)
            except KeyError:  # not made of byte-level characters: can only be an added token
                if not any(t["content"] == token for t in self.added_tokens):
                    raise ValueError(f"vocab entry {token!r} (id {i}) is not a byte-level token; "
                                     "only byte-level BPE tokenizers are supported") from None
        for t in self.added_tokens:
            token_bytes[t["id"]] = t["content"].encode("utf-8")
        missing = [i for i, b in enumerate(token_bytes) if b is None]
        if missing:
            raise ValueError(f"token ids must be contiguous from 0; id {missing[0]} has no token")
        self._token_bytes = token_bytes
        self._max_token_bytes = max(map(len, token_bytes))
        # id -> token string as tokenizer.json spells it, for showing tokens to people
        self._token_strings = [None] * size
        for token, i in self.vocab.items():
            self._token_strings[i] = token
        for t in self.added_tokens:
            self._token_strings[t["id"]] = t["content"]

        # byte value -> the id-character of its single-byte token (see the class docstring)
        byte_ids = {}
        for b, c in self._byte_to_char.items():
            if c not in self.vocab:
                raise ValueError(f"the vocabulary lacks the byte token {c!r} (byte {b}); "
                                 "a byte-level BPE needs all 256")
            byte_ids[b] = chr(self.vocab[c])
        # str.translate table: a latin-1 decoded chunk has one character per byte, ord < 256
        self._bytes_to_ids = [byte_ids[b] for b in range(256)]

        # merge rank lookup keyed by the two id-characters side by side, and rank -> merged token
        self._merge_rank = {}
        self._merge_by_rank = []
        for rank, (left, right) in enumerate(self.merges):
            for part in (left, right, left + right):
                if part not in self.vocab:
                    raise ValueError(f"merge #{rank} ({left!r}, {right!r}) uses {part!r}, "
                                     "which is not in the vocabulary")
            pair = chr(self.vocab[left]) + chr(self.vocab[right])
            self._merge_rank[pair] = rank  # a duplicated merge takes its last rank, as in HF
            self._merge_by_rank.append(chr(self.vocab[left + right]))

        self._added_ids = {t["content"]: t["id"] for t in self.added_tokens}
        self._special_ids = frozenset(t["id"] for t in self.added_tokens if t.get("special", True))
        self._added_pattern = self.special_pattern(self._added_ids)

        self._cache = _ChunkCache(self._bpe)
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        for name, content in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if content not in self._added_ids:
                raise ValueError(f"{name} {content!r} is not one of the added tokens "
                                 f"{sorted(self._added_ids)}")

    @staticmethod
    def special_pattern(contents):
        """Regex that cuts the given added tokens out of text: re.split gives [text, token, text, ...].

        Longest first, so that of two tokens where one starts the other the longer one wins;
        with no tokens it matches nothing and split returns [text].
        special_pattern(["<s>", "</s>"]).split("a</s>b") -> ["a", "</s>", "b"]
        """
        contents = sorted(contents, key=lambda s: (-len(s), s))
        return re.compile("(" + "|".join(map(re.escape, contents)) + ")" if contents else "(?!)")

    # -- ids of the special tokens -----------------------------------------------------------------

    @property
    def bos_token_id(self):
        """Id of `<s>` (1 in MiniMind2): starts every turn of the chat template and every sample."""
        return self._added_ids[self.bos_token]

    @property
    def eos_token_id(self):
        """Id of `</s>` (2): ends a turn; generation stops on it."""
        return self._added_ids[self.eos_token]

    @property
    def pad_token_id(self):
        """Id of `<unk>` (0), which MiniMind2 also uses as padding."""
        return self._added_ids[self.pad_token]

    @property
    def vocab_size(self):
        """Number of token ids (= rows of the model's embedding table), added tokens included."""
        return len(self._token_bytes)

    @property
    def max_token_bytes(self):
        """UTF-8 bytes of the longest token (9 in the demo tokenizer). A text of more than
        n * max_token_bytes bytes encodes to more than n tokens: a caller can tell before encoding."""
        return self._max_token_bytes

    # -- BPE merges --------------------------------------------------------------------------------

    def _bpe(self, chunk):
        """Merge one chunk. Returns its token ids written as characters (chr(id) each).

        Like Hugging Face: among all adjacent pairs take the one with the lowest merge rank (the
        leftmost if it occurs twice), merge it, repeat until no adjacent pair is a listed merge.

        With merges [(a,a), (a,b), (aa,ab)]: "aaabdaaabac" -> aa a b d aa a b a c
            -> aa ab d aa ab a c -> aaab d aaab a c

        Scanning every pair for the lowest rank at each merge costs O(n) per merge, O(n^2) per chunk;
        a chunk is one word, and a client can send a "word" of 100,000 letters (22 s that way). So,
        as HF does, the candidate pairs wait in a heap keyed by (rank, position) and the parts form a
        doubly linked list, making a merge O(log n): pop the lowest pair, join its two parts, push
        the two pairs the new part makes with its neighbours. The pairs the two old parts made are
        not searched out of the heap but skipped when they come up: the pair now at that position
        has another rank (one rank names one pair), or none. A part keeps the position of its first
        byte, so positions stay in left-to-right order and (rank, position) pops the leftmost of the
        lowest pairs, exactly as the full scan would.
        """
        parts = list(chunk.encode("utf-8").decode("latin-1").translate(self._bytes_to_ids))
        rank_of, merged = self._merge_rank, self._merge_by_rank
        after = list(range(1, len(parts))) + [-1]  # after[i]: the position of the part that follows part i
        before = list(range(-1, len(parts) - 1))  # before[i]: the one that precedes it (-1: none)
        heap = [(rank_of[pair], i) for i, pair in enumerate(map(operator.add, parts, parts[1:])) if pair in rank_of]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = after[i]
            if parts[i] is None or j < 0 or rank_of.get(parts[i] + parts[j]) != rank:
                continue  # a pair some earlier merge ended
            parts[i], parts[j] = merged[rank], None  # (B, C) -> X in  A B C D  gives  A X D
            after[i] = k = after[j]
            if k >= 0:  # the pair (X, D)
                before[k] = i
                self._push_pair(heap, i, parts[i] + parts[k])
            if before[i] >= 0:  # the pair (A, X)
                self._push_pair(heap, before[i], parts[before[i]] + parts[i])
        return "".join(filter(None, parts))

    def _push_pair(self, heap, position, pair):
        """Add the pair starting at `position` to the heap, if it is a listed merge."""
        rank = self._merge_rank.get(pair)
        if rank is not None:
            heapq.heappush(heap, (rank, position))

    def _encode_ordinary(self, text):
        """Text without special tokens -> id-characters, via the per-chunk cache."""
        if len(self._cache) > self.CACHE_LIMIT:
            self._cache.clear()
        return "".join(map(self._cache.__getitem__, split_chunks(text)))

    # -- encoding: special tokens first, then chunks -----------------------------------------------

    def encode(self, text, allow_special=True):
        """Text -> list of token ids. No `<s>`/`</s>` is added: put them in the text if wanted.

        allow_special=True: added tokens written in the text ("<s>", "</s>", "<unk>") become their
        single ids, as Hugging Face does. allow_special=False: they are ordinary text, so user
        content can never forge a turn boundary ("<s>" -> the ids of "<", "s", ">").

        encode("a</s>b") -> [id("a"), 2, id("b")]
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            if not allow_special:
                return list(map(ord, self._encode_ordinary(text)))
            pieces = self._added_pattern.split(text)  # [text, added, text, added, ..., text]
            out = []
            for i, piece in enumerate(pieces):
                if i % 2:
                    out.append(chr(self._added_ids[piece]))
                elif piece:
                    out.append(self._encode_ordinary(piece))
            return list(map(ord, "".join(out)))
        except UnicodeEncodeError:
            # The error's own position is inside the one chunk being merged, not in `text`: look again.
            position = re.search("[\ud800-\udfff]", text).start()
            raise TokenizerError(f"text holds a lone surrogate {text[position]!r} at position {position}, which is not "
                                 "valid Unicode text (a byte that is not UTF-8, decoded with errors='surrogateescape'?); "
                                 "clean the input") from None

    def encode_batch(self, texts, num_workers=1, allow_special=True):
        """Encode many texts. num_workers > 1 spreads them over that many processes.

        Starting the processes costs ~0.1-0.5 s, so use workers for big inputs (a data set), not
        for a handful of prompts. Order is kept: result[i] == encode(texts[i]).
        """
        texts = list(texts)
        if num_workers <= 1 or len(texts) < 2:
            return [self.encode(t, allow_special) for t in texts]
        # one contiguous share of about equal length per worker: each worker unpickles the
        # tokenizer once and keeps its chunk cache warm for its whole share
        num_workers = min(num_workers, len(texts))
        ends = list(itertools.accumulate(map(len, texts)))
        cuts = [0] + [bisect.bisect_left(ends, ends[-1] * k / num_workers) + 1 for k in range(1, num_workers)]
        shares = [texts[a:b] for a, b in zip(cuts, cuts[1:] + [len(texts)])]
        encode_many = functools.partial(_encode_many, self, allow_special=allow_special)
        with multiprocessing.get_context().Pool(num_workers) as pool:
            return [ids for share in pool.map(encode_many, shares, chunksize=1) for ids in share]

    def __getstate__(self):
        # pickled for worker processes: ship the definition, not the (possibly huge) chunk cache
        return {"vocab": self.vocab, "merges": self.merges, "added_tokens": self.added_tokens,
                "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}

    def __setstate__(self, state):
        self.__init__(**state)

    # -- decoding ----------------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens=False):
        """Token ids -> text. Bytes that do not form valid UTF-8 become U+FFFD (as HF does).

        Accepts a list of ints or a 1-D tensor/array. skip_special_tokens drops `<s>`, `</s>`,
        `<unk>` (and any other special added token).
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self._token_bytes)):
            bad = next(i for i in ids if not 0 <= i < len(self._token_bytes))
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {len(self._token_bytes)})")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return b"".join(map(self._token_bytes.__getitem__, ids)).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special_tokens=False):
        """A `StreamDecoder` for printing generated tokens as they arrive (see its docstring)."""
        return StreamDecoder(self._token_bytes, self._special_ids, skip_special_tokens)

    def id_to_token(self, token_id):
        """The token's string as tokenizer.json writes it (byte-level characters, e.g. 'Ġthe')."""
        return self._token_strings[token_id]

    # -- the chat template -------------------------------------------------------------------------

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        """Render a conversation in MiniMind2's format; return the text, or its ids if tokenize=True.

            <s>system\\n{system}</s>\\n            (DEFAULT_SYSTEM_PROMPT if messages[0] is not a system turn)
            <s>user\\n{content}</s>\\n<s>assistant\\n   for each user turn
            {content}</s>\\n                        for each assistant turn

        A user turn already ends with the assistant header, so a conversation ending in a user
        turn is ready for generation whatever `add_generation_prompt` says; the argument exists
        for Hugging Face compatibility and changes nothing, exactly as in MiniMind2's template.
        MiniMind2's jinja silently drops a system turn that is not first and any unknown role;
        here those raise ValueError, since dropping text silently is never what the caller meant.
        """
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
                raise ValueError(f"message {k} must be a dict with a 'role' and a str 'content', got {m!r}")
            if m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"message {k} has role {m['role']!r}; use 'system', 'user' or 'assistant'")
            if m["role"] == "system" and k > 0:
                raise ValueError(f"message {k} is a system message; MiniMind2's template only reads "
                                 "one, as the first message")
        system = messages[0]["content"] if messages[0]["role"] == "system" else DEFAULT_SYSTEM_PROMPT
        parts = [f"<s>system\n{system}</s>\n"]
        for m in messages:
            if m["role"] == "user":
                parts.append(f"<s>user\n{m['content']}</s>\n<s>assistant\n")
            elif m["role"] == "assistant":
                parts.append(f"{m['content']}</s>\n")
        text = "".join(parts)
        return self.encode(text) if tokenize else text

    # -- file I/O ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path):
        """Load a Hugging Face byte-level BPE: a directory holding tokenizer.json, or the file itself, with
        its tokenizer_config.json beside it if there is one (bos/eos/pad; else <s>, </s>, <unk>). Reading
        the files, and every check of what they hold, is formats/tokenizer_json.py's."""
        file, vocab, merges, added, special_names, template = read_tokenizer_json(path)
        if template not in (None, MINIMIND2_CHAT_TEMPLATE):
            warnings.warn(f"{file}'s tokenizer_config.json has its own chat_template; apply_chat_template here "
                          "always renders MiniMind2's format", stacklevel=2)
        try:
            return cls(vocab, merges, added, **special_names)
        except ValueError as e:  # inconsistent: ids with gaps, a merge of unknown tokens, no byte tokens, ...
            raise TokenizerError(f"{file}: {e}") from None

    def files(self):
        """{"tokenizer.json": text, "tokenizer_config.json": text}: what save() writes, in memory, as Hugging
        Face writes them for MiniMind2 (formats/tokenizer_json.py), byte for byte the same every time."""
        return tokenizer_json_files(self.vocab, self.merges, self.added_tokens, self.bos_token, self.eos_token,
                                    self.pad_token, MINIMIND2_CHAT_TEMPLATE)

    def save(self, directory):
        """Write tokenizer.json and tokenizer_config.json (with the chat template) into directory."""
        os.makedirs(directory, exist_ok=True)
        for name, text in self.files().items():
            atomic_write_text(os.path.join(directory, name), text)

    def fingerprint(self):
        """sha256 (hex) of the files save() writes: any changed token, id, merge or special token changes
        it, while the same tokenizer read from a differently formatted file keeps it. Checkpoints record
        it, so a model is never run with a tokenizer other than the one it was trained with."""
        digest = hashlib.sha256()
        for name, text in sorted(self.files().items()):
            digest.update(name.encode() + b"\0" + text.encode("utf-8"))
        return digest.hexdigest()


def _encode_many(tokenizer, texts, allow_special):
    """Worker-process body of Tokenizer.encode_batch (module level so it can be pickled)."""
    return [tokenizer.encode(t, allow_special) for t in texts]
