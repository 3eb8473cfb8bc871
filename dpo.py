"""DPO, Direct Preference Optimization (Rafailov et al. 2023): MiniMind2's preference stage, the math in one file.

SFT shows the model good replies. DPO shows it pairs -- one prompt, a chosen and a rejected reply -- and
moves probability from the rejected reply to the chosen one, measured against a reference that does not
learn (the SFT model), with no reward model and no sampling:

    loss = -log σ(β · [(log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))])

r = β · (log π(reply) - log π_ref(reply)) is the reply's *implicit reward*: how much likelier the model
has made it than the reference finds it. The loss falls as the chosen reply's reward rises above the
rejected one's (their difference is the reward margin). At the first step π = π_ref, every reward is 0,
and the loss is log 2 = 0.693: a DPO loss "stuck near 0.69" is a model that has not moved yet.

DPO only asks that the chosen reply gain on the rejected one, relative to the reference; it can get that
by pushing the rejected reply down alone, dragging down whatever resembles it (docs/dpo.md measures it on
the demo: plain DPO costs general knowledge). RPO (Pang et al. 2024; TRL's rpo_alpha) adds the chosen
reply's SFT loss, so the chosen reply must also become likely: --rpo_alpha.

Read top to bottom:
    reply_log_probs   log π(reply | prompt): the mean over the reply's tokens (MiniMind2) or their sum (the paper)
    dpo_loss          the loss above and the reward margin, per pair
    DPO               the objective training.train calls on every micro-batch (training.LanguageModelling's seam):
                      the loss above (+ RPO's term), and the held-out numbers: loss, preference accuracy, reward margin
    the reference     frozen_copy (full DPO: a second model, as MiniMind2), or without_adapters (LoRA-DPO: the
                      same model with its adapters switched off, adapters_off; no second copy of the weights)
"""
from contextlib import contextmanager
from copy import deepcopy

import torch
import torch.nn.functional as F

from formats.checkpoint import unwrap
from model.model_lora import lora_layers
from plumbing.errors import UserError

LOG_PROBS = ("mean", "sum")  # how a reply's token log-probabilities become one number (--log_probs)


def reply_log_probs(logits, Y, loss_mask, log_probs="mean"):
    """log π(reply | prompt) of each row: the log-probabilities of its trained tokens (the reply and its
    '</s>', SFT's mask), averaged over the reply's length ("mean", MiniMind2's) or summed ("sum", the paper's).

    logits (N, T, V), Y (N, T), loss_mask (N, T) -> (N,). A long reply's sum is more negative than a short
    one's for the same per-token confidence; the mean compares replies of different lengths on one scale.
    Example: token log-probs [-1, -2, -3] with mask [1, 1, 0] -> mean -1.5, sum -3.0.
    """
    per_token = -F.cross_entropy(logits.float().transpose(1, 2), Y, reduction="none")  # (N, T): log π(Y_t | X_<=t)
    mask = loss_mask.float()  # (N, T)
    total = (per_token * mask).sum(dim=-1)  # (N,)
    return total / mask.sum(dim=-1).clamp(min=1) if log_probs == "mean" else total  # clamp: a reply cut off entirely


def dpo_loss(policy, reference, beta):
    """The DPO loss and the reward margin of each pair.

    policy, reference: (B, 2) reply log-probabilities, column 0 the chosen reply, column 1 the rejected one.
    -> (loss (B,), margin (B,)), margin = r_chosen - r_rejected with r = beta * (policy - reference).
    Example, beta 0.1: policy [[-1, -3]], reference [[-2, -2]] -> rewards [0.1, -0.1], margin 0.2,
    loss -log σ(0.2) = 0.598.
    """
    rewards = beta * (policy - reference)  # (B, 2): the implicit rewards of chosen and rejected
    margin = rewards[:, 0] - rewards[:, 1]  # (B,)
    return -F.logsigmoid(margin), margin


class DPO:
    """DPO as the training loop's objective (training.LanguageModelling's methods and attributes).

    reference: X (N, T) -> the reference model's logits (N, T, V), called without gradients (frozen_copy or
    without_adapters). beta, log_probs: dpo_loss's and reply_log_probs'. rpo_alpha: the weight of the chosen
    reply's SFT loss (its mean token NLL) added to each pair's DPO loss; 0 is plain DPO, MiniMind2's. The
    defaults are train_dpo.py's flags (their one home). A batch holds pairs: X, Y, loss_mask are (B, 2, T),
    row 0 of a pair the chosen conversation, row 1 the rejected one (dataset.lm_dataset.DPODataset).

    Held out, it reports over the pairs whose two replies both have a trained token within --max_seq_len:
    the mean of the loss trained on (DPO's + RPO's term), DPO's loss alone (log 2 = 0.693 before any step),
    the preference accuracy (the share of pairs whose chosen reply gets the higher implicit reward; a tie,
    as at the start, counts half), the mean reward margin, and how often the model itself gives the chosen
    reply the higher probability (a tie half; the only number not relative to the reference, so it says
    which reply the SFT model preferred before any DPO step).
    """

    sums = ("summed loss", "summed DPO loss", "correctly ordered pairs", "summed reward margin",
            "pairs the model prefers the chosen of", "scored pairs")

    def __init__(self, reference, beta, log_probs, rpo_alpha):
        self.reference, self.beta, self.log_probs, self.rpo_alpha = reference, beta, log_probs, rpo_alpha
        self.plan = {"dpo": {"beta": beta, "log_probs": log_probs, "rpo_alpha": rpo_alpha}}  # a --resume must find them unchanged

    def _pairs(self, model, X, Y, loss_mask):
        """-> (loss (B,), DPO's loss (B,), margin (B,), policy log-probs (B, 2), aux_loss)."""
        B = X.size(0)
        X, Y, loss_mask = (t.flatten(0, 1) for t in (X, Y, loss_mask))  # (2B, T): chosen, rejected, chosen, ...
        out = model(X)  # one forward for both replies of every pair, as MiniMind2
        policy = reply_log_probs(out.logits, Y, loss_mask, self.log_probs).view(B, 2)
        with torch.no_grad():
            reference = reply_log_probs(self.reference(X), Y, loss_mask, self.log_probs).view(B, 2)
        dpo, margin = dpo_loss(policy, reference, self.beta)
        loss = dpo
        if self.rpo_alpha:  # RPO: + the chosen reply's SFT loss; rows 0, 2, 4, ... are the chosen conversations
            loss = dpo - self.rpo_alpha * reply_log_probs(out.logits[0::2], Y[0::2], loss_mask[0::2], "mean")
        return loss, dpo, margin, policy, out.aux_loss

    def loss(self, model, X, Y, loss_mask):
        """-> (the mean loss over the pairs, aux_loss). A pair whose replies are both cut off by --max_seq_len
        adds log 2 and no gradient (DPODataset counts such sequences when it loads the file)."""
        loss, _, _, _, aux_loss = self._pairs(model, X, Y, loss_mask)
        return loss.mean(), aux_loss

    def held_out_sums(self, model, X, Y, loss_mask):
        """The sums named in `sums`, over one held-out batch of pairs (only those with both replies scored)."""
        loss, dpo, margin, policy, _ = self._pairs(model, X, Y, loss_mask)
        scored = (loss_mask.sum(dim=-1) > 0).all(dim=-1).float()  # (B,): a reply cut off entirely is not a preference
        ordered = (margin > 0).float() + 0.5 * (margin == 0).float()  # (B,)
        prefers_chosen = (policy[:, 0] > policy[:, 1]).float() + 0.5 * (policy[:, 0] == policy[:, 1]).float()
        return torch.stack([(v * scored).sum() for v in (loss, dpo, ordered, margin, prefers_chosen, scored)])

    def held_out(self, sums, name) -> dict:
        """{"NAME_loss", "NAME_dpo_loss", "NAME_accuracy", "NAME_margin", "NAME_prefers_chosen"}: means over the
        held-out pairs scored."""
        loss, dpo, ordered, margin, prefers_chosen, pairs = sums.tolist()
        if pairs == 0:  # every number would be the start's (a tie), whatever the model learnt
            raise UserError("no held-out pair has both replies within --max_seq_len (they are cut off): raise "
                            "--max_seq_len, or give other --val_data")
        return {f"{name}_loss": loss / pairs, f"{name}_dpo_loss": dpo / pairs, f"{name}_accuracy": ordered / pairs,
                f"{name}_margin": margin / pairs, f"{name}_prefers_chosen": prefers_chosen / pairs}


# ------------------------------------------------------------------------------------------------
# The reference: the model DPO measures its rewards against, which never learns.


def frozen_copy(model):
    """Full DPO's reference: a copy of the starting model that never learns (MiniMind2's ref_model): twice
    the weights in memory. -> X (N, T) -> logits (N, T, V)."""
    copy = deepcopy(unwrap(model)).eval().requires_grad_(False)
    return lambda X: copy(X).logits


@contextmanager
def adapters_off(model):
    """The model without its LoRA adapters while the block runs: each adapter's scale is 0, so every adapted
    layer computes W x + 0 · B A x = W x, exactly the base layer (the tied embedding too). Unmerged adapters
    never touch W, so that is the base model itself -- no second copy of its weights.

        with adapters_off(model):
            base_logits = model(ids).logits
    """
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged or layer.changes_base for layer in layers):  # W itself holds (part of) the update then
        raise ValueError("adapters_off needs adapters that leave W as it was: unmerge_lora(model) first (a PiSSA "
                         "adapter changes W, so it cannot be switched off this way)")
    scales = [layer.scale for layer in layers]
    for layer in layers:
        layer.scale = 0.0
    try:
        yield model
    finally:
        for layer, scale in zip(layers, scales):
            layer.scale = scale


def without_adapters(model):
    """LoRA-DPO's reference: the model being trained, with its adapters off (adapters_off) and in eval mode.
    -> X (N, T) -> logits (N, T, V). model: the bare model, not a DDP wrapper (whose forward would join its
    gradient synchronisation)."""
    def reference(X):
        was_training = model.training
        model.eval()
        try:
            with adapters_off(model):
                return model(X).logits
        finally:
            model.train(was_training)
    return reference
