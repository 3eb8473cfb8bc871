"""The training scripts' flags: MiniMind2's names, each stage's defaults (which ARE the demo), checked.

Each script passes the defaults of its stage, and those defaults are the demo: `python
train_pretrain.py` with no flags trains exactly what `python run_demo.py` trains. Where a default
differs from MiniMind2's, the flag's help says MiniMind2's and why (add_common_args' minimind2=).

    flags.add_common_args(parser, data_path=..., epochs=4, ..., minimind2={...})
    flags.add_model_args(parser, from_checkpoint=True)   # --dim ... --tokenizer
    flags.check_args(args)                                          # before anything loads
"""
import json
import math
import os

from plumbing.device import DEVICE_HELP, DTYPES, TRAINING_DTYPE_HELP
from plumbing.errors import UserError
from model.LMConfig import LMConfig
from formats.loader import DEFAULT_DIM, add_shape_args, check_adapter_name, check_positions, repo_path
from formats.quantize import KINDS as QUANTIZATIONS
from plumbing.resume import lora_settings


# Why a default of the stages differs from MiniMind2's, for the flags' help (add_common_args' minimind2=).
SMALL_DATA = "the demo's small file needs several passes"
CPU_BATCH = "the demo's is sized for a CPU"
SMALL_MODEL = "the demo's 1M-parameter model learns fastest there (docs/experiments.md)"


# Each stage's defaults: the demo's configuration, in one table (train_pretrain.py, train_full_sft.py,
# train_lora.py and train_dpo.py read their row; the LoRA lab's trainer reads train_lora.py's), each with
# MiniMind2's default and why ours differs, which the flags' help states beside ours.
STAGES = {
    "pretrain": dict(data_path="dataset/pretrain_demo.jsonl", epochs=4, batch_size=16, learning_rate=2e-3, warmup_iters=20,
                     max_seq_len=224, save_interval=100,
                     minimind2=dict(epochs=(1, f"over its 1.6 GB pretrain_hq.jsonl; {SMALL_DATA}"), batch_size=(32, CPU_BATCH),
                                    learning_rate=(5e-4, SMALL_MODEL), accumulation_steps=(8, CPU_BATCH))),
    "full_sft": dict(data_path="dataset/sft_demo.jsonl", epochs=4, batch_size=16, learning_rate=2e-3, warmup_iters=20,
                     max_seq_len=160, save_interval=100,
                     minimind2=dict(epochs=(1, f"over its sft_mini_512.jsonl (1.2 GB); {SMALL_DATA}"), batch_size=(32, CPU_BATCH),
                                    learning_rate=(5e-5, SMALL_MODEL), accumulation_steps=(1, ""))),
    "lora": dict(data_path="dataset/lora_medical.jsonl", epochs=4, batch_size=16, learning_rate=2e-3, warmup_iters=10,
                 max_seq_len=224, save_interval=100,
                 minimind2=dict(epochs=(50, "over its small lora_identity.jsonl; the demo's files are larger, and 4 passes "
                                            "reach its targets (docs/experiments.md)"),
                                batch_size=(16, ""), learning_rate=(5e-5, SMALL_MODEL), accumulation_steps=(1, ""))),
    "dpo": dict(data_path="dataset/dpo_demo.jsonl", epochs=2, batch_size=16, learning_rate=2e-4, warmup_iters=10,
                max_seq_len=160, save_interval=100,
                minimind2=dict(epochs=(2, ""), batch_size=(8, CPU_BATCH),
                               learning_rate=(1e-8, "at 1e-8 the demo's model does not move in a run (docs/dpo.md)"),
                               accumulation_steps=(1, ""))),
}
LORA_RANK = 16  # MiniMind2's
LORA_TARGETS = "wq,wk,wv,wo,w1,w2,w3,output"  # every Linear and the tied embedding: what the demo's tasks need
LORA_PLUS_RATIO = 16.0  # LoRA+'s suggestion: B learns 16x faster than A (docs/lora_lab.md measures it)


def add_common_args(parser, stage: str):
    """The flags every stage shares, with `stage`'s defaults (STAGES)."""
    defaults = STAGES[stage]
    data_path, epochs, batch_size = defaults["data_path"], defaults["epochs"], defaults["batch_size"]
    learning_rate, warmup_iters, max_seq_len = defaults["learning_rate"], defaults["warmup_iters"], defaults["max_seq_len"]
    save_interval, minimind2 = defaults["save_interval"], defaults["minimind2"]

    def versus(flag, ours):
        theirs, why = minimind2[flag]
        return "as MiniMind2" if theirs == ours else f"MiniMind2: {theirs:g}; {why}"

    p = parser
    p.add_argument("--out_dir", default="out", help="directory for checkpoints, metrics and loss curves (default: %(default)s)")
    p.add_argument("--data_path", default=repo_path(data_path),
                   help=f"training data, jsonl (default: the repository's {data_path})")
    p.add_argument("--epochs", type=int, default=epochs,
                   help=f"passes over the data (default: %(default)s, {versus('epochs', epochs)})")
    p.add_argument("--batch_size", type=int, default=batch_size,
                   help=f"sequences per micro-batch (for DPO: pairs of them), per process (default: %(default)s, {versus('batch_size', batch_size)})")
    p.add_argument("--learning_rate", type=float, default=learning_rate,
                   help=f"peak learning rate, reached after warmup (default: %(default)s, {versus('learning_rate', learning_rate)})")
    p.add_argument("--warmup_iters", type=int, default=warmup_iters,
                   help="optimizer steps of linear warmup from ~0 to --learning_rate before the cosine decay (default: %(default)s)")
    p.add_argument("--accumulation_steps", type=int, default=1,
                   help="micro-batches whose gradients are summed into one optimizer step; effective batch = "
                        f"batch_size x accumulation_steps x processes (default: %(default)s, {versus('accumulation_steps', 1)})")
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this; inf disables clipping (default: %(default)s)")
    # The training window, not LMConfig.max_seq_len (the RoPE table size, 8192 as in MiniMind2, which
    # only bounds how long a sequence the model can ever read): MiniMind2 gives both the same name.
    p.add_argument("--max_seq_len", type=int, default=max_seq_len,
                   help="tokens per training sequence; longer samples are cut (default: %(default)s, which keeps all but "
                        "the longest few of the demo's samples whole; MiniMind2 uses 512)")
    p.add_argument("--val_samples", type=int, default=64,
                   help="samples of --data_path held out for the validation loss (the same ones in every run on "
                        "that file); 0 = none (default: %(default)s)")
    p.add_argument("--val_data", default=None,
                   help="a held-out jsonl in the training format to take the validation loss on, instead of --val_samples")
    p.add_argument("--val_also", default=None,
                   help="a second held-out jsonl in the training format whose loss is logged too (val_also_loss), "
                        "e.g. general conversations while a task is learned: forgetting, watched as it happens")
    p.add_argument("--eval_interval", type=int, default=50,
                   help="optimizer steps between validation losses; one is also taken before the first step and "
                        "after the last (default: %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=TRAINING_DTYPE_HELP)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (faster steps after a slow first one)")
    p.add_argument("--log_interval", type=int, default=10, help="optimizer steps between log lines (default: %(default)s)")
    p.add_argument("--save_interval", type=int, default=save_interval,
                   help="optimizer steps between checkpoints; one is also written at the end (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint (same flags; the run's *_resume.pth in --out_dir)")
    p.add_argument("--seed", type=int, default=1337, help="seed for initialisation, data order and dropout (default: %(default)s)")
    p.add_argument("--num_workers", type=int, default=0,
                   help="DataLoader worker processes; 0 loads in the training process, enough for pre-tokenized data (default: %(default)s)")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip (and count) malformed jsonl records instead of stopping at the first")
    p.add_argument("--cache_dir", default=None, help="where the tokenized-data cache goes (default: a .cache folder beside the data file)")


def add_model_args(parser, *, from_checkpoint):
    """--dim/--n_layers/--n_heads/--n_kv_heads and --tokenizer.

    from_checkpoint=False (pretraining): they define the new model; the defaults are the demo's model.
    from_checkpoint=True (SFT, LoRA): the base checkpoint's .json sidecar defines the model and its
    tokenizer; the flags are needed only for a plain MiniMind2 .pth without one (and must agree with a
    sidecar when given), and --dim names the default base file.
    """
    p = parser
    if not from_checkpoint:
        # The demo's model, 1.1M parameters: small enough to pretrain in minutes on 2 CPU cores.
        p.add_argument("--dim", type=int, default=DEFAULT_DIM,
                       help="model width (default: %(default)s; MiniMind2-Small 512, MiniMind2 768)")
        p.add_argument("--n_layers", type=int, default=4, help="transformer blocks (default: %(default)s; MiniMind2-Small 8, MiniMind2 16)")
        p.add_argument("--n_heads", type=int, default=4,
                       help="attention query heads (default: %(default)s, heads of 32 dimensions at dim 128; MiniMind2: 8, "
                            "which at dim 128 would leave heads of 16)")
        p.add_argument("--n_kv_heads", type=int, default=4,
                       help="key/value heads; fewer than --n_heads is grouped-query attention (default: %(default)s; "
                            "MiniMind2: 2, a KV cache 4x smaller, which a 1M-parameter model cannot afford)")
        p.add_argument("--use_moe", action="store_true",
                       help="a mixture-of-experts model: every feed-forward becomes MiniMind2-MoE's routed experts + a "
                            "shared expert, with the load-balancing loss added to the training loss (docs/moe.md)")
        p.add_argument("--tokenizer", default=repo_path("model/demo_tokenizer"),
                       help="tokenizer directory or tokenizer.json (default: the repository's model/demo_tokenizer)")
        return
    add_shape_args(p)


def check_args(args):
    """Reject values that would fail later and obscurely (or silently train nothing), before anything loads.
    (--max_seq_len against the model's positions is checked as soon as the model's config is known:
    model_config, or load_checkpoint's max_seq_len.)"""
    positive = ["epochs", "batch_size", "accumulation_steps", "log_interval", "save_interval", "eval_interval"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_len < 2:
        raise UserError("--max_seq_len must be at least 2 (inputs are tokens[:-1], targets tokens[1:])")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UserError(f"--learning_rate must be a positive number, got {args.learning_rate}")
    if args.warmup_iters < 0:
        raise UserError(f"--warmup_iters must be 0 or more, got {args.warmup_iters}")
    if not args.grad_clip > 0:
        raise UserError(f"--grad_clip must be positive (inf disables clipping), got {args.grad_clip}")
    if args.val_samples < 0:
        raise UserError(f"--val_samples must be 0 or more, got {args.val_samples}")
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, got {args.num_workers}")
    for flag, path in (("--data_path", args.data_path), ("--val_data", args.val_data), ("--val_also", args.val_also)):
        if path is not None and os.path.isdir(path):
            raise UserError(f"{flag} {path} is a directory; pass a jsonl file")
        if path is not None and not os.path.isfile(path):
            raise UserError(f"{flag} {path} not found (check the path)")
    if args.cache_dir is not None and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        raise UserError(f"--cache_dir {args.cache_dir} is a file, not a folder")


def model_config(shape: dict, vocab_size: int, max_seq_len=None) -> LMConfig:
    """LMConfig from the shape flags (None values take MiniMind2's defaults) and the tokenizer's size;
    a training window (--max_seq_len) longer than its positions is refused."""
    try:
        config = LMConfig(**{k: v for k, v in shape.items() if v is not None}, vocab_size=vocab_size)
    except ValueError as e:
        raise UserError(f"{e} (check --dim/--n_heads/--n_kv_heads)") from None
    check_positions(max_seq_len, config, "the model")
    return config




# ------------------------------------------------------------------------------------------------
# train_lora.py's own flags (and the LoRA lab's trainer's), checked before anything loads (apply_lora
# would refuse a bad rank only once the base is loaded) and, with --init_lora, against the adapter file.

# The Linear layers of MiniMindLM, by name ('output' is the one tied to tok_embeddings; 'gate' is a
# mixture of experts' router, docs/moe.md): what --lora_targets takes.
LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output", "gate")


def add_lora_args(parser) -> None:
    """--base, --lora_name, --lora_rank, --lora_alpha, --lora_dropout, --lora_targets, --lora_plus_ratio, --init_lora,
    --method, --rank_pattern, --quantize_base."""
    p = parser
    p.add_argument("--base", default=None,
                   help="checkpoint to adapt (default: the full_sft_DIM.pth in OUT_DIR, the only one or --dim's)")
    p.add_argument("--lora_name", default="lora_medical",
                   help="adapter name; saved as OUT_DIR/lora/{lora_name}_{dim}.pth (default: %(default)s)")
    p.add_argument("--lora_rank", type=int, default=None,
                   help=f"rank r of the update B A (default: {LORA_RANK}, as MiniMind2; with --init_lora, the file's)")
    p.add_argument("--lora_alpha", type=float, default=None,
                   help="the update is scaled by alpha / rank (default: alpha = rank, scale 1, as MiniMind2)")
    p.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapter's input (default: %(default)s)")
    p.add_argument("--lora_targets", default=None,
                   help=f"comma-separated Linear names to adapt, 'output' with its tied embedding (default: {LORA_TARGETS}, "
                        "what the demo's tasks need; MiniMind2 adapts the square ones only, wq,wo; with --init_lora, the file's)")
    p.add_argument("--lora_plus_ratio", type=float, default=LORA_PLUS_RATIO,
                   help="LoRA+: B's learning rate is this times A's (default: %(default)s, LoRA+'s suggestion; "
                        "1 = plain LoRA, as MiniMind2)")
    p.add_argument("--init_lora", default=None,
                   help="train this adapter file further (e.g. one imported by convert_model.py from-hf); it gives the "
                        "rank, alpha and targets, so --lora_rank, --lora_alpha and --lora_targets are left out or match it")
    p.add_argument("--method", choices=("lora", "dora"), default="lora",
                   help="lora, or dora: W as a trained magnitude times a direction, LoRA on the direction (Liu et al. "
                        "2024; model/lora_variants.py; its file adds a magnitude vector a layer) (default: %(default)s)")
    p.add_argument("--rank_pattern", default=None,
                   help="a JSON file {layer name: rank} for layers of another rank than --lora_rank, e.g. "
                        '{"layers.0.feed_forward.w1": 32}: a budget of rank spread by importance (docs/lora.md)')
    p.add_argument("--quantize_base", choices=QUANTIZATIONS, default=None,
                   help="QLoRA: keep the frozen base's block Linears quantized (int8: 8-bit rows; nf4: QLoRA's 4-bit "
                        "NormalFloat; int4 and fp4 to compare) and train the adapter on it; the adapter file is the "
                        "ordinary one and loads on the full-precision base (default: the base as loaded)")


def check_lora_args(args) -> None:
    """--lora_name, --lora_rank, --lora_alpha, --lora_dropout, --lora_targets, --lora_plus_ratio, --init_lora."""
    check_adapter_name(args.lora_name)
    if args.lora_rank is not None and args.lora_rank < 1:
        raise UserError(f"--lora_rank must be at least 1, got {args.lora_rank}")
    if args.lora_alpha is not None and not (math.isfinite(args.lora_alpha) and args.lora_alpha > 0):
        raise UserError(f"--lora_alpha must be a positive number, got {args.lora_alpha}")
    if not 0 <= args.lora_dropout < 1:
        raise UserError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    unknown = [t for t in (args.lora_targets or LORA_TARGETS).split(",") if t not in LINEAR_NAMES]
    if unknown:
        raise UserError(f"--lora_targets: {', '.join(map(repr, unknown))} is not a Linear of the model; "
                        f"choose from {','.join(LINEAR_NAMES)}")
    if not (math.isfinite(args.lora_plus_ratio) and args.lora_plus_ratio > 0):
        raise UserError(f"--lora_plus_ratio must be a positive number (1 = plain LoRA), got {args.lora_plus_ratio}")
    if args.method == "dora" and args.quantize_base:
        raise UserError("--method dora rescales W's rows, which a quantized base cannot hold: drop --quantize_base, or "
                        "train plain LoRA on it")
    if args.rank_pattern is not None:
        args.rank_pattern = read_rank_pattern(args.rank_pattern)
    if args.init_lora is not None and not os.path.isfile(args.init_lora):
        raise UserError(f"--init_lora {args.init_lora} not found (an adapter file, .pth or .safetensors)")


def read_rank_pattern(path) -> dict:
    """--rank_pattern's file: a JSON object {layer name: rank}, each rank a positive integer."""
    try:
        with open(path, encoding="utf-8") as f:
            pattern = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--rank_pattern {path}: cannot read it as JSON ({e})") from None
    if not (isinstance(pattern, dict) and all(isinstance(r, int) and not isinstance(r, bool) and r > 0
                                              for r in pattern.values())):
        raise UserError(f"--rank_pattern {path} must hold a JSON object {{layer name: positive integer rank}}, "
                        'e.g. {"layers.0.feed_forward.w1": 32}')
    return pattern


def check_init_lora_agrees(model, args, weights) -> None:
    """With --init_lora the file defines the adapter; a --lora_rank/--lora_alpha/--lora_targets given as
    well must say the same, or the user asked for another adapter than the one trained. And it must not
    be the file this run writes (`weights`): its first save would overwrite where it started, and
    --resume could no longer check it."""
    if os.path.exists(weights) and os.path.samefile(args.init_lora, weights):
        raise UserError(f"--init_lora {args.init_lora} is the file this run saves to: give the run another --lora_name")
    settings = lora_settings(model)  # {"rank", "alpha", "targets", ...} of the loaded adapter
    if (settings["init"] == "dora") != (args.method == "dora"):
        raise UserError(f"--init_lora {args.init_lora} is a {'DoRA' if settings['init'] == 'dora' else 'LoRA'} adapter: "
                        f"train it further with --method {'dora' if settings['init'] == 'dora' else 'lora'}")
    given = {"rank": args.lora_rank, "alpha": args.lora_alpha, "rank_pattern": args.rank_pattern,
             "targets": sorted(args.lora_targets.split(",")) if args.lora_targets else None}
    for key, value in given.items():
        if value is not None and value != settings.get(key, {}):
            raise UserError(f"--lora_{key} {value} disagrees with {args.init_lora} ({key} {settings[key]}); "
                            "drop the flag: the adapter file gives it")
