"""Merging task adapters: one adapter file from several (lora_medical + lora_identity -> lora_both).

Adapter i changes a layer's weight by ΔW_i = s_i · B_i A_i (s_i: its scale, alpha / r). A merge makes one
update out of them, with a weight w_i each, and writes it as an ordinary adapter file (one rank, the
layers of all of them; a layer one adapter lacks counts as ΔW_i = 0 there), which eval_model.py, the
server and the PEFT export read like any other:

    cat     Σ w_i ΔW_i exactly, at rank r_1 + r_2 + ...: A = [A_1; A_2], B = [w_1 s_1 B_1, w_2 s_2 B_2]
    svd     Σ w_i ΔW_i cut to rank r by its singular values: the closest rank-r matrix (Eckart-Young)
    linear  PEFT's "linear": A = Σ √(w_i s_i) A_i and B = Σ √(w_i s_i) B_i (equal ranks only). It is NOT
            Σ w_i ΔW_i: B A also holds the cross terms √(w_1 s_1 w_2 s_2)·(B_1 A_2 + B_2 A_1), one
            adapter's up-projection applied to the other's down-projection
    ties    TIES-merging (Yadav et al. 2023) on τ_i = w_i ΔW_i: keep each τ_i's `density` share of entries
            largest in magnitude (trim), give each entry the sign of Σ τ_i (the side with more mass wins:
            elect), and average only the kept entries of that sign (disjoint mean); then rank r by SVD
    dare    DARE (Yu et al. 2023): drop each entry of ΔW_i with probability 1 - density and multiply the
            survivors by 1 / density (the expected update stays ΔW_i), then Σ w_i; then rank r by SVD

Each layer keeps its own rank (cat: the sum of the inputs' there), so adapters with a rank_pattern merge too.
cat is exact; svd, ties and dare give a full matrix that the file can only hold at a rank (r: --rank,
by default the largest of the adapters'), so they lose what lies beyond it (merge_adapters reports how
much). Adapters trained on different bases, or for layers of different shapes, cannot be merged.

    contents = merge_adapters([read_lora_file(p) for p in paths], [0.5, 0.5], "ties")
    save_weights(contents, "out/lora/lora_both_128.pth")
"""
import torch

from formats.adapter_file import few, rank_and_pattern
from model.model_lora import SCALINGS

METHODS = ("cat", "svd", "linear", "ties", "dare")


class MergeError(ValueError):
    """Adapters that cannot be merged, or a merge asked for wrongly: one line saying which and why."""


def merge_adapters(adapters: list, weights: list, method: str, rank: int = None, density: float = 0.5,
                   seed: int = 0) -> dict:
    """The contents of one adapter file from `adapters` ([(tensors, settings)] as formats.adapter_file's
    read_lora_file gives them) weighted by `weights`; the settings record the method and, for the
    methods that cut to a rank, "kept": the share of Σ‖ΔW‖² the cut kept (1.0 when nothing was lost)."""
    check(adapters, weights, method, rank, density)
    layers = sorted({key.split(".lora.")[0] for tensors, _ in adapters for key in tensors})
    shapes = layer_shapes(adapters, layers)
    rank = rank or max(settings["rank"] for _, settings in adapters)
    generator = torch.Generator().manual_seed(seed)
    tensors, kept, total = {}, 0.0, 0.0
    for layer in layers:
        deltas = [delta(tensors_i, settings, layer, shapes[layer]) for tensors_i, settings in adapters]
        if method == "cat":
            A, B = cat(adapters, weights, layer, shapes[layer])
        elif method == "linear":
            A, B = linear(adapters, weights, layer, shapes[layer])
        else:
            merged = {"svd": lambda: sum(w * d for w, d in zip(weights, deltas)),
                      "ties": lambda: ties([w * d for w, d in zip(weights, deltas)], density),
                      "dare": lambda: sum(w * dare(d, density, generator) for w, d in zip(weights, deltas))}[method]()
            A, B, energy = low_rank(merged, rank)
            kept, total = kept + energy[0], total + energy[1]
        tensors[f"{layer}.lora.A.weight"], tensors[f"{layer}.lora.B.weight"] = A.contiguous(), B.contiguous()
    first = adapters[0][1]
    out_rank, pattern = rank_and_pattern({layer: tensors[f"{layer}.lora.A.weight"].shape[0] for layer in layers})
    if pattern:  # one alpha for every layer (scale alpha / rank): each B then carries rank / alpha to keep scale 1 out
        for layer, r in pattern.items():
            tensors[f"{layer}.lora.B.weight"] = tensors[f"{layer}.lora.B.weight"] * (r / out_rank)
    settings = {"rank": out_rank, "alpha": float(out_rank), "scaling": "standard",  # scale 1: B holds every factor
                "targets": sorted({layer.rsplit(".", 1)[-1] for layer in layers}), "dim": first["dim"],
                "init": "merged", "base": next((s["base"] for _, s in adapters if s["base"]), None),
                **({"rank_pattern": pattern} if pattern else {}),
                "merge": {"method": method, "weights": [float(w) for w in weights],
                          **({"density": density} if method in ("ties", "dare") else {}),
                          **({"seed": seed} if method == "dare" else {}),
                          "kept": round(kept / total, 6) if total else 1.0}}
    return {**tensors, "lora_config": settings}


def check(adapters, weights, method, rank, density) -> None:
    """Refuse what cannot be merged or was asked wrongly, with MergeError."""
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}: choose one of {', '.join(METHODS)}")
    if len(adapters) < 2:
        raise MergeError(f"merging needs at least two adapters, got {len(adapters)}")
    if len(weights) != len(adapters):
        raise MergeError(f"{len(weights)} weights for {len(adapters)} adapters: give one weight per adapter")
    if rank is not None and rank < 1:
        raise MergeError(f"the rank must be at least 1, got {rank}")
    if not 0 < density <= 1:
        raise MergeError(f"density is the share of entries kept, in (0, 1], got {density}")
    bases = {s["base"] for _, s in adapters if s["base"]}
    if len(bases) > 1:
        raise MergeError(f"the adapters were trained on different base models ({few(sorted(bases))}): each update only "
                         "means something on its own base, so their sum means nothing")
    dims = {s["dim"] for _, s in adapters if s["dim"]}
    if len(dims) > 1:
        raise MergeError(f"the adapters are for models of different widths (dim {few(sorted(map(str, dims)))})")
    if method == "linear" and (len({(s["rank"], tuple(sorted(s.get("rank_pattern", {}).items()))) for _, s in adapters}) > 1
                               or min(weights) < 0):
        raise MergeError("'linear' adds the A and B matrices themselves, scaled by √weight, so the ranks must be equal "
                         "and the weights at least 0; use cat (exact) or svd")


def layer_shapes(adapters, layers) -> dict:
    """{layer: (out, in)} from B's rows and A's columns; the adapters must agree on every layer they share."""
    shapes = {}
    for tensors, _ in adapters:
        for layer in layers:
            if f"{layer}.lora.A.weight" in tensors:
                shape = (tensors[f"{layer}.lora.B.weight"].shape[0], tensors[f"{layer}.lora.A.weight"].shape[1])
                if shapes.setdefault(layer, shape) != shape:
                    raise MergeError(f"{layer} is {shapes[layer][0]}x{shapes[layer][1]} in one adapter and "
                                     f"{shape[0]}x{shape[1]} in another: they are for different models")
    return shapes


def factors(tensors, settings, layer, shape) -> tuple:
    """(A, B, scale) of one adapter's layer in float32; zero factors of its rank where it has none."""
    rank = settings.get("rank_pattern", {}).get(layer, settings["rank"])
    if f"{layer}.lora.A.weight" not in tensors:
        return torch.zeros(rank, shape[1]), torch.zeros(shape[0], rank), 0.0
    scale = SCALINGS[settings["scaling"]](settings["alpha"], rank)
    return tensors[f"{layer}.lora.A.weight"].float(), tensors[f"{layer}.lora.B.weight"].float(), scale


def delta(tensors, settings, layer, shape) -> torch.Tensor:
    """ΔW = s · B A of one adapter's layer, (out, in)."""
    A, B, scale = factors(tensors, settings, layer, shape)
    return scale * (B @ A)


def cat(adapters, weights, layer, shape) -> tuple:
    parts = [factors(tensors, settings, layer, shape) for tensors, settings in adapters]
    return torch.cat([A for A, _, _ in parts]), torch.cat([w * s * B for w, (_, B, s) in zip(weights, parts)], dim=1)


def linear(adapters, weights, layer, shape) -> tuple:
    parts = [factors(tensors, settings, layer, shape) for tensors, settings in adapters]
    roots = [(w * s) ** 0.5 for w, (_, _, s) in zip(weights, parts)]
    return sum(r * A for r, (A, _, _) in zip(roots, parts)), sum(r * B for r, (_, B, _) in zip(roots, parts))


def ties(taus: list, density: float) -> torch.Tensor:
    """TIES-merging of the weighted updates `taus`: trim, elect, disjoint mean."""
    trimmed = [keep_largest(t, density) for t in taus]
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(dim=0))  # elect: the sign with more total mass
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (stacked * agree).sum(dim=0) / count


def keep_largest(t: torch.Tensor, density: float) -> torch.Tensor:
    """t with all but its `density` share of entries largest in magnitude set to 0."""
    k = max(1, round(density * t.numel()))
    threshold = t.abs().flatten().kthvalue(t.numel() - k + 1).values
    return t * (t.abs() >= threshold)


def dare(t: torch.Tensor, density: float, generator) -> torch.Tensor:
    """t with each entry kept with probability `density`, and the kept ones divided by it."""
    keep = torch.rand(t.shape, generator=generator) < density
    return t * keep / density


def low_rank(matrix: torch.Tensor, rank: int) -> tuple:
    """(A, B, (energy kept, energy)) with B A the best rank-`rank` approximation of `matrix`, scale 1:
    B = U_r √S_r, A = √S_r V_rᵀ. Energy: the squared singular values, kept and all."""
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    A, B = root[:, None] * Vh[:r], U[:, :r] * root[None, :]
    if r < rank:  # a matrix smaller than the rank: pad with zero directions, so every layer has the file's rank
        A, B = torch.cat([A, A.new_zeros(rank - r, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], rank - r)], dim=1)
    energy = (S ** 2).sum().item()
    return A, B, ((S[:r] ** 2).sum().item(), energy)
