"""Talk to a trained MiniMind model, or measure it (MiniMind2's eval_model.py, with more to it).

Three ways to use it, one model loader (formats/loader.py) behind all of them:

    python eval_model.py                                  # built-in prompts, then exit (--mode auto)
    python eval_model.py --mode chat                      # interactive chat: /help, /reset, /lora NAME
    python eval_model.py --eval_data dataset/eval_medical.jsonl --lora_name lora_medical --compare

Scoring (--eval_data) is evaluation.py's: greedy answers graded by `must_contain`, and the loss of
the reference answers. --compare scores the base model and each adapter side by side, and then the
base again after `remove_lora`: that last column must equal the first exactly, because an unmerged
adapter sits beside the frozen weights and never touches them.

The checkpoint is found from its files (the only full_sft_*.pth in --out_dir, or --dim's), and this
project's checkpoints carry a .json sidecar (config + tokenizer), so no size flags are needed; a
MiniMind2 plain .pth needs --dim/--n_layers and --tokenizer, as in MiniMind2. Adapters live in
OUT_DIR/lora/{lora_name}_{dim}.pth.
"""
import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluation import AUTO_PROMPTS, MAX_NEW_TOKENS, TEMPERATURE, TOP_P, evaluate_set, load_eval_set, prompt_ids
from formats.loader import (MODEL_MODES, adapter_path, add_inference_args, check_adapter_name, find_checkpoint,
                            list_adapters, load_checkpoint, missing_adapter_message, shape_from_args)
from model.model_lora import load_lora, lora_state_dict, remove_lora
from plumbing.device import pick_device, pick_dtype
from plumbing.errors import UserError, run_main

# ---------------------------------------------------------------------------------------------
# 1. Adapters on the loaded base
# ---------------------------------------------------------------------------------------------

def attach_adapter(model, path, allow_other_base=False):
    """Swap in the adapter stored at `path` -> its number of parameters. The base weights are untouched.

    load_lora rebuilds the adapters from the file: its rank and targets come from the file's
    "lora_config" (this project's adapters) or from the tensors' shapes (MiniMind2's, scale 1); an
    adapter trained on another base is refused unless allow_other_base (--allow_other_base).
    """
    remove_lora(model)  # one adapter at a time; a no-op on a plain model
    load_lora(model, path, allow_other_base=allow_other_base)
    return sum(t.numel() for t in lora_state_dict(model).values())


def find_adapter(out_dir, lora_name, dim, use_moe=False):
    """OUT_DIR/lora/{lora_name}_{dim}.pth, or a one-line UserError listing the adapters that exist."""
    path = adapter_path(out_dir, lora_name, dim, use_moe)
    if not Path(path).is_file():
        raise UserError(missing_adapter_message(out_dir, lora_name, dim, use_moe))
    return path


def count_base_parameters(model):
    """Parameters of the model without adapters; the tied embedding/output matrix counts once."""
    return sum(p.numel() for n, p in model.named_parameters() if ".lora." not in n)


# ---------------------------------------------------------------------------------------------
# 2. Variants: the base model, each adapter, and the base again after removing the adapter
# ---------------------------------------------------------------------------------------------

def variants(model, adapters, compare, with_removed, allow_other_base=False):
    """Yield (label, adapter parameter count) after putting `model` in each state to evaluate.

    adapters: list of (name, path). Without --compare the model is evaluated once, with its
    adapter if one was named.
    """
    if compare or not adapters:
        remove_lora(model)
        yield "base", 0
    for name, path in adapters:
        yield f"+{name}", attach_adapter(model, path, allow_other_base)
    if compare and adapters and with_removed:
        remove_lora(model)
        yield "adapter removed", 0


def run_scoring(model, tok, adapters, sets, compare, max_new_tokens, batch_size, context, allow_other_base=False):
    """Score every eval set ({name: items}, see load_eval_set) for every variant -> a results dict
    (printed as table or JSON)."""
    columns = []
    for label, adapter_params in variants(model, adapters, compare, True, allow_other_base):
        column = {"name": label, "adapter_parameters": adapter_params, "sets": {}}
        for set_name, items in sets.items():
            t0 = time.perf_counter()
            res = evaluate_set(model, tok, items, max_new_tokens, batch_size, context)
            column["sets"][set_name] = res
            print(f"[{label}] {set_name}: {res['correct']}/{res['n']} correct, loss {res['loss']:.3f}"
                  f" ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        columns.append(column)
    return {"columns": columns}


def format_table(results):
    """The results as a markdown table: one column per variant, accuracy and loss rows per set."""
    columns = results["columns"]
    lines = ["| eval set | metric | " + " | ".join(c["name"] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for set_name in columns[0]["sets"]:
        cells = [c["sets"][set_name] for c in columns]
        n = cells[0]["n"]
        lines.append(f"| {set_name} ({n}) | accuracy | "
                     + " | ".join(f"{r['accuracy']:.1%} ({r['correct']}/{n})" for r in cells) + " |")
        lines.append("| | loss (ppl) | " + " | ".join(f"{r['loss']:.3f} ({r['ppl']:.2f})" for r in cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 3. Talking: the built-in prompts (--mode auto) and the interactive chat (--mode chat)
# ---------------------------------------------------------------------------------------------

@dataclass
class Sampling:
    """How replies are generated in auto and chat modes (scoring is always greedy)."""

    max_new_tokens: int  # longest reply, in tokens
    temperature: float  # 0 = greedy
    top_p: float  # nucleus sampling threshold
    seed: int  # the same seed gives the same replies


def reply(model, tok, messages, sampling, context, stream):
    """Generate one assistant reply to `messages`; printed piece by piece when `stream`."""
    device = next(model.parameters()).device
    max_new_tokens = min(sampling.max_new_tokens, context - 1)
    ids = torch.tensor([prompt_ids(tok, messages, context, max_new_tokens)], device=device)  # (1, T)
    max_new_tokens = min(max_new_tokens, context - ids.shape[1])  # prompt + answer never longer than the context
    kwargs = dict(eos_token_id=tok.eos_token_id, max_new_tokens=max_new_tokens, temperature=sampling.temperature,
                  top_p=sampling.top_p, pad_token_id=tok.pad_token_id, seed=sampling.seed)
    if not stream:
        new = model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        return tok.decode(new, skip_special_tokens=True)
    # The stream decoder holds back bytes until they form whole UTF-8 characters, so a Chinese
    # character split over two tokens is printed once, complete.
    decoder, pieces = tok.stream_decoder(), []
    for step in model.generate(ids, stream=True, **kwargs):  # step: (1, 1), the newest token
        token = step[0, -1].item()
        if token == tok.eos_token_id:
            break
        text = decoder.push(token)
        pieces.append(text)
        print(text, end="", flush=True)
    tail = decoder.flush()
    print(tail, flush=True)
    return "".join(pieces) + tail


def run_auto(model, tok, adapters, compare, sampling, context, stream, quiet, allow_other_base=False):
    """Answer the built-in prompts with each variant (printed unless `quiet`) -> [{variant, prompt, answer}]."""
    records = []
    for label, _ in variants(model, adapters, compare, False, allow_other_base):
        if not quiet:
            print(f"\n=== {label} ===")
        for prompt in AUTO_PROMPTS:
            if not quiet:
                print(f"👶: {prompt}\n🤖: ", end="", flush=True)
            answer = reply(model, tok, [{"role": "user", "content": prompt}], sampling, context, stream and not quiet)
            if not quiet and not stream:
                print(answer)
            records.append({"variant": label, "prompt": prompt, "answer": answer})
    return records


CHAT_HELP = """commands: /reset (forget the history)  /lora NAME (switch adapter)  /lora none (no adapter)
          /lora (list adapters)  /help  /exit"""


def readable(line):
    """A line typed at the chat prompt -> (text, whether bytes had to be replaced).

    Bytes that are not UTF-8 (a file in another encoding, a long paste cut mid-character by the
    terminal) reach Python as lone surrogates ('\\udcff', see run_chat), which are not text and which
    the tokenizer refuses. They become U+FFFD, the replacement character, as the decoder shows them.
    readable("caf\\udce9") -> ("caf\\ufffd", True)
    """
    text = re.sub("[\ud800-\udfff]", "\ufffd", line)
    return text, text != line


def run_chat(model, tok, adapters, out_dir, sampling, context, history_cnt, stream, allow_other_base=False):
    """Interactive chat. History keeps the last `history_cnt` exchanges; /lora switches adapters
    on the loaded base without reloading it (each adapter is a few small matrices).

    The session survives what a person at a terminal does: Ctrl-C during a reply stops that reply
    (Ctrl-C or Ctrl-D at the prompt ends the session), bytes that are not UTF-8 are replaced, and a
    /lora that fails keeps the adapter that was active.
    """
    dim = model.config.dim
    current, current_path = None, None  # the active adapter's name and file
    if adapters:
        current, current_path = adapters[0]
        attach_adapter(model, current_path, allow_other_base)
    # Undecodable input bytes become lone surrogates instead of a UnicodeDecodeError that would end the
    # session (and lose the line); readable() then replaces them. (A StringIO in tests has no encoding.)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    told_about_bytes = False
    history = []
    print(f"chatting with {'+' + current if current else 'the base model'}; {CHAT_HELP}")
    while True:
        try:
            line, replaced = readable(input("👶: ").strip())
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C, or stdin closed
            print()
            return
        if replaced and not told_about_bytes:
            print("(bytes that are not UTF-8 text were replaced with \ufffd)")
            told_about_bytes = True
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/help":
            print(CHAT_HELP)
        elif line == "/reset":
            history = []
            print("(history cleared)")
        elif line == "/lora":
            print(f"adapter: {current or 'none'}; available: {', '.join(list_adapters(out_dir, dim, model.config.use_moe)) or 'none'}")
        elif line.startswith("/lora "):
            name = line.split(maxsplit=1)[1]
            try:
                if name.lower() == "none":
                    remove_lora(model)
                    current, current_path = None, None
                else:
                    path = find_adapter(out_dir, name, dim, model.config.use_moe)  # a wrong name changes nothing
                    n_params = attach_adapter(model, path, allow_other_base)  # removes the active adapter first
                    current, current_path = name, path
                    print(f"(adapter {name}: {n_params:,} parameters)")
                history = []  # a reply written by another adapter would steer this one
                print(f"(now: {'+' + current if current else 'base model'}; history cleared)")
            except UserError as e:  # e.g. a damaged adapter file: put the active one back
                remove_lora(model)
                try:
                    if current_path is not None:
                        attach_adapter(model, current_path, allow_other_base)
                except UserError:  # its file changed since it was loaded: the base model it is
                    current, current_path = None, None
                print(f"(error: {e}; still {'+' + current if current else 'the base model'})")
        elif line.startswith("/"):
            print(f"(unknown command {line.split()[0]}) {CHAT_HELP}")
        else:
            messages = history[-2 * history_cnt:] if history_cnt else []
            messages = messages + [{"role": "user", "content": line}]
            print("🤖: ", end="", flush=True)
            try:
                answer = reply(model, tok, messages, sampling, context, stream)
            except KeyboardInterrupt:  # stop this reply, keep the session and its history
                print("\n(reply stopped; Ctrl-C at the prompt ends the chat)")
                continue
            if not stream:
                print(answer)
            history = messages + [{"role": "assistant", "content": answer}]


# ---------------------------------------------------------------------------------------------
# 6. Command line
# ---------------------------------------------------------------------------------------------

def build_parser():
    """MiniMind2's flags (names kept), plus this project's --mode, --ckpt, --eval_data, --compare, --json."""
    p = argparse.ArgumentParser(description="Chat with, or score, a MiniMind checkpoint and its LoRA adapters.")
    p.add_argument("--mode", choices=["auto", "chat"], default=None,
                   help="auto (default): answer the built-in prompts and exit; chat: interactive chat")
    add_inference_args(p, lora_help="adapter(s) OUT_DIR/lora/NAME_DIM.pth; several only with --compare; 'None' = no adapter")
    p.add_argument("--max_seq_len", type=int, default=None,
                   help="context length: prompt + answer are cut to it (default: the model's max_seq_len)")
    p.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS, help="longest answer, in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE,
                   help="sampling temperature for auto/chat (0 = greedy; scoring is always greedy). MiniMind2 "
                        "uses 0.85, at which the 1M-parameter demo model garbles new words such as its new name "
                        "(default: %(default)s)")
    p.add_argument("--top_p", type=float, default=TOP_P, help="nucleus sampling threshold for auto/chat (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed: the same seed gives the same answers (default: %(default)s)")
    p.add_argument("--history_cnt", type=int, default=0, help="chat: previous exchanges kept as context (default: %(default)s)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print answers token by token as they are generated")
    p.add_argument("--eval_data", nargs="+", default=None,
                   help="score these jsonl files ({question, answer, must_contain}) instead of chatting")
    p.add_argument("--compare", action="store_true",
                   help="evaluate the base model, each adapter, and the base after removing the adapter, side by side")
    p.add_argument("--batch_size", type=int, default=16, help="questions generated together when scoring (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return p


def check_args(args):
    """Refuse a flag combination or value that cannot work, before anything is loaded -> the adapter names."""
    names = [n for n in (args.lora_name or []) if n.lower() != "none"]
    if args.eval_data and args.mode == "chat":
        raise UserError("--eval_data scores a file; it cannot be combined with --mode chat")
    if args.json and args.mode == "chat":
        raise UserError("--json is for --mode auto and --eval_data, not for an interactive chat")
    if len(names) > 1 and not args.compare:
        raise UserError(f"{len(names)} adapters named: pass one --lora_name, or add --compare to evaluate them side by side")
    if args.compare and not names:
        raise UserError("--compare puts the base model beside an adapter: name it with --lora_name NAME")
    for name in names:
        check_adapter_name(name)
    for flag in ("max_new_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise UserError(f"--max_seq_len must be at least 2 (a prompt token and an answer token), got {args.max_seq_len}")
    if not (0 < args.top_p <= 1):
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    if args.history_cnt < 0:
        raise UserError(f"--history_cnt must be 0 or more, got {args.history_cnt}")
    return names


def main(argv=None):
    """Check the flags, load the model and its adapters, then score, chat or answer the prompts."""
    args = build_parser().parse_args(argv)
    names = check_args(args)
    device = pick_device(args.device)
    dtype, dtype_note = pick_dtype(device, args.dtype)
    torch.manual_seed(args.seed)

    eval_sets = {Path(f).stem: load_eval_set(f) for f in args.eval_data or []}  # a bad file fails before the model loads

    ckpt = args.ckpt or find_checkpoint(args.out_dir, MODEL_MODES[args.model_mode], args.dim, args.use_moe)
    shape = shape_from_args(args)
    loaded = load_checkpoint(ckpt, tokenizer=args.tokenizer, shape=shape, max_seq_len=args.max_seq_len, device=device,
                             dtype=dtype)
    model, tok = loaded.model, loaded.tokenizer
    context = args.max_seq_len or model.config.max_seq_len
    adapters = [(n, find_adapter(args.out_dir, n, model.config.dim, model.config.use_moe)) for n in names]
    precision = str(dtype).removeprefix("torch.") + (f" ({dtype_note})" if dtype_note else "")
    print(f"model {ckpt}: {count_base_parameters(model) / 1e6:.2f}M parameters in {precision}, tokenizer "
          f"{loaded.tokenizer_path}", file=sys.stderr, flush=True)

    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if args.eval_data:
        results = run_scoring(model, tok, adapters, eval_sets, args.compare, args.max_new_tokens, args.batch_size, context,
                              args.allow_other_base)
        results = {"checkpoint": str(ckpt), "parameters": count_base_parameters(model),
                   "vocab_size": tok.vocab_size, **results}
        print(json.dumps(results, ensure_ascii=False, indent=1) if args.json else format_table(results))
    elif args.mode == "chat":
        run_chat(model, tok, adapters, args.out_dir, sampling, context, args.history_cnt, args.stream, args.allow_other_base)
    else:
        records = run_auto(model, tok, adapters, args.compare, sampling, context, args.stream, args.json, args.allow_other_base)
        if args.json:
            print(json.dumps(records, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    sys.exit(run_main(main))
