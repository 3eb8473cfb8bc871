"""Convert models and adapters to and from Hugging Face: transformers, PEFT, vLLM and the tools that read them.

    # a checkpoint of ours -> a LlamaForCausalLM folder (config.json, model.safetensors, tokenizer files)
    python convert_model.py to-hf --ckpt out/full_sft_128.pth --hf_dir hf/minimind
    # ... with an adapter beside it as a PEFT folder (hf/minimind/adapter/), or merged into the weights
    python convert_model.py to-hf --ckpt out/full_sft_128.pth --hf_dir hf/minimind --lora_path out/lora/my_adapter_128.pth
    python convert_model.py to-hf --ckpt out/full_sft_128.pth --hf_dir hf/medical \
        --lora_path out/lora/lora_medical_128.pth --merge

    # a Llama folder MiniMindLM can express -> a checkpoint + sidecar, its tokenizer in out/llama_tokenizer/
    python convert_model.py from-hf --hf_dir hf/minimind --out out/llama.pth
    # ... and a PEFT LoRA folder -> an adapter file for load_lora, eval_model.py --lora_name and train_lora.py
    python convert_model.py from-hf --hf_dir hf/minimind --out out/llama.pth \
        --peft_dir hf/minimind/adapter --lora_out out/lora/imported_128.pth

Nothing is written before everything is checked, and no existing file or non-empty folder is replaced
without --force (to-hf --force first removes the files of an earlier export from --hf_dir).

The mapping itself (names, the RoPE row permutation, what is refused) is interop/hf_llama.py; the model
is loaded, as by every script, through formats.loader.load_checkpoint. docs/interop.md has the
commands for transformers, PEFT and vLLM, and what is refused. (The demo's adapters also adapt the tied
embedding, which PEFT cannot hold: they go out with --merge.)
"""
import argparse
import os
import re
import sys

from plumbing.errors import INTERRUPTED_EXIT, UserError, run_main

# Importing torch takes seconds, and run_main is not running yet: a Ctrl-C meanwhile must end the way run_main
# ends one -- one line and exit code 130, not a traceback.
try:
    from formats.checkpoint import load_weights, save_model, sidecar_path
    from interop.hf_llama import (PEFT_SUBFOLDER, check_chat_template, check_peft_adapter, earlier_export_files,
                                read_llama_folder, read_peft_folder, save_llama_folder, save_peft_folder)
    from formats.loader import add_shape_args, checkpoint_meta, load_checkpoint, load_tokenizer, path_for_sidecar, shape_from_args
    from model.model import MiniMindLM
    from model.lora_variants import adapter_file_contents, load_lora_or_dora, save_adapter
    from model.model_lora import merge_lora, remove_lora
    from plumbing.run_lock import make_out_dir
except KeyboardInterrupt:
    print(f"\n{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT)


def to_hf(args) -> None:
    """Our checkpoint (and adapter) -> a Hugging Face folder (and a PEFT folder in it, or merged)."""
    if args.merge and not args.lora_path:
        raise UserError("--merge merges an adapter into the exported weights: name it with --lora_path")
    _check_hf_dir(args.hf_dir, args.force)
    loaded = load_checkpoint(args.ckpt, tokenizer=args.tokenizer, shape=shape_from_args(args), adapter=args.lora_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    if model.config.use_moe:  # LlamaForCausalLM has one feed-forward per block, not routed experts
        raise UserError(f"{args.ckpt} is a mixture-of-experts model, which a Llama folder cannot hold; "
                        "only dense models go to Hugging Face here")
    adapter = adapter_file_contents(model) if args.lora_path else None  # a DoRA adapter's magnitudes included
    if adapter and not args.merge:
        check_peft_adapter(adapter)  # an adapter PEFT cannot hold is refused before anything is written

    # Everything is checked: from here on, files are written.
    _remove_earlier_export(args.hf_dir)
    make_out_dir(args.hf_dir)
    written = [f"{args.hf_dir}: LlamaForCausalLM, tokenizer"]
    if adapter and args.merge:
        merge_lora(model)  # W + scale·B·A, exact for the tied embedding too (one shared ΔE)
        written[0] += f", {args.lora_path} merged into the weights"
    elif adapter:
        adapter_dir = os.path.join(args.hf_dir, PEFT_SUBFOLDER)
        save_peft_folder(adapter_dir, adapter, model.config)
        written.append(f"{adapter_dir}: PEFT LoRA (r={adapter['lora_config']['rank']}, "
                       f"alpha={adapter['lora_config']['alpha']}, targets {', '.join(adapter['lora_config']['targets'])})")
    remove_lora(model)  # unmerged: exactly the base weights again; merged: the merged ones stay
    save_llama_folder(args.hf_dir, model, tokenizer)
    print("wrote " + "; ".join(written))


def _check_hf_dir(out_dir, force: bool) -> None:
    """to-hf's folder must be new, empty, or (--force) an earlier export: anything else would be mixed with the
    new files -- a stale shard or chat_template.jinja that transformers reads as part of the model."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--hf_dir {out_dir} is a file, not a folder; pass another --hf_dir (a folder is created if missing)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise UserError(f"--hf_dir {out_dir} is not empty; pass --force to replace the export in it "
                        "(other files are kept), or another --hf_dir")


def _remove_earlier_export(out_dir) -> None:
    """Delete what an earlier export left in out_dir (hf_llama.earlier_export_files), saying what; keep the rest."""
    stale = earlier_export_files(out_dir)
    for path in stale:
        os.remove(path)
    adapter_dir = os.path.join(out_dir, PEFT_SUBFOLDER)
    if stale and os.path.isdir(adapter_dir) and not os.listdir(adapter_dir):
        os.rmdir(adapter_dir)
    if stale:
        names = ", ".join(os.path.relpath(p, out_dir) for p in stale)
        print(f"removed {len(stale)} file(s) of an earlier export from {out_dir}: {names}", file=sys.stderr)


def from_hf(args) -> None:
    """A Hugging Face Llama folder (and a PEFT folder) -> our checkpoint + sidecar + tokenizer (and adapter file)."""
    if bool(args.peft_dir) != bool(args.lora_out):
        raise UserError("--peft_dir and --lora_out go together: the PEFT folder to read and the adapter file to write")
    has_tokenizer = os.path.isfile(os.path.join(args.hf_dir, "tokenizer.json"))
    if has_tokenizer and args.tokenizer:
        raise UserError(f"{args.hf_dir} has its own tokenizer.json; --tokenizer is only for a folder without one")
    # The folder's own tokenizer is copied beside the checkpoint, which records it; --tokenizer is only recorded.
    tokenizer_dir = os.path.splitext(args.out)[0] + "_tokenizer" if has_tokenizer else args.tokenizer
    _check_outputs(args, tokenizer_dir if has_tokenizer else None)

    config, state_dict = read_llama_folder(args.hf_dir)  # every shape checked against config.json
    _check_dim_in_name(args.out, config.dim, "--out")
    _check_dim_in_name(args.lora_out, config.dim, "--lora_out")
    if has_tokenizer:
        check_chat_template(args.hf_dir)
        tokenizer = load_tokenizer(args.hf_dir)
    elif args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        raise UserError(f"{args.hf_dir} has no tokenizer.json: pass --tokenizer DIR, the tokenizer the model was trained with")
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {config.vocab_size} embeddings "
                        "(padded?): MiniMindLM needs one embedding per token")
    model = MiniMindLM(config)
    load_weights(model, state_dict)
    if args.peft_dir:
        load_lora_or_dora(model, read_peft_folder(args.peft_dir, config))  # checks every shape against the model

    # Everything is checked: from here on, files are written.
    if args.peft_dir:
        save_adapter(model, args.lora_out)
        remove_lora(model)  # unmerged: exactly the imported weights again
        print(f"wrote {args.lora_out} (LoRA adapter for {args.out})")
    if has_tokenizer:
        tokenizer.save(tokenizer_dir)
    meta = {**checkpoint_meta("from_hf", tokenizer_dir, tokenizer), "source": path_for_sidecar(args.hf_dir)}
    save_model(model, args.out, meta=meta)
    print(f"wrote {args.out} (config and tokenizer {tokenizer_dir} in its sidecar)")


def _check_outputs(args, tokenizer_dir) -> None:
    """Refuse from-hf outputs that would overwrite each other (--out x.json is its own sidecar; --lora_out equal
    to --out), or an existing file or non-empty folder without --force. tokenizer_dir: None if none is written."""
    outputs = [("--out", args.out), ("the sidecar of --out", sidecar_path(args.out))]
    if tokenizer_dir:
        outputs += [("the tokenizer copied beside --out", os.path.join(tokenizer_dir, name))
                    for name in ("tokenizer.json", "tokenizer_config.json")]  # what Tokenizer.save writes
    if args.lora_out:
        outputs.append(("--lora_out", args.lora_out))
    seen = {}
    for what, path in outputs:
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"{seen[real]} and {what} would both be {path}: name --out a .pth or .safetensors file, "
                            "and --lora_out another one")
        seen[real] = what
        _check_output_file(what, path, args.force)
    if tokenizer_dir and os.path.isdir(tokenizer_dir) and os.listdir(tokenizer_dir) and not args.force:
        raise UserError(f"{tokenizer_dir}, where the tokenizer of --out goes, is not empty; pass --force to replace "
                        "its files, or another --out")


def _check_output_file(what: str, path, force: bool) -> None:
    """Refuse a file to write that exists (without --force), is a folder, or lies under a file."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; name a file")
    if os.path.exists(path) and not force:
        raise UserError(f"{what} {path} exists; pass --force to replace it, or another --out / --lora_out")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # missing folders are created when the file is written
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{what} {path} cannot be written: {folder} is a file, not a folder")


def _check_dim_in_name(path, dim: int, flag: str) -> None:
    """Scripts find files by their dim: out/full_sft_128.pth is what --dim 128 loads, out/lora/NAME_128.pth what
    --lora_name NAME does (formats/loader.py). A dim-64 model written as llama_128.pth would be found as a dim-128 one."""
    if path is None:
        return
    stem = os.path.splitext(os.path.basename(path))[0]
    named = re.search(r"_(\d+)(?:_moe)?$", stem)
    if named and int(named[1]) != dim:
        raise UserError(f"{flag} {path} names dim {named[1]}, but the model's dim is {dim}: scripts find files by "
                        f"NAME_DIM, so call it {stem[:named.start()]}_{dim}{os.path.splitext(path)[1]}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert models and LoRA adapters to and from Hugging Face "
                                            "(transformers LlamaForCausalLM, PEFT, safetensors).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf}")

    out = sub.add_parser("to-hf", help="our checkpoint (+ adapter) -> a Hugging Face Llama folder (+ PEFT folder)",
                         description="Write a checkpoint as a LlamaForCausalLM folder that transformers, PEFT and vLLM "
                                     "load without remote code.")
    out.add_argument("--ckpt", required=True, help="the checkpoint to export (.pth or .safetensors)")
    out.add_argument("--hf_dir", required=True,
                     help="the Hugging Face folder to write (created if needed); from-hf reads one of the same name")
    out.add_argument("--lora_path", default=None,
                     help="an adapter file to export too: as a PEFT folder OUT_DIR/adapter/, or merged with --merge")
    out.add_argument("--merge", action="store_true",
                     help="merge --lora_path into the weights and write one plain model instead of a PEFT folder")
    out.add_argument("--force", action="store_true",
                     help="write into a non-empty --hf_dir, first removing the files of an earlier export there "
                          "(shards, chat_template.jinja, adapter/, ...; other files are kept)")
    add_shape_args(out)  # a MiniMind2 .pth without a sidecar: its shape and tokenizer
    out.set_defaults(run=to_hf)

    into = sub.add_parser("from-hf", help="a Hugging Face Llama folder (+ PEFT folder) -> our checkpoint (+ adapter)",
                          description="Read a LlamaForCausalLM folder that MiniMindLM can express into a checkpoint "
                                      "with its sidecar; anything it cannot express is refused by name.")
    into.add_argument("--hf_dir", required=True, help="the Hugging Face model folder (config.json, model.safetensors)")
    into.add_argument("--out", required=True,
                      help="the checkpoint to write (.pth, or .safetensors); its tokenizer goes to OUT_STEM_tokenizer/")
    into.add_argument("--peft_dir", default=None, help="a PEFT LoRA folder (adapter_config.json) trained on that model")
    into.add_argument("--lora_out", default=None,
                      help="the adapter file to write from --peft_dir; OUT_DIR/lora/NAME_DIM.pth is what "
                           "eval_model.py --lora_name NAME finds")
    into.add_argument("--tokenizer", default=None,
                      help="the tokenizer the model was trained with, for an --hf_dir without tokenizer.json")
    into.add_argument("--force", action="store_true",
                      help="replace --out, its sidecar, its tokenizer folder and --lora_out if they exist")
    into.set_defaults(run=from_hf)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
