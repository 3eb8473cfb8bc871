"""Convert models and adapters to and from Hugging Face: transformers, PEFT, vLLM and the tools that read them.

    # a checkpoint of ours -> a LlamaForCausalLM folder (config.json, model.safetensors, tokenizer files)
    python convert_model.py to-hf --ckpt out/full_sft_128.pth --out_dir hf/minimind
    # ... with an adapter beside it as a PEFT folder (hf/minimind/adapter/), or merged into the weights
    python convert_model.py to-hf --ckpt out/full_sft_128.pth --out_dir hf/minimind --lora_path out/lora/my_adapter_128.pth
    python convert_model.py to-hf --ckpt out/full_sft_128.pth --out_dir hf/medical \
        --lora_path out/lora/lora_medical_128.pth --merge

    # a Llama folder MiniMindLM can express -> a checkpoint + sidecar, its tokenizer in out/llama_tokenizer/
    python convert_model.py from-hf --hf_dir hf/minimind --out out/llama.pth
    # ... and a PEFT LoRA folder -> an adapter file for load_lora, eval_model.py --lora_name and train_lora.py
    python convert_model.py from-hf --hf_dir hf/minimind --out out/llama.pth \
        --peft_dir hf/minimind/adapter --lora_out out/lora/imported_128.pth

The mapping itself (names, the RoPE row permutation, what is refused) is model/hf_llama.py; the model
is loaded, as by every script, through model.loader.load_checkpoint. docs/interop.md has the
commands for transformers, PEFT and vLLM, and what is refused. (The demo's adapters also adapt the tied
embedding, which PEFT cannot hold: they go out with --merge.)
"""
import argparse
import os
import sys

from model.checkpoint import load_weights, save_model
from model.errors import UserError, run_main
from model.hf_llama import (check_chat_template, read_llama_folder, read_peft_folder, save_llama_folder,
                            save_peft_folder)
from model.loader import add_shape_args, checkpoint_meta, load_checkpoint, load_tokenizer, path_for_sidecar, shape_from_args
from model.model import MiniMindLM
from model.model_lora import adapter_state, load_lora, merge_lora, remove_lora, save_lora


def to_hf(args) -> None:
    """Our checkpoint (and adapter) -> a Hugging Face folder (and a PEFT folder in it, or merged)."""
    if args.merge and not args.lora_path:
        raise UserError("--merge merges an adapter into the exported weights: name it with --lora_path")
    loaded = load_checkpoint(args.ckpt, tokenizer=args.tokenizer, shape=shape_from_args(args), adapter=args.lora_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    if model.config.use_moe:  # LlamaForCausalLM has one feed-forward per block, not routed experts
        raise UserError(f"{args.ckpt} is a mixture-of-experts model, which a Llama folder cannot hold; "
                        "only dense models go to Hugging Face here")
    written = [f"{args.out_dir}: LlamaForCausalLM, tokenizer"]
    if args.lora_path:
        adapter = adapter_state(model)
        if args.merge:
            merge_lora(model)  # W + scale·B·A, exact for the tied embedding too (one shared ΔE)
            written[0] += f", {args.lora_path} merged into the weights"
        else:
            # First, so that an adapter PEFT cannot hold is refused before anything is written.
            adapter_dir = os.path.join(args.out_dir, "adapter")
            save_peft_folder(adapter_dir, adapter, model.config)
            written.append(f"{adapter_dir}: PEFT LoRA (r={adapter['lora_config']['rank']}, "
                           f"alpha={adapter['lora_config']['alpha']}, targets {', '.join(adapter['lora_config']['targets'])})")
        remove_lora(model)  # unmerged: exactly the base weights again; merged: the merged ones stay
    save_llama_folder(args.out_dir, model, tokenizer)
    print("wrote " + "; ".join(written))


def from_hf(args) -> None:
    """A Hugging Face Llama folder (and a PEFT folder) -> our checkpoint + sidecar + tokenizer (and adapter file)."""
    if bool(args.peft_dir) != bool(args.lora_out):
        raise UserError("--peft_dir and --lora_out go together: the PEFT folder to read and the adapter file to write")
    config, state_dict = read_llama_folder(args.hf_dir)
    has_tokenizer = os.path.isfile(os.path.join(args.hf_dir, "tokenizer.json"))
    if has_tokenizer and args.tokenizer:
        raise UserError(f"{args.hf_dir} has its own tokenizer.json; --tokenizer is only for a folder without one")
    if has_tokenizer:
        check_chat_template(args.hf_dir)
        tokenizer = load_tokenizer(args.hf_dir)
        tokenizer_dir = os.path.splitext(args.out)[0] + "_tokenizer"  # beside the checkpoint, which records it
    elif args.tokenizer:
        tokenizer, tokenizer_dir = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        raise UserError(f"{args.hf_dir} has no tokenizer.json: pass --tokenizer DIR, the tokenizer the model was trained with")
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {config.vocab_size} embeddings "
                        "(padded?): MiniMindLM needs one embedding per token")

    model = MiniMindLM(config)
    load_weights(model, state_dict)
    if has_tokenizer:
        tokenizer.save(tokenizer_dir)
    meta = {**checkpoint_meta("from_hf", tokenizer_dir, tokenizer), "source": path_for_sidecar(args.hf_dir)}
    save_model(model, args.out, meta=meta)
    print(f"wrote {args.out} (config and tokenizer {tokenizer_dir} in its sidecar)")
    if args.peft_dir:
        load_lora(model, read_peft_folder(args.peft_dir, config))  # checks every shape against the model
        save_lora(model, args.lora_out)
        print(f"wrote {args.lora_out} (LoRA adapter for {args.out})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert models and LoRA adapters to and from Hugging Face "
                                            "(transformers LlamaForCausalLM, PEFT, safetensors).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf}")

    out = sub.add_parser("to-hf", help="our checkpoint (+ adapter) -> a Hugging Face Llama folder (+ PEFT folder)",
                         description="Write a checkpoint as a LlamaForCausalLM folder that transformers, PEFT and vLLM "
                                     "load without remote code.")
    out.add_argument("--ckpt", required=True, help="the checkpoint to export (.pth or .safetensors)")
    out.add_argument("--out_dir", required=True, help="the Hugging Face folder to write (created if needed)")
    out.add_argument("--lora_path", default=None,
                     help="an adapter file to export too: as a PEFT folder OUT_DIR/adapter/, or merged with --merge")
    out.add_argument("--merge", action="store_true",
                     help="merge --lora_path into the weights and write one plain model instead of a PEFT folder")
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
    into.set_defaults(run=from_hf)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
