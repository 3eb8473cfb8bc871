"""See what a sample trains on: one record of a pretraining or SFT file, its trained tokens marked.

    python -m dataset.show_sample --show dataset/sft_demo.jsonl              # the first record
    python -m dataset.show_sample --show dataset/sft_demo.jsonl --index 7 --tokens   # every position

SFT trains only on the assistant's replies and the </s> closing each: this prints the tokenized sample
with those targets in [[...]] (green on a terminal), so the loss mask of dataset/lm_dataset.py can be
seen rather than believed.
"""
import argparse
import os
import sys

from dataset.lm_dataset import encode_with_spans, make_example, pretrain_text, sft_text
from dataset.records import check_record, jsonl_lines, parse_line
from dataset.token_cache import DataError
from plumbing.errors import UserError, run_main


def read_record(data_path, index):
    """The index-th record (0-based, blank lines not counted) of a jsonl file -> (record, "FILE:LINE")."""
    count = 0
    for raw, where in jsonl_lines(data_path):
        if count == index:
            return parse_line(raw, where), where
        count += 1
    raise DataError(f"{data_path}: there is no record {index}, the file has {count} records "
                    "(--index counts from 0)")


def show_sample(data_path, tokenizer, index=0, max_length=512, color=False, per_token=False):
    """One sample as text, its trained targets in [[...]] (or green when color=True), plus counts.

    For '<s>user\\nHi</s>\\n<s>assistant\\nHello!</s>\\n' the output contains
      <s>user
      Hi</s>
      <s>assistant
      [[Hello!</s>]]
    per_token=True adds a table: position, X (input token), Y (target), loss_mask.
    """
    record, where = read_record(data_path, index)
    kind, content = check_record(record, where)
    text_and_spans = sft_text(content, tokenizer) if kind == "sft" else pretrain_text(content, tokenizer)
    [(ids, spans)] = encode_with_spans([text_and_spans], tokenizer)
    X, Y, loss_mask = make_example(ids, spans, max_length, tokenizer.pad_token_id)
    n = min(len(ids), max_length)       # real tokens in the window; the rest is padding
    trained = int(loss_mask.sum())

    # Y[p] is token p+1; group consecutive targets with the same mask value and decode each group whole
    # (a character can be split over several byte-level tokens).
    open_mark, close_mark = ("\033[1;32m", "\033[0m") if color else ("[[", "]]")
    text = [tokenizer.decode(X[:1].tolist())]
    p = 0
    while p < n - 1:
        q = p
        while q < n - 1 and loss_mask[q] == loss_mask[p]:
            q += 1
        piece = tokenizer.decode(Y[p:q].tolist())
        text.append(open_mark + piece + close_mark if loss_mask[p] else piece)
        p = q
    lines = [f"{where} ({'SFT' if kind == 'sft' else kind}) -- {len(ids)} tokens, max_length {max_length}: "
             f"{n - 1} targets, {trained} trained" + (", the rest not" if trained < n - 1 else ""),
             f"trained = the tokens the model learns to predict, shown {'in green' if color else 'in [[...]]'}",
             "", "".join(text), ""]
    if len(ids) > max_length:
        lines.append(f"(cut at max_length: {len(ids) - max_length} more tokens dropped)")
    lines.append(f"(+ {max_length - n} padding tokens, never trained)")
    if per_token:
        lines += ["", f"{'pos':>4}  {'X (reads)':<16} {'Y (predicts)':<16} loss_mask"]
        for p in range(n - 1):
            lines.append(f"{p:>4}  {tokenizer.decode([int(X[p])])!r:<16} "
                         f"{tokenizer.decode([int(Y[p])])!r:<16} {int(loss_mask[p])}")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(description="Print one sample of a pretraining or SFT jsonl file "
                                                 "with the tokens it trains on marked.")
    parser.add_argument("--show", required=True, metavar="FILE",
                        help="jsonl file: {\"text\": ...} lines (pretraining) or {\"conversations\": [...]} (SFT)")
    parser.add_argument("--index", type=int, default=0, help="which record to show, counting from 0")
    parser.add_argument("--tokenizer", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "demo_tokenizer"),
                        help="tokenizer directory or tokenizer.json (default: model/demo_tokenizer)")
    parser.add_argument("--max_length", type=int, default=512, help="sequence length the sample is cut/padded to")
    parser.add_argument("--tokens", action="store_true",
                        help="also print every position: the token read (X), the target (Y) and its loss_mask")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.max_length < 2:
        raise UserError(f"--max_length must be at least 2, got {args.max_length}")
    from formats.loader import load_tokenizer  # imported here: the datasets work with any such tokenizer
    tokenizer = load_tokenizer(args.tokenizer)
    print(show_sample(args.show, tokenizer, args.index, args.max_length,
                      color=sys.stdout.isatty(), per_token=args.tokens))


if __name__ == "__main__":
    sys.exit(run_main(main))
