"""Claim 4: the initialisation matters. A random / B zero (the standard one) vs A zero / B random vs
both zero vs PiSSA (Meng et al. 2024: start from W's principal singular directions).

Two measurements:
  step 0    one batch of the sweep task through the demo's SFT model with fresh adapters; the
            gradient norms of all A's and all B's. dL/dB = g·(A x)ᵀ and dL/dA = Bᵀ·g·xᵀ, so with
            B = 0 only B moves at first, with A = 0 only A, and with both zero neither, ever.
  training  each initialisation trained on the sweep task (48 steps), every seed: the standard one is
            train_lora.py itself, the others `python -m lab.train_variant --variant swapped|zeros|pissa`;
            the training loss over the steps and the final validation loss.

    python -m lab.initialisation
"""
import sys

import torch

import training
from dataset.lm_dataset import SFTDataset
from plumbing.errors import run_main
from lab.lab import Finding, mean, run_alone, spread, table
from model.lora_variants import INITS
from model.model_lora import apply_lora, mark_only_lora_as_trainable
from plumbing.flags import LORA_RANK, LORA_TARGETS
from plot import line_chart

# each initialisation's trainer: plain LoRA's is train_lora.py's, the others are model/lora_variants.py's
VARIANT = {"standard": "lora", "swapped": "swapped", "zeros": "zeros", "pissa": "pissa"}


def step0_gradient_norms(lab, init) -> tuple:
    """(‖∇A‖, ‖∇B‖) over all adapters, on the first 16 samples of the sweep task, for fresh adapters of `init`."""
    model, tok = lab.load(lab.base()["sft"])
    torch.manual_seed(1337)
    apply_lora(model, LORA_RANK, target_modules=LORA_TARGETS.split(","), layer_class=INITS[init])
    mark_only_lora_as_trainable(model)
    data = SFTDataset(lab.sweep_task()[1], tok, max_length=64 if lab.quick else 224, verbose=False)
    X, Y, mask = training.collate_trimmed([data[i] for i in range(min(16, len(data)))])
    model.train()
    training.masked_cross_entropy(model(X).logits, Y, mask).backward()
    norm = {ab: torch.linalg.vector_norm(torch.stack([p.grad.norm() for n, p in model.named_parameters()
                                                      if n.endswith(f".lora.{ab}.weight")])).item() for ab in "AB"}
    return norm["A"], norm["B"]


def run(lab) -> Finding:
    norms = {init: step0_gradient_norms(lab, init) for init in INITS}
    configs = [(init, seed) for init in INITS for seed in lab.seeds]
    made = lab.train_all([lab.lora_job(lab.sweep_task(), variant=VARIANT[init], seed=seed) for init, seed in configs])
    runs = dict(zip(configs, made))
    val = {init: [runs[init, s].final("val_loss") for s in lab.seeds] for init in INITS}
    first_loss = {init: mean(runs[init, s].curve("loss")[0][1] for s in lab.seeds) for init in INITS}
    rows = [[init, f"{norms[init][0]:.3g}", f"{norms[init][1]:.3g}", f"{first_loss[init]:.3f}",
             spread(val[init], "{:.3f}")] for init in INITS]
    steps = [step for step, _ in runs[next(iter(INITS)), lab.seeds[0]].curve("loss")]
    series = {init: [(step, mean(dict(runs[init, s].curve("loss"))[step] for s in lab.seeds)) for step in steps] for init in INITS}
    line_chart(series, lab.figure("lora_init_loss.svg"), "Training loss by LoRA initialisation (sweep task, mean of seeds)",
               "optimizer step", "training loss")
    best = min(INITS, key=lambda i: mean(val[i]))
    details = (f"Sweep task ({runs[next(iter(INITS)), lab.seeds[0]].curve('loss')[-1][0]} steps), rank {LORA_RANK} on "
               f"{LORA_TARGETS}, LoRA+ ratio 16 (the demo's), seeds {', '.join(map(str, lab.seeds))}: "
               "gradient norms at step 0, the training loss of the first logged steps, and the final validation loss "
               "(mean and range over seeds):\n\n"
               + table(["init", "‖∇A‖ at step 0", "‖∇B‖ at step 0", "first logged loss", "final validation loss"], rows)
               + "\n\nBoth zero: both gradients are exactly 0 at step 0 and stay so; the loss never moves. Standard and "
               "swapped start at the base (claim 3) but train different factors first: with LoRA+ multiplying B's "
               "learning rate by 16, the one that moves B first gets the larger early steps. PiSSA starts the adapter on "
               "W's largest directions, so its gradients are largest at once.")
    never_learns = norms["zeros"] == (0.0, 0.0) and mean(val["zeros"]) > max(mean(val[i]) for i in INITS if i != "zeros")
    pissa_faster = mean(val["pissa"]) < mean(val["standard"])
    verdict = ("holds" if pissa_faster else "holds with a caveat") if never_learns else "does not hold at this scale"
    return Finding(4, "Initialisation", "A random / B zero lets training start from the base and still learn; both zero "
                   "never learns; PiSSA (principal singular vectors) converges faster.",
                   f"Both zero: gradient 0 and validation loss {spread(val['zeros'], '{:.3f}')} (no learning); "
                   f"standard {spread(val['standard'], '{:.3f}')}, swapped {spread(val['swapped'], '{:.3f}')}, "
                   f"PiSSA {spread(val['pissa'], '{:.3f}')}; best: {best}.",
                   verdict, details, ["lora_init_loss.svg"], "initialisation")


def main(argv=None):
    run_alone("initialisation", run, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
