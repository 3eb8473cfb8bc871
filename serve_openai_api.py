"""An OpenAI-compatible server for one MiniMind model and any number of its LoRA adapters.

    python serve_openai_api.py --lora_name lora_medical lora_identity     # http://127.0.0.1:8998/v1

    curl http://127.0.0.1:8998/v1/models
    curl http://127.0.0.1:8998/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "lora_medical", "messages": [{"role": "user", "content": "..."}], "temperature": 0}'

The base model is served as "minimind" and each adapter under its own name; a request picks one
with "model". Requests for any of them share the running batch (serving/engine.py), each row wearing
its own adapter (serving/multi_lora.py). The official `openai` client works against it unchanged,
streaming or not (docs/serving.md). This script is the command line: flags, then the base and the
adapters loaded through formats.loader, the engine and the server started (serving/http_server.py;
what a request may say, serving/openai_api.py), until Ctrl-C.
"""
import argparse
import os
import sys

from formats.loader import (MODEL_MODES, adapter_path, add_inference_args, check_adapter_name, find_checkpoint,
                            load_checkpoint, missing_adapter_message, shape_from_args)
from plumbing.device import pick_device, pick_dtype
from plumbing.errors import UserError, run_main
from serving.http_server import ChatServer, listen
from serving.multi_lora import read_adapter
from serving.openai_api import BASE_NAME


def open_server(args) -> ChatServer:
    """Listen on --host/--port, load the base and the adapters, start the engine -> the server.

    Listening comes first, so a port that is taken fails before the model is loaded."""
    names = check_args(args)
    device = pick_device(args.device)
    dtype, _ = pick_dtype(device, args.dtype)
    server = listen(args.host, args.port)
    try:
        ckpt = args.ckpt or find_checkpoint(args.out_dir, MODEL_MODES[args.model_mode], args.dim, args.use_moe)
        loaded = load_checkpoint(ckpt, tokenizer=args.tokenizer, shape=shape_from_args(args), max_seq_len=args.max_seq_len,
                                 device=device, dtype=dtype)
        model, tok = loaded.model, loaded.tokenizer
        adapters = {}
        for name in names:
            path = adapter_path(args.out_dir, name, model.config.dim, model.config.use_moe)
            if not os.path.isfile(path):
                raise UserError(missing_adapter_message(args.out_dir, name, model.config.dim, model.config.use_moe))
            adapters[name] = read_adapter(model, path, args.allow_other_base)  # through model_lora.load_lora: it checks the fit
        context = args.max_seq_len or model.config.max_seq_len  # load_checkpoint refused a longer one
        server.start_engine(model, tok, adapters, context, lora_mode=args.lora_mode, max_batch_size=args.max_batch_size,
                            max_waiting=args.max_waiting, max_body_bytes=args.max_body_bytes,
                            log_requests=args.log_requests)
    except BaseException:
        server.server_close()
        raise
    return server


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser():
    """eval_model.py's flags for the base checkpoint and its adapters (add_inference_args), plus the server's own."""
    p = argparse.ArgumentParser(description="Serve a MiniMind model and its LoRA adapters over OpenAI's chat API.")
    add_inference_args(p, lora_help=f"adapters OUT_DIR/lora/NAME_DIM.pth to serve, each under its NAME beside the base "
                                    f"('{BASE_NAME}')")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens it to the network, with no authentication (default: %(default)s)")
    p.add_argument("--port", type=int, default=8998, help="port to listen on; 0 picks a free one (default: %(default)s, MiniMind2's)")
    p.add_argument("--lora_mode", choices=["batched", "merged"], default="batched",
                   help="batched: each row of a batch wears its own adapter, any mix shares a batch; merged: one "
                        "adapter at a time is merged into the weights (S-LoRA's baseline, for bench_serve.py) "
                        "(default: %(default)s)")
    p.add_argument("--max_batch_size", type=int, default=32,
                   help="requests decoded together; more wait in a queue (1 = one at a time) (default: %(default)s)")
    p.add_argument("--max_waiting", type=int, default=256,
                   help="requests that may wait for a row; beyond them the answer is 503, try again (default: %(default)s)")
    p.add_argument("--max_seq_len", type=int, default=None,
                   help="context a request may use, prompt + answer, in tokens (default: the model's max_seq_len)")
    p.add_argument("--max_body_bytes", type=int, default=1_000_000,
                   help="largest request body accepted; larger ones get 413 (default: %(default)s)")
    p.add_argument("--log_requests", action=argparse.BooleanOptionalAction, default=True,
                   help="print one line per HTTP request on stderr")
    return p


def check_args(args) -> list:
    """Refuse flags that cannot work, before anything is loaded -> the adapter names."""
    names = list(args.lora_name or [])
    for name in names:
        check_adapter_name(name)
    if BASE_NAME in names:
        raise UserError(f"--lora_name {BASE_NAME}: that name is the base model's; rename the adapter")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--lora_name names {', '.join(duplicates)} more than once")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    for flag in ("max_batch_size", "max_waiting", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise UserError(f"--max_seq_len must be at least 2 (a prompt token and an answer token), got {args.max_seq_len}")
    return names


def main(argv=None):
    """Serve until Ctrl-C; then tell the open requests the server is stopping, and close."""
    args = build_parser().parse_args(argv)
    server = open_server(args)
    host, port = server.server_address[:2]
    names = server.service.names
    weights = str(server.service.engine.model.output.weight.dtype).removeprefix("torch.")
    print(f"serving {', '.join(names)} at http://{host}:{port}/v1 ({weights} weights, {args.lora_mode} adapters, "
          f"up to {args.max_batch_size} requests per batch); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(run_main(main))
