"""A LoRA adapter file, read and checked: what model_lora.load_lora is given before it touches a model.

An adapter file is a plain dict of tensors with MiniMind2's keys, plus (in this project's files) one
entry "lora_config" saying how to rebuild the adapters:

    {"layers.0.attention.wq.lora.A.weight": (rank, in), "layers.0.attention.wq.lora.B.weight": (out, rank), ...,
     "lora_config": {"rank": 16, "alpha": 16, "targets": ["wo", "wq"], "dim": 512, "scaling": "standard",
                     "init": "standard", "base": "sha256:3f2a9c0d1b7e4a55"}}

Files come from anywhere (MiniMind2, PEFT through convert_model.py, a colleague), so everything is
checked here and anything wrong is one CheckpointError naming the file and the problem: a file that
is not an adapter, a malformed lora_config, NaN or infinite values, tensors that do not fit the model.
"""
import math
import os

import torch

from formats.checkpoint import CheckpointError, base_fingerprint, check_finite, clean_state_dict, read_checkpoint


def few(items: list, n: int = 3) -> str:
    """'a, b, c and 5 more': keeps an error message to one readable line."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def adapter_contents(layers: list, tensors: dict, model) -> dict:
    """The dict an adapter file holds for `layers` ([(name, LoRALinear)] of `model`, whose A and B are
    `tensors`): the tensors on the CPU, and the lora_config above. "init" records how training started;
    "base" is the fingerprint apply_lora took of the weights the adapter was made on."""
    first = layers[0][1]
    _, _, _, alpha = first.saved_factors()  # a PiSSA adapter is saved as the rank-2r one it amounts to
    rank, pattern = rank_and_pattern({name: layer.saved_factors()[2] for name, layer in layers})
    return {**{key: t.cpu() for key, t in tensors.items()},
            "lora_config": {"rank": rank, "alpha": alpha, "targets": sorted({name.rsplit(".", 1)[-1] for name, _ in layers}),
                            "dim": getattr(getattr(model, "config", None), "dim", None), "scaling": first.scaling,
                            "init": first.init, "base": getattr(model, "lora_base", None),
                            **({"rank_pattern": pattern} if pattern else {})}}


def rank_and_pattern(ranks: dict) -> tuple[int, dict]:
    """{layer: rank} -> (the commonest rank, the smallest of a tie; {layer: rank} of the layers of another):
    what a file records as "rank" and "rank_pattern" (PEFT's r and rank_pattern)."""
    values = list(ranks.values())
    rank = max(sorted(set(values)), key=values.count)
    return rank, {name: r for name, r in ranks.items() if r != rank}


def read_lora_file(path) -> tuple[dict, dict]:
    """An adapter file (or such a dict in memory) -> (its tensors, its settings), checked:

        settings = {"rank": 16, "alpha": 16.0, "targets": ["wo", "wq"], "dim": 512,
                    "scaling": "standard", "base": "sha256:3f2a9c0d1b7e4a55" or None,
                    "rank_pattern": {"layers.0.attention.wq": 4, ...}}   # layers of another rank ({}: none)

    A file of this project carries them in its "lora_config". A MiniMind2 file carries none: its rank
    is read from the tensors' shapes (A is (rank, in)), its targets from the key names, alpha = rank
    (MiniMind2 does not scale), and no base is recorded.
    """
    where = "the adapter" if isinstance(path, dict) else str(path)
    if isinstance(path, dict):
        state = dict(path)
    else:
        if not os.path.exists(path):
            raise CheckpointError(f"LoRA adapter {path} not found")
        state = read_checkpoint(path)  # a file that is not a torch.save'd dict: CheckpointError
    if "method_config" in state:
        raise CheckpointError(f"{where} is an {state['method_config'].get('method', '?')} file (one of LoRA's "
                              "predecessors), not a LoRA adapter: load it with model.lora_variants.load_adapter")
    meta = state.pop("lora_config", None)
    if isinstance(meta, dict) and meta.get("init") == "dora":
        raise CheckpointError(f"{where} is a DoRA adapter (a magnitude vector a layer beside A and B): load it with "
                              "model.lora_variants.load_lora_or_dora, as eval_model.py does; the server cannot batch it with "
                              "other adapters, nor merge_lora.py merge it (merge it into the model: convert_model.py --merge)")
    state = clean_state_dict(state)  # strips module./_orig_mod., e.g. from MiniMind2 saving a DDP model
    not_lora = sorted(key for key in state if ".lora." not in key or not isinstance(state[key], torch.Tensor))
    if not_lora or not state:
        raise CheckpointError(f"{where} is not a LoRA adapter: it holds {few(not_lora) or 'no tensors'} "
                              "(adapter keys look like layers.0.attention.wq.lora.A.weight; a full model loads with load_model)")
    check_finite(state, where)
    if meta is None:  # a MiniMind2 file: rank from A (rank, in) / B (out, rank), targets from the key names
        ranks = {t.shape[0] if key.endswith("A.weight") else t.shape[-1] for key, t in state.items()}
        if len(ranks) != 1:
            raise CheckpointError(f"{where}: its tensors disagree on the LoRA rank (found ranks {sorted(ranks)})")
        rank = ranks.pop()
        targets = sorted({key.split(".lora.")[0].rsplit(".", 1)[-1] for key in state})
        return state, {"rank": rank, "alpha": float(rank), "targets": targets, "dim": None, "scaling": "standard", "base": None,
                       "rank_pattern": {}}
    return state, checked_lora_config(meta, where)


def checked_lora_config(meta, where: str) -> dict:
    """A file's lora_config, each field checked (a file can come from anywhere): the settings of read_lora_file."""
    def number(x):  # a real number: not a bool, not a string, finite
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def whole(x):  # a positive integer, not a bool
        return isinstance(x, int) and not isinstance(x, bool) and x > 0

    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} has a malformed lora_config (a {type(meta).__name__}, not a JSON object)")
    rank, alpha, targets = meta.get("rank"), meta.get("alpha"), meta.get("targets")
    dim, scaling, base = meta.get("dim"), meta.get("scaling", "standard"), meta.get("base")  # older files: no scaling, no base
    problems = []
    if not whole(rank):
        problems.append(f"rank {rank!r} is not a positive integer")
    if not (number(alpha) and alpha > 0):
        problems.append(f"alpha {alpha!r} is not a positive number")
    if not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        problems.append(f"targets {targets!r} is not a list of layer names")
    if dim is not None and not whole(dim):
        problems.append(f"dim {dim!r} is not a positive integer")
    if not isinstance(scaling, str):
        problems.append(f"scaling {scaling!r} is not a name")
    if base is not None and not isinstance(base, str):
        problems.append(f"base {base!r} is not a fingerprint")
    pattern = meta.get("rank_pattern", {})  # older files: one rank for every layer
    if not (isinstance(pattern, dict) and all(isinstance(k, str) and whole(r) for k, r in pattern.items())):
        problems.append(f"rank_pattern {pattern!r} is not a {{layer name: rank}} object")
    if problems:
        raise CheckpointError(f"{where} has a malformed lora_config: {'; '.join(problems)}")
    return {"rank": rank, "alpha": float(alpha), "targets": sorted(targets), "dim": dim, "scaling": scaling, "base": base,
            "rank_pattern": dict(pattern)}


def check_fits(state: dict, config: dict, select_layers, where: str) -> None:
    """Refuse tensors that are not exactly A (rank, in) and B (out, rank) of each layer the adapter names
    (select_layers() -> {dotted name: nn.Linear} of the model, ValueError for a name it lacks; each layer's
    rank config["rank"] or its rank_pattern's), naming what is missing, extra or misshapen."""
    try:
        layers = {name: m for name, m in select_layers().items() if ".lora." not in name}
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    unknown = sorted(set(config["rank_pattern"]) - set(layers))
    if unknown:
        raise CheckpointError(f"{where}: its rank_pattern names layers it does not adapt: {few(unknown)}")
    expected = {}
    for name, linear in layers.items():
        rank = config["rank_pattern"].get(name, config["rank"])
        expected[f"{name}.lora.A.weight"] = (rank, linear.in_features)
        expected[f"{name}.lora.B.weight"] = (linear.out_features, rank)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{key} is {tuple(state[key].shape)} in the file but {expected[key]} in the model"
             for key in sorted(expected.keys() & state.keys()) if tuple(state[key].shape) != expected[key]]
    problems = ([f"missing {few(missing)}"] if missing else []) + \
               ([f"unexpected {few(unexpected)}"] if unexpected else []) + \
               ([f"wrong shape: {few(wrong, 2)}"] if wrong else [])
    if problems:
        raise CheckpointError(f"{where} does not fit this model: {'; '.join(problems)} "
                              "(was it trained on a model with another dim/n_layers?)")


def check_loadable(config: dict, model, existing: list, scalings, allow_other_base: bool, where: str) -> None:
    """Refuse to put an adapter with these settings (read_lora_file's) on `model`, whose LoRA layers are
    `existing`, when it cannot be right there: an unknown scaling rule, another width, adapters merged
    into W (or that changed W, as PiSSA does), or another base than the one it was trained on, told by
    the weights' fingerprints (unless allow_other_base)."""
    if config["scaling"] not in scalings:
        raise CheckpointError(f"{where}: scaling {config['scaling']!r} is none of {', '.join(scalings)}")
    model_dim = getattr(getattr(model, "config", None), "dim", None)
    if config["dim"] is not None and model_dim is not None and config["dim"] != model_dim:
        raise CheckpointError(f"{where} is an adapter for a model with dim={config['dim']}, but this model has "
                              f"dim={model_dim}; load it onto the base model it was trained on")
    if any(layer.merged or layer.changes_base for layer in existing):
        raise CheckpointError("the model's adapters are merged into its weights (or changed them, as PiSSA does); "
                              "call unmerge_lora(model) or remove_lora(model) before loading another adapter")
    # the base the model's adapters were made on, or (none yet) the model's own weights
    fingerprint = getattr(model, "lora_base", None) if existing else base_fingerprint(model)
    if config["base"] is not None and fingerprint is not None and fingerprint != config["base"] and not allow_other_base:
        raise CheckpointError(f"{where} was trained on another base model (weights {config['base']}, this model's "
                              f"{fingerprint}): its A and B only mean something there. Load the checkpoint it was trained "
                              "on, or load it anyway with --allow_other_base (allow_other_base=True in Python)")
