"""The update fine-tuning needs has low intrinsic rank, so a rank-r B·A can hold it (001, 什么是秩 and
LoRA 低秩适配, after Hu et al. 2021).

Two measurements, on the sweep task, every seed:
  full updates          ΔW = W_after - W_SFT of full fine-tuning at its best learning rate
                        (lab/sweeps.py): the share of each matrix's update energy (sum of squared
                        singular values) in its top 1, 4, 16 and 64 directions, against Gaussian
                        random matrices of the same shapes (which have no structure at all)
  subspace similarity   the demo's LoRA at rank 4 and at rank 64 (its best rate; lab/rank_table.py's
                        runs): how much of the top-4 directions of one update ΔW = scale·B·A lies in
                        the top-4 of the other's, phi = ||U4ᵀ U64||_F^2 / 4 (Hu et al., Fig. 3, who
                        compared A's), on each side of ΔW: its output directions (B's side) and its
                        input directions (A's side), in every adapted matrix of every layer, against
                        4 / d for random subspaces. Rank 4 of seed s is paired with rank 64 of the
                        next seed, so no pair shares a random start.
rank(B·A) <= r holds by construction (B·A has r columns' worth of directions); it is not a finding.

Rule (set before the run), one verdict per half:
  low intrinsic rank   holds if the top 16 directions hold at least 80% of the full update's energy
                       (mean over its matrices) at every seed; with a caveat if less, but at every seed
                       at least 10 points more than random matrices of the same shapes; does not hold
                       otherwise
  r=4 and r=64 agree   holds if phi is at least twice chance (mean over matrices) on both sides for
                       every seed pair; with a caveat if on one side; does not hold if on neither

    python -m lab.low_rank
"""
import sys

import torch

from formats.checkpoint import read_checkpoint
from lab import sweeps
from lab.lab import CAVEAT, FAILS, HOLDS, Finding, mean, run_alone, table, verdict_of
from plot import nice_ticks, panels
from plumbing.errors import run_main

TITLE = "Low intrinsic rank"
CLAIM = "Fine-tuning updates have low intrinsic rank, so a small r captures them (Hu et al. 2021)."
SOURCE = "001 什么是秩, LoRA 低秩适配; paper: Hu et al. 2021"
CAPTURE = 0.8  # "captures": the top 16 directions hold 80% of the energy
MARGIN = 0.10  # "more concentrated than noise": 10 points above random matrices of the same shapes
CHANCE_MULTIPLE = 2  # "agree": twice what random subspaces share
RULE = (f"low intrinsic rank: holds if the top 16 directions hold at least {CAPTURE:.0%} of full fine-tuning's update "
        f"energy (mean over matrices) at every seed; with a caveat if less but at least {MARGIN:.0%} more than random "
        "matrices of the same shapes at every seed; does not hold otherwise. r=4 and r=64 agree: holds if phi(4, 4) is at "
        f"least {CHANCE_MULTIPLE}x chance on both sides of ΔW for every seed pair; with a caveat if on one side; does not "
        "hold if on neither.")
KINDS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "tok_embeddings")
TOP = (1, 4, 16, 64)
SMALL_R, BIG_R, TOP_I = 4, 64, 4


def verdict(top16: list, random16: list, phi_out: list, phi_in: list, chance_out: list, chance_in: list) -> list:
    """top16, random16: per seed, the mean top-16 energy share of the full update and of random matrices; phi_*, chance_*:
    per seed pair, the mean similarity on each side and what chance gives."""
    if all(t >= CAPTURE for t in top16):
        rank = HOLDS
    else:
        rank = CAVEAT if all(t >= r + MARGIN for t, r in zip(top16, random16)) else FAILS
    sides = [all(p >= CHANCE_MULTIPLE * c for p, c in zip(phi, chance)) for phi, chance in ((phi_out, chance_out), (phi_in, chance_in))]
    return [("low intrinsic rank", rank), ("r=4 and r=64 agree", verdict_of(sum(sides), 2))]


def updates(after_path, before_path) -> dict:
    """{kind: [ΔW of each layer]}: the difference of two checkpoints' matrices."""
    after, before = read_checkpoint(after_path), read_checkpoint(before_path)
    out = {kind: [] for kind in KINDS}
    for key, w in after.items():
        kind = key.rsplit(".", 2)[-2] if key.endswith(".weight") else None
        if kind in out and w.dim() == 2:
            out[kind].append((w - before[key]).float())
    return out


def energy_shares(delta: torch.Tensor) -> tuple:
    """({k: share of sum(σ²) in the top k singular values}, the spectrum σ / σ1)."""
    s = torch.linalg.svdvals(delta)
    energy = (s ** 2).cumsum(0) / (s ** 2).sum()
    return {k: energy[min(k, len(s)) - 1].item() for k in TOP}, (s / s[0]).tolist()


def random_matrix(shape, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def update_vectors(adapter: dict, name) -> tuple:
    """(output directions (out, r), input directions (in, r)) of layer `name`'s B·A, strongest first."""
    A, B = adapter[f"{name}.lora.A.weight"].float(), adapter[f"{name}.lora.B.weight"].float()
    U, _, Vh = torch.linalg.svd(B @ A, full_matrices=False)
    r = min(A.shape[0], U.shape[1])
    return U[:, :r], Vh[:r].T


def phi(U_small, U_big, i) -> float:
    """Share of U_small's top-i directions inside U_big's top-i (1: the same subspace, i / d: random)."""
    return (torch.linalg.matrix_norm(U_small[:, :i].T @ U_big[:, :i]) ** 2 / i).item()


def similarity(small_path, big_path) -> dict:
    """{kind: [(phi out, chance out, phi in, chance in) per layer]} of two adapters."""
    small, big = read_checkpoint(small_path), read_checkpoint(big_path)
    out = {}
    for key in small:
        if not key.endswith(".lora.A.weight"):
            continue
        name = key.removesuffix(".lora.A.weight")
        (out_s, in_s), (out_b, in_b) = update_vectors(small, name), update_vectors(big, name)
        i = min(TOP_I, out_s.shape[1], out_b.shape[1])
        out.setdefault(name.rsplit(".", 1)[-1], []).append((phi(out_s, out_b, i), i / out_s.shape[0],
                                                             phi(in_s, in_b, i), i / in_s.shape[0]))
    return out


def run(lab) -> Finding:
    sft = lab.base()["sft"]
    full, demo = sweeps.sweep_all(lab, [sweeps.FULL, sweeps.DEMO])
    made = lab.train_all([lab.lora_job(lab.sweep_task(), learning_rate=demo.best, lora_rank=r, seed=s)
                          for r in (SMALL_R, BIG_R) for s in lab.seeds])
    small, big = made[:len(lab.seeds)], made[len(lab.seeds):]

    top16, random16, rows, spectra = [], [], [], {}
    for i, run in enumerate(full.best_runs):
        deltas_by_kind = updates(run.weights, sft)
        shares_by_kind = {kind: [energy_shares(d) for d in deltas] for kind, deltas in deltas_by_kind.items()}
        top16.append(mean(s[0][16] for shares in shares_by_kind.values() for s in shares))
        random16.append(mean(energy_shares(random_matrix(tuple(d.shape)))[0][16]
                             for deltas in deltas_by_kind.values() for d in deltas))
        if i == 0:  # the table and the figure: seed 1337, mean over layers
            for kind, shares in shares_by_kind.items():
                shape = tuple(deltas_by_kind[kind][0].shape)
                spectra[kind] = (shape, [mean(s[1][j] for s in shares) for j in range(min(len(s[1]) for s in shares))])
                rows.append([kind, "x".join(map(str, shape)), *(f"{mean(s[0][k] for s in shares):.0%}" for k in TOP),
                             f"{energy_shares(random_matrix(shape))[0][16]:.0%}"])

    pairs = list(zip(small, big[1:] + big[:1]))  # rank 4 of seed s with rank 64 of the next seed
    sims = [similarity(a.weights, b.weights) for a, b in pairs]
    phi_out = [mean(v[0] for k in s for v in s[k]) for s in sims]
    chance_out = [mean(v[1] for k in s for v in s[k]) for s in sims]
    phi_in = [mean(v[2] for k in s for v in s[k]) for s in sims]
    chance_in = [mean(v[3] for k in s for v in s[k]) for s in sims]
    verdicts = verdict(top16, random16, phi_out, phi_in, chance_out, chance_in)

    panels([("line", dict(title=f"{kind} ({'x'.join(map(str, shape))})",
                          series={"full fine-tuning's update (seed 1337, mean over layers)": list(enumerate(spectrum, 1)),
                                  "a random matrix of the same shape": list(enumerate(energy_shares(random_matrix(shape))[1], 1))},
                          x_label="singular value index", y_label="σ_i / σ_1", log_x=True, log_y=True, markers=False))
            for kind, (shape, spectrum) in spectra.items()], lab.figure("lora_update_spectrum.svg"),
           "Singular values of full fine-tuning's update, by matrix kind, against random matrices", columns=4, width=300)
    kinds = list(sims[0])
    ratio = {(k, j): [mean(v[j] / v[j + 1] for v in s[k]) for s in sims] for k in kinds for j in (0, 2)}  # per seed pair
    shown = min(10.0, max(max(v) for v in ratio.values()))  # the embedding's 2,048-row side dwarfs the rest: cut at 10x
    panels([("bar", dict(title=f"{side} directions", x_label=f"phi({TOP_I}, {TOP_I}) / chance (mean over layers; line: seed pairs)",
                         bars={k: (mean(ratio[k, j]), min(ratio[k, j]), max(ratio[k, j])) for k in kinds},
                         ticks=nice_ticks(0, shown),
                         refs=[(CHANCE_MULTIPLE, f"{CHANCE_MULTIPLE}x chance: the rule's threshold"), (1, "chance")]))
            for side, j in (("output (B's side)", 0), ("input (A's side)", 2))],
           lab.figure("lora_subspace_similarity.svg"),
           f"How much the top-{TOP_I} directions of rank-{SMALL_R} and rank-{BIG_R} updates share, every layer", columns=2, width=470)
    sim_rows = [[k, *(f"{mean(mean(v[j] for v in s[k]) for s in sims):.2f}" for j in range(4))] for k in kinds]
    details = (f"Full fine-tuning at its best rate ({full.describe()}); the share of each update's energy in its top "
               "singular directions, mean over layers (seed 1337), and a random matrix of the same shape:\n\n"
               + table(["matrix", "shape", *(f"top {k}" for k in TOP), "top 16, random"], rows)
               + "\n\nTop 16, mean over every matrix, per seed: " + ", ".join(f"{t:.0%}" for t in top16) + " (random: "
               + ", ".join(f"{r:.0%}" for r in random16) + ").\n\n"
               f"Subspace similarity of ΔW = scale·B·A between rank {SMALL_R} and rank {BIG_R} (the demo's LoRA at "
               f"{demo.best:g}), phi({TOP_I}, {TOP_I}) and chance ({TOP_I} / d), mean over layers and seed pairs:\n\n"
               + table(["matrix", "output phi", "output chance", "input phi", "input chance"], sim_rows)
               + "\n\nphi(i, j) = ||U_small[:, :i]ᵀ U_big[:, :j]||²_F / min(i, j), with U the singular vectors of each "
               "update on one side: the share of one top-i subspace that lies inside the other's top-j, 1 for the same "
               "subspace and about j / d for random ones in d dimensions (Hu et al. 2021, Section 7.2).\n\n"
               "A full update is not low-rank in the strict sense: its spectrum decays without a cliff. "
               + ("Its energy is far more concentrated than a random matrix's, which is what a small adapter can hold. "
                  if mean(top16) >= mean(random16) + MARGIN else
                  "Its energy is hardly more concentrated than a random matrix's, so a small adapter holds little of it. ")
               + "On the dim-128 demo "
               "model 'top 64' is half of a square matrix, so read the top-1/4/16 columns. With LoRA+ (B's rate 16x A's) A "
               "moves little from its random start, so the input side of two adapters can share little more than chance "
               "even where their output sides agree.")
    return Finding(TITLE, CLAIM, SOURCE, RULE,
                   f"The top 16 directions hold {mean(top16):.0%} of full fine-tuning's update energy (random matrices of the "
                   f"same shapes: {mean(random16):.0%}); rank {SMALL_R} and {BIG_R} share {mean(phi_out) / mean(chance_out):.1f}x "
                   f"chance on the output side, {mean(phi_in) / mean(chance_in):.1f}x on the input side.",
                   verdicts, details, ["lora_update_spectrum.svg", "lora_subspace_similarity.svg"], "low_rank")


def main(argv=None):
    run_alone("low_rank", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
