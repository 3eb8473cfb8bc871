"""
Pretraining, SFT and DPO datasets in MiniMind's jsonl formats, for files of many gigabytes.

A language model is trained to predict token t+1 from tokens 0..t. A data set therefore gives, for each
sample, the token ids and which of them the model must learn to predict (the loss mask). This file builds
that, top to bottom:

1. (Reading jsonl one line at a time, each record checked, a bad line an error naming FILE:LINE, is
   dataset/records.py's.)
2. One record -> its text and the character spans to train on. Pretraining trains on every token after
   <s>; SFT only on each assistant reply and the </s> that closes it, never on the system prompt, the
   user, or the template.
3. Text + character spans -> token ids + trained token spans -> MiniMind's (X, Y, loss_mask): the text is
   tokenized whole, exactly as at chat time, then cut, padded and shifted by one.
4. PretrainDataset, SFTDataset and DPODataset (preference pairs), read from a pre-tokenized cache (dataset/token_cache.py: the file is
   tokenized once, streamed, into flat binary arrays read a sample at a time, so memory does not grow
   with the file; MiniMind reads whole files into RAM, on every process).
5. (`python -m dataset.show_sample --show FILE` prints one sample with its trained tokens marked.)

The tokenizer is any byte-level BPE object with model/tokenizer.py's interface (encode_batch, decode,
id_to_token, added_tokens, apply_chat_template, bos/eos/pad_token_id, vocab_size, save).
"""
import os
import sys

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.records import check_dpo_record, check_pretrain_record, check_sft_record, parse_line
from dataset.token_cache import DataError, build_cache, cache_folder, open_cache


# ---------------------------------------------------------------------------------------------------
# 2. One record -> its text and the character spans to train on
# ---------------------------------------------------------------------------------------------------

def token_text(tokenizer, token_id):
    """The text of one special token: token_text(tok, tok.eos_token_id) -> '</s>'."""
    return tokenizer.decode([token_id])


def pretrain_text(text, tokenizer):
    """Pretraining: '<s>' + text + '</s>', every token after '<s>' trained (as MiniMind does).

    pretrain_text("Hi.", tok) -> ('<s>Hi.</s>', [(3, 10)])      ('Hi.</s>' is characters 3 to 10)
    '<s>' is left out only because nothing comes before it to predict it from.
    """
    bos, eos = token_text(tokenizer, tokenizer.bos_token_id), token_text(tokenizer, tokenizer.eos_token_id)
    full = bos + text + eos
    return full, [(len(bos), len(full))]


def sft_text(messages, tokenizer):
    """SFT: the conversation rendered by the chat template, and the character spans of each reply + '</s>'.

    With MiniMind2's template (SYS = the default system prompt):
      sft_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tok)
      -> ('<s>system\\nSYS</s>\\n<s>user\\nHi</s>\\n<s>assistant\\nHello!</s>\\n', [(s, e)])
         where text[s:e] == 'Hello!</s>'

    How a reply is found, for any template: the conversation up to reply k, rendered with
    add_generation_prompt=True, is exactly the prompt the model is given at chat time; everything
    rendering reply k adds after that, up to and including the eos text, is what the model must
    produce. Generation stops at '</s>', so the '\\n' the template puts after it is never produced
    and is not trained (MiniMind trains it; the difference is one always-the-same token per reply).
    Nothing searches the text or the tokens for '<s>assistant' (MiniMind does, and a user message
    quoting the template then gets trained).
    """
    eos = token_text(tokenizer, tokenizer.eos_token_id)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, done = [], 0                       # done: characters of `full` already accounted for
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        with_reply = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        if not (full.startswith(with_reply) and with_reply.startswith(prompt) and len(prompt) >= done):
            raise ValueError("the chat template does not render a conversation as the concatenation of "
                             "its turns, so reply spans cannot be found (use model/tokenizer.py's template)")
        end = with_reply.rfind(eos, len(prompt))
        if end < 0:
            raise ValueError(f"the chat template does not close assistant replies with {eos!r}")
        done = end + len(eos)
        spans.append((len(prompt), done))
    return full, spans


def parse_pretrain_line(raw, where, tokenizer):
    """One line of a pretraining file (bytes) -> (text, spans), or DataError naming `where` (FILE:LINE)."""
    return pretrain_text(check_pretrain_record(parse_line(raw, where), where), tokenizer)


def parse_sft_line(raw, where, tokenizer):
    """One line of an SFT file (bytes) -> (text, spans), or DataError naming `where` (FILE:LINE)."""
    return sft_text(check_sft_record(parse_line(raw, where), where), tokenizer)


def parse_dpo_line(raw, where, tokenizer):
    """One line of a preference file (bytes) -> [(chosen text, spans), (rejected text, spans)], or DataError.

    Each side is trained (scored, for DPO) on its last reply alone, with SFT's mask: the reply and its
    '</s>'. Earlier replies belong to the prompt, which both sides share.
    """
    chosen, rejected = check_dpo_record(parse_line(raw, where), where)
    return [(text, spans[-1:]) for text, spans in (sft_text(chosen, tokenizer), sft_text(rejected, tokenizer))]


# ---------------------------------------------------------------------------------------------------
# 3. Text + character spans -> ids + trained token spans -> (X, Y, loss_mask)
# ---------------------------------------------------------------------------------------------------
# The whole text is tokenized at once, so the ids are exactly those the chat template gives at
# inference (tokenizer.apply_chat_template(messages, tokenize=True)). Tokenizing the prompt and the
# reply apart would not be: BPE's split joins the template's '\n' with a reply's leading whitespace
# ('assistant\n' + '\n\nHi' splits as 'assistant', '\n\n', '\n', 'Hi'), and a vocabulary with 'ĊĊ'
# makes that one token. Which tokens are trained is then read off their byte offsets in the text.

def token_byte_lengths(tokenizer):
    """Bytes of text each token id stands for, as an array indexed by id.

    A byte-level token string has one character per byte ('Ġthe' = b' the' -> 4, 'ä¸Ń' = '中' -> 3);
    a special token stands for its text ('<s>' -> 3).
    """
    special = {t["id"]: t["content"] for t in tokenizer.added_tokens}
    return np.array([len(special[i].encode("utf-8")) if i in special else len(tokenizer.id_to_token(i))
                     for i in range(tokenizer.vocab_size)], dtype=np.int64)


def encode_with_spans(records, tokenizer):
    """[(text, trained character spans)] -> [(ids, trained token spans)], each text tokenized whole.

    A token is trained when it holds at least one byte of a trained span. Only one token can hold
    bytes of both sides: the first token of a reply that starts with whitespace, joined with the
    template's '\\n' (see above). It is trained: predicting it is the model's first step of that reply.
      [('<s>Hi.</s>', [(3, 10)])] -> [([1, 72, 14, 2], [(1, 4)])]      (ids depend on the vocab)
    Specials written in the text ('<s>', '</s>') become their single tokens, as in MiniMind.
    """
    lengths = token_byte_lengths(tokenizer)
    out = []
    for (text, char_spans), ids in zip(records, tokenizer.encode_batch([text for text, _ in records])):
        token_lengths = lengths[np.asarray(ids, dtype=np.int64)]
        ends = np.cumsum(token_lengths)          # byte offset in the text where each token ends
        starts = ends - token_lengths
        if len(ids) == 0 or ends[-1] != len(text.encode("utf-8")):
            raise ValueError("the tokenizer's tokens do not spell out the text byte for byte; "
                             "the datasets need a byte-level BPE tokenizer such as model/tokenizer.py's")
        spans = []
        for c0, c1 in char_spans:
            b0, b1 = len(text[:c0].encode("utf-8")), len(text[:c1].encode("utf-8"))
            first = int(np.searchsorted(ends, b0, side="right"))     # first token ending after byte b0
            last = int(np.searchsorted(starts, b1, side="left"))     # first token starting at or after b1
            spans.append((first, last))
        out.append((ids, spans))
    return out


def encode_pairs(records, tokenizer):
    """[[chosen, rejected], ...] -> [(ids, spans) of chosen, (ids, spans) of rejected, ...]: a preference
    record is two sequences, cached one after the other (DPODataset reads them back as a pair)."""
    return encode_with_spans([side for pair in records for side in pair], tokenizer)


def make_example(ids, spans, max_length, pad_id):
    """(ids, trained spans) -> MiniMind's (X, Y, loss_mask), three LongTensors of length max_length - 1.

    The ids are cut to max_length and padded with pad_id; mask[p] = 1 when token p is trained.
    X = ids[:-1] is what the model reads, Y = ids[1:] what it must predict at each position, and
    loss_mask = mask[1:] lines up with Y. A span cut by max_length keeps the part before the cut;
    padding is never inside a span, so it never carries loss.

    max_length 6, ids [1, 7, 8, 2], span (2, 4) (token 8 and the eos 2 trained):
      padded [1, 7, 8, 2, 0, 0]   mask [0, 0, 1, 1, 0, 0]
      X      [1, 7, 8, 2, 0]
      Y      [7, 8, 2, 0, 0]      loss_mask [0, 1, 1, 0, 0]
    """
    ids = torch.as_tensor(np.asarray(ids[:max_length], dtype=np.int64))
    padded = torch.full((max_length,), pad_id, dtype=torch.long)
    padded[:len(ids)] = ids
    mask = torch.zeros(max_length, dtype=torch.long)
    for start, end in spans:
        mask[start:min(end, max_length)] = 1
    return padded[:-1], padded[1:], mask[1:]


# ---------------------------------------------------------------------------------------------------
# 4. The datasets
# ---------------------------------------------------------------------------------------------------

class TokenizedJsonl(Dataset):
    """What both datasets share: build or open the token cache, then read samples from it.

    Subclasses say how one line becomes (text, trained spans) (parse) and name their kind (kind).
    Under DDP, construct on rank 0 first (it builds the cache), barrier, then on the other ranks
    (they open it), with verbose=False on all but rank 0 so each note is printed once. DataLoader
    workers read samples from the cache files; nothing big is copied.

    build_workers: processes that tokenize when the cache is built; None = up to 8 (one per core)
    for files over 64 MB, else 1 (starting processes costs more than it saves on small files).
    checksums: check the cache's files against the sha256 sums its meta.json records when opening it
    (one to two seconds per GB); False checks their sizes only (for DDP ranks after rank 0 has checked).
    """
    kind = None
    parse = None
    encode = staticmethod(encode_with_spans)  # records -> [(ids, trained token spans)]

    def __init__(self, data_path, tokenizer, max_length, skip_bad=False, cache_dir=None, build_workers=None,
                 verbose=True, checksums=True):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (X and Y are max_length - 1 long), got {max_length}")
        if os.path.isdir(data_path):
            raise DataError(f"{data_path} is a directory; pass a jsonl file (--data_path)")
        if not os.path.isfile(data_path):
            raise DataError(f"data file {data_path} not found (check --data_path)")
        self.data_path = data_path
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id
        self.cache_path = cache_folder(data_path, self.kind, tokenizer, max_length, cache_dir)
        if build_workers is None:
            big = os.path.getsize(data_path) > 64 << 20
            build_workers = min(8, os.cpu_count() or 1) if big else 1
        self.cache = open_cache(self.cache_path, lambda: build_cache(
            data_path, self.cache_path, tokenizer, max_length, parse=self.parse, encode=self.encode,
            skip_bad=skip_bad, workers=build_workers, verbose=verbose), checksums=checksums, verbose=verbose)
        self.meta = self.cache.meta

        skipped = self.meta["skipped"]
        self.skipped = skipped["count"]
        if self.skipped and not skip_bad:
            # The cache was built by a run with skip_bad=True; without it, bad lines are still errors.
            raise DataError(f"{skipped['first_error']} [{self.skipped} bad lines; --skip_bad_lines (skip_bad=True "
                            "in code) skips them]")
        if verbose and self.skipped:
            lines = ", ".join(map(str, skipped["lines"])) + (", ..." if self.skipped > len(skipped["lines"]) else "")
            print(f"skipped {self.skipped} bad lines of {data_path} (lines {lines}); "
                  f"first: {skipped['first_error']}", file=sys.stderr)
        if verbose and self.meta["no_trained_tokens"]:
            print(f"note: {self.meta['no_trained_tokens']} of {len(self.cache)} samples in {data_path} have no "
                  f"trained token within max_length={max_length} (their loss_mask is all zero)", file=sys.stderr)

    @property
    def cache_key(self):
        """Names exactly these samples: data file content, tokenizer, kind, max_length and cache format,
        e.g. 'sft_demo.jsonl.sft.len512.3f2a9c0d1b7e4a55' (the same wherever --cache_dir puts it)."""
        return os.path.basename(self.cache_path)

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, index):
        """-> (X, Y, loss_mask), each a LongTensor of shape (max_length - 1,); see make_example."""
        ids, spans = self.cache.sample(index)
        return make_example(ids, spans, self.max_length, self.pad_id)


class PretrainDataset(TokenizedJsonl):
    """{"text": ...} jsonl -> '<s>text</s>' cut/padded to max_length; loss on every non-pad target.

    ds[i] -> (X, Y, loss_mask), LongTensors of shape (max_length - 1,).
    """
    kind = "pretrain"
    parse = staticmethod(parse_pretrain_line)

    def __init__(self, data_path, tokenizer, max_length=512, skip_bad=False, cache_dir=None, build_workers=None,
                 verbose=True, checksums=True):
        super().__init__(data_path, tokenizer, max_length, skip_bad, cache_dir, build_workers, verbose, checksums)


class SFTDataset(TokenizedJsonl):
    """{"conversations": [...]} jsonl -> chat-template text; loss only on assistant replies + their '</s>'.

    ds[i] -> (X, Y, loss_mask), LongTensors of shape (max_length - 1,). Also what LoRA trains on.
    """
    kind = "sft"
    parse = staticmethod(parse_sft_line)

    def __init__(self, data_path, tokenizer, max_length=1024, skip_bad=False, cache_dir=None, build_workers=None,
                 verbose=True, checksums=True):
        super().__init__(data_path, tokenizer, max_length, skip_bad, cache_dir, build_workers, verbose, checksums)


class DPODataset(TokenizedJsonl):
    """{"chosen": [...], "rejected": [...]} jsonl -> the two conversations, each trained on its last reply.

    ds[i] -> (X, Y, loss_mask), LongTensors of shape (2, max_length - 1): row 0 the chosen conversation,
    row 1 the rejected one, each masked as SFT masks a reply (make_example). What train_dpo.py trains on.
    """
    kind = "dpo"
    parse = staticmethod(parse_dpo_line)
    encode = staticmethod(encode_pairs)

    def __init__(self, data_path, tokenizer, max_length=1024, skip_bad=False, cache_dir=None, build_workers=None,
                 verbose=True, checksums=True):
        super().__init__(data_path, tokenizer, max_length, skip_bad, cache_dir, build_workers, verbose, checksums)

    def __len__(self):
        return len(self.cache) // 2  # the cache holds two sequences a pair

    def __getitem__(self, index):
        chosen, rejected = (make_example(*self.cache.sample(2 * index + side), self.max_length, self.pad_id)
                            for side in (0, 1))
        return tuple(torch.stack(pair) for pair in zip(chosen, rejected))  # X, Y, loss_mask: (2, max_length - 1) each
