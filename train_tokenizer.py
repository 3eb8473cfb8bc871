"""
Learn a byte-level BPE tokenizer from jsonl text: the training half of model/tokenizer.py.

    python train_tokenizer.py        # the demo's: dataset/pretrain_demo.jsonl -> model/demo_tokenizer (2048 tokens)
    python train_tokenizer.py --data_path sample.jsonl --vocab_size 6400 --max_token_length 0 --tokenizer out/tok  # MiniMind2's size

BPE training, in four steps (what Hugging Face's BpeTrainer does, which MiniMind uses):
  1. cut the text into chunks with the same split pattern the tokenizer uses, count each distinct
     chunk once (a word seen 10,000 times is processed once, weighted by 10,000);
  2. start from one token per byte: ids 0, 1, 2 are the special tokens <unk> <s> </s>, then the 256
     byte tokens in the order of their printable characters (the order HF gives them);
  3. repeatedly take the most frequent adjacent pair, merge it into a new token everywhere;
  4. stop at vocab_size tokens and write tokenizer.json + tokenizer_config.json.

Ties (pairs with the same count) go to the pair with the smaller ids, as in HF, so a run is fully
deterministic: the same data and vocab_size always give a byte-identical tokenizer.json.
Each input line is {"text": "..."} (pretraining) or {"conversations": [{"role", "content"}, ...]}
(SFT: every turn's content is used as text; the chat template's fixed words are not counted).
Lines are read and checked by dataset/lm_dataset.py, as for training, so a bad line is reported the
same way: FILE:LINE, the problem, and how to fix it.
"""
import argparse
import collections
import heapq
import operator
import sys

from tqdm import tqdm

from dataset.records import check_record, jsonl_lines, parse_line
from plumbing.errors import UserError, run_main
from formats.loader import path_for_sidecar, repo_path
from plumbing.run_lock import make_out_dir
from model.tokenizer import Tokenizer, bytes_to_unicode, split_chunks

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: padding/unknown, begin, end (MiniMind2's)


def read_texts(paths):
    """Yield the training text of every line of the given jsonl files: a pretraining line's "text",
    every turn's "content" of an SFT line.

    Bad input raises DataError (a ValueError) naming FILE:LINE, what is wrong and how to fix it.
    Blank lines are skipped.
    """
    for path in paths:
        for raw, where in jsonl_lines(path):
            kind, content = check_record(parse_line(raw, where), where)
            if kind == "pretrain":
                yield content
            else:
                yield from (message["content"] for message in content)


def count_chunks(texts, special_tokens=SPECIAL_TOKENS):
    """Count the distinct chunks of all texts: {chunk: how many times it occurs}.

    Special tokens written in the text are cut out first, so "<s>" never teaches merges of "<", "s".
    count_chunks(["hi hi", "hi"]) -> {"hi": 2, " hi": 1}
    """
    special_pattern = Tokenizer.special_pattern(special_tokens)
    counts = collections.Counter()
    for text in texts:
        for piece in special_pattern.split(text)[::2]:  # even items are the text between specials
            counts.update(split_chunks(piece))  # Counter.update on a list runs in C
    return counts


def train_bpe(chunk_counts, vocab_size, special_tokens=SPECIAL_TOKENS, progress=True, max_token_length=None):
    """Learn merges from chunk counts until the vocabulary has vocab_size tokens; return a Tokenizer.

    Known answer (ids: 3 specials, then 256 bytes, then new tokens from 259):
        chunks {"aaabdaaabac": 1}, vocab_size 262
        pairs: aa:4, ab:2, ... -> merge (a,a) -> "aa" (259): "aa a b d aa a b a c"
        pairs: (aa,a):2, (a,b):2 are tied; (a,b) wins, its ids are smaller -> "ab" (260)
        then (aa,ab):2 -> "aaab" (261): "aaab d aaab a c"

    max_token_length (HF BpeTrainer's option): a pair whose merged token would be longer than this
    many bytes is never merged, so the merges go to reusable pieces rather than whole phrases.

    Every token is kept as one character chr(id), so a chunk is a str and a merge is str.replace.
    The pair counts are updated incrementally: merging (a, b) -> X only changes the pairs
    touching each new X (its left and right neighbours), so only those counts move.
    """
    byte_char = bytes_to_unicode()
    if vocab_size < len(special_tokens) + 256:
        raise ValueError(f"--vocab_size {vocab_size} is too small: it must hold the "
                         f"{len(special_tokens)} special tokens and 256 byte tokens (at least "
                         f"{len(special_tokens) + 256})")
    if max_token_length is not None and max_token_length < 2:
        raise ValueError(f"--max_token_length {max_token_length} is too small: a merged token has at least 2 bytes")

    # step 2: the starting vocabulary, as HF orders it (specials, then bytes by character)
    vocab = {token: i for i, token in enumerate(special_tokens)}
    for c in sorted(byte_char.values()):
        vocab[c] = len(vocab)
    token_strings = list(vocab)  # id -> token string
    # a chunk as a string of id-characters: utf-8 bytes, one character each, mapped to chr(id)
    to_ids = [chr(vocab[byte_char[b]]) for b in range(256)]
    words = [chunk.encode("utf-8").decode("latin-1").translate(to_ids) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())

    # step 3a: count every adjacent pair once, remembering which words hold it
    pair_counts = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for idx, (word, freq) in enumerate(zip(words, freqs)):
        for pair in map(operator.add, word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(idx)
    # max-heap by count via negation; a pair string compares like its (left id, right id) tuple,
    # so among equal counts the pair with smaller ids pops first. Entries go stale when a count
    # changes; a popped entry whose count no longer matches is simply dropped.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    n_merges = vocab_size - len(vocab)
    # disable=None: a bar on a terminal, none in a log file
    bar = tqdm(total=n_merges, desc="merges", unit="merge", disable=None if progress else True)
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -neg_count:
            continue  # stale entry
        left, right = pair
        if max_token_length and len(token_strings[ord(left)]) + len(token_strings[ord(right)]) > max_token_length:
            continue  # too long: never merged (HF's max_token_length; a token string holds one char per byte)
        # step 3b: the new token X = left + right
        new = chr(len(token_strings))
        token_strings.append(token_strings[ord(left)] + token_strings[ord(right)])
        merges.append((token_strings[ord(left)], token_strings[ord(right)]))
        del pair_counts[pair]

        # step 3c: rewrite the words that hold the pair, and collect how the other pair counts move
        delta = collections.defaultdict(int)
        for idx in where.pop(pair):
            old = words[idx]
            if pair not in old:
                continue  # this word lost the pair to an earlier merge; `where` keeps stale entries
            word = words[idx] = old.replace(pair, new)
            freq = freqs[idx]
            j = word.find(new)
            while j != -1:
                # left neighbour: (L, left) becomes (L, X). If L is itself an X from this merge,
                # the old pair between them was (right, left) and the new one is (X, X).
                if j > 0:
                    neighbour = word[j - 1]
                    delta[(right if neighbour == new else neighbour) + left] -= freq
                    delta[neighbour + new] += freq
                    where[neighbour + new].add(idx)
                # right neighbour: (right, R) becomes (X, R); an X there is handled as its left side
                if j + 1 < len(word) and word[j + 1] != new:
                    neighbour = word[j + 1]
                    delta[right + neighbour] -= freq
                    delta[new + neighbour] += freq
                    where[new + neighbour].add(idx)
                j = word.find(new, j + 1)
        for changed, d in delta.items():
            if d == 0 or changed == pair:  # (a, a) merges: the overlapping pair is already gone
                continue
            count = pair_counts[changed] = pair_counts[changed] + d
            if count > 0:
                heapq.heappush(heap, (-count, changed))
            else:
                del pair_counts[changed]
        bar.update(1)
    bar.close()
    if len(merges) < n_merges:
        print(f"note: the text has no more pairs to merge; the vocabulary stops at "
              f"{len(token_strings)} tokens instead of {vocab_size}", file=sys.stderr)

    vocab = {token: i for i, token in enumerate(token_strings)}
    added = [{"id": i, "content": t, "special": True} for i, t in enumerate(special_tokens)]
    return Tokenizer(vocab, merges, added, bos_token=special_tokens[1], eos_token=special_tokens[2],
                     pad_token=special_tokens[0])


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--data_path", nargs="+", default=[repo_path("dataset/pretrain_demo.jsonl")],
                        help="one or more jsonl files with {'text'} or {'conversations'} lines "
                             "(default: the repository's dataset/pretrain_demo.jsonl)")
    parser.add_argument("--vocab_size", type=int, default=2048,
                        help="tokens in the finished vocabulary, specials and 256 bytes included (default: %(default)s, "
                             "the demo's: 6400, MiniMind2's, leaves too little text per embedding in the small demo world)")
    parser.add_argument("--max_token_length", type=int, default=9,
                        help="never make a token longer than this many bytes, i.e. 3 Chinese characters "
                             "(HF BpeTrainer's max_token_length; default: %(default)s: on a small repetitive corpus, "
                             "merges would otherwise go to whole recurring phrases; MiniMind2 sets no limit, 0)")
    parser.add_argument("--tokenizer", default=repo_path("model/demo_tokenizer"),
                        help="the tokenizer folder to write tokenizer.json and tokenizer_config.json into (default: the "
                             "repository's model/demo_tokenizer, which every stage's --tokenizer reads by default)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.vocab_size < len(SPECIAL_TOKENS) + 256:
        raise UserError(f"--vocab_size {args.vocab_size} is too small: it must hold the {len(SPECIAL_TOKENS)} special "
                        f"tokens and 256 byte tokens (at least {len(SPECIAL_TOKENS) + 256})")
    if args.max_token_length == 1 or args.max_token_length < 0:
        raise UserError(f"--max_token_length {args.max_token_length} is too small: a merged token has at least 2 bytes "
                        "(0 = no limit)")
    make_out_dir(args.tokenizer, "--tokenizer")  # a bad folder is found now, not after the training
    counts = count_chunks(tqdm(read_texts(args.data_path), desc="reading", unit=" texts", disable=None))
    if not counts:
        raise UserError(f"{', '.join(args.data_path)}: no text found; nothing to train on")
    tokenizer = train_bpe(counts, args.vocab_size, max_token_length=args.max_token_length or None)
    tokenizer.save(args.tokenizer)
    # how much the merges compress the training text: bytes per token (1.0 before any merge)
    n_bytes = sum(len(chunk.encode("utf-8")) * n for chunk, n in counts.items())
    n_tokens = sum(len(tokenizer.encode(chunk, allow_special=False)) * n for chunk, n in counts.items())
    print(f"vocab {tokenizer.vocab_size} tokens, {len(tokenizer.merges)} merges -> {path_for_sidecar(args.tokenizer)}; "
          f"training text: {n_bytes:,} bytes -> {n_tokens:,} tokens "
          f"({n_bytes / max(n_tokens, 1):.2f} bytes/token)")


if __name__ == "__main__":
    sys.exit(run_main(main))
