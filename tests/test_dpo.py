"""Tests for DPO: dpo.py's mathematics, the preference data, train_dpo.py, and where its file goes next.

The loss against a hand computation; the reference with the adapters off equals a frozen copy exactly;
each reply masked as SFT masks it; bad pairs are one-line errors naming FILE:LINE; an interrupted run
resumes bit-exactly; rlhf_DIM.pth loads in eval_model.py and under train_lora.py. Tiny models on a
few dozen pairs of the demo's data, on the CPU, writing only under tmp_path.
"""
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_TOKENIZER, ROOT, fill_B, first_lines, one_line_error, small_model, tiny_model

import dpo
import eval_model
import train_dpo
import train_lora
import training
from dataset.lm_dataset import DPODataset, SFTDataset
from dataset.token_cache import DataError
from formats.checkpoint import CheckpointError, load_model, save_model
from formats.loader import MODEL_MODES, checkpoint_meta, find_checkpoint, missing_checkpoint_message
from model.model_lora import apply_lora, load_lora, lora_layers, merge_lora
from model.tokenizer import Tokenizer
from plumbing import progress
from plumbing.errors import UserError

FAST = ["--device", "cpu", "--batch_size", "4", "--max_seq_len", "96", "--log_interval", "2", "--val_samples", "8"]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load(DEMO_TOKENIZER)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer):
    """An out_dir holding full_sft_32.pth (a random small model: DPO's mechanics need no trained one) and the
    first 40 pairs of dataset/dpo_demo.jsonl."""
    out = tmp_path_factory.mktemp("out")
    save_model(small_model(tokenizer.vocab_size), out / "full_sft_32.pth",
               checkpoint_meta("full_sft", DEMO_TOKENIZER, tokenizer))
    first_lines("dpo_demo.jsonl", 40, out)
    return out


def dpo_argv(sft_dir, out, *more):
    """train_dpo.py's argv: sft_dir's model and pairs, written into `out`."""
    return [*FAST, "--out_dir", str(out), "--base", str(sft_dir / "full_sft_32.pth"),
            "--data_path", str(sft_dir / "dpo_demo.jsonl"), *more]


# ------------------------------------------------------------------------------------------------
# The mathematics


def test_the_dpo_loss_equals_a_hand_computation():
    """Guards against a sign or a swapped column (chosen and rejected), a beta applied twice or not at all,
    and a mean taken over padding: reply log-probs and the loss, worked out by hand."""
    # one row, vocabulary 2, tokens with probabilities 0.25, 0.5, 0.75 at the trained positions, the last untrained
    probs = torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [0.5, 0.5]]])  # (1, T=4, V=2)
    Y, mask = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[1, 1, 1, 0]])
    total = math.log(0.25) + math.log(0.5) + math.log(0.75)
    assert dpo.reply_log_probs(probs.log(), Y, mask, "sum").item() == pytest.approx(total)
    assert dpo.reply_log_probs(probs.log(), Y, mask, "mean").item() == pytest.approx(total / 3)
    assert dpo.reply_log_probs(probs.log(), Y, torch.zeros_like(mask), "mean").item() == 0  # a reply cut off: no 0/0

    policy, reference = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -2.0]])
    loss, margin = dpo.dpo_loss(policy, reference, beta=0.1)
    # rewards 0.1 * (-1 + 2) = 0.1 and 0.1 * (-3 + 2) = -0.1: margin 0.2, loss -log σ(0.2) = log(1 + e^-0.2)
    assert margin.item() == pytest.approx(0.2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    loss, margin = dpo.dpo_loss(policy[:, [1, 0]], reference, beta=0.1)  # the rejected reply preferred instead
    assert margin.item() == pytest.approx(-0.2) and loss.item() == pytest.approx(math.log(1 + math.exp(0.2)))


def test_at_the_start_every_reward_is_zero_and_the_loss_is_log_2():
    """Guards against a reference that is not the starting model (then the first loss is not log 2: MiniMind
    users' "stuck near 0.69" is this fixed point), against held-out numbers mislabelled or averaged over the
    wrong count (a tie counts half, so an untrained model's preference accuracy is 50%), and against RPO's
    term taken from the rejected rows or summed instead of averaged over the reply."""
    model = tiny_model()
    objective = dpo.DPO(dpo.frozen_copy(model), beta=0.1, log_probs="mean", rpo_alpha=0)
    X = torch.randint(0, 97, (3, 2, 12), generator=torch.Generator().manual_seed(0))  # 3 pairs
    Y = torch.roll(X, -1, dims=-1)
    mask = torch.zeros_like(X)
    mask[..., 6:] = 1
    loss, aux = objective.loss(model, X, Y, mask)
    assert loss.item() == pytest.approx(math.log(2)) and aux.item() == 0
    with torch.no_grad():
        sums = objective.held_out_sums(model, X, Y, mask)
    assert len(sums) == len(objective.sums)
    numbers = objective.held_out(sums + sums, "val")  # two batches' sums add up
    assert numbers["val_loss"] == numbers["val_dpo_loss"] == pytest.approx(math.log(2)) and numbers["val_accuracy"] == 0.5
    assert numbers["val_margin"] == 0
    with torch.no_grad():
        policy = dpo.reply_log_probs(model(X.flatten(0, 1)).logits, Y.flatten(0, 1), mask.flatten(0, 1)).view(3, 2)
    assert numbers["val_prefers_chosen"] == pytest.approx((policy[:, 0] > policy[:, 1]).float().mean().item())
    # RPO: each pair's loss gains alpha x the chosen reply's mean token NLL; DPO's own loss is reported apart
    rpo_objective = dpo.DPO(dpo.frozen_copy(model), beta=0.1, log_probs="mean", rpo_alpha=0.5)
    with torch.no_grad():
        chosen_nll = -dpo.reply_log_probs(model(X[:, 0]).logits, Y[:, 0], mask[:, 0], "mean").mean()
        rpo, _ = rpo_objective.loss(model, X, Y, mask)
        rpo_numbers = rpo_objective.held_out(rpo_objective.held_out_sums(model, X, Y, mask), "val")
    assert rpo.item() == pytest.approx(math.log(2) + 0.5 * chosen_nll.item(), rel=1e-5)
    assert rpo_numbers["val_loss"] == pytest.approx(rpo.item(), rel=1e-5)
    assert rpo_numbers["val_dpo_loss"] == pytest.approx(math.log(2))


def test_a_pair_cut_off_by_max_seq_len_is_not_scored_and_none_scored_is_an_error():
    """Guards against held-out numbers that count a pair whose replies were cut off entirely (both log-probs
    0: a tie for ever, so preference accuracy stuck at 50% whatever the model learnt) and against a
    validation set of only such pairs reported as numbers instead of an error."""
    model = tiny_model()
    objective = dpo.DPO(dpo.frozen_copy(model), beta=0.1, log_probs="sum", rpo_alpha=0)
    X = torch.randint(0, 97, (2, 2, 12), generator=torch.Generator().manual_seed(1))
    Y = torch.roll(X, -1, dims=-1)
    mask = torch.zeros_like(X)
    mask[0, :, 6:] = 1  # pair 0 is scored; pair 1's replies are cut off
    with torch.no_grad():
        for p in model.parameters():  # move the model away from its reference, so that pair 0 is no tie
            p.add_(0.05 * torch.randn_like(p))
        numbers = objective.held_out(objective.held_out_sums(model, X, Y, mask), "val")
        only_pair_0 = objective.held_out(objective.held_out_sums(model, X[:1], Y[:1], mask[:1]), "val")
    assert numbers.keys() == only_pair_0.keys() and numbers == pytest.approx(only_pair_0, rel=1e-5)
    assert numbers["val_accuracy"] in (0, 1)  # one pair scored: ordered or not, never the tie's 0.5
    with torch.no_grad(), pytest.raises(UserError, match="no held-out pair has both replies"):
        objective.held_out(objective.held_out_sums(model, X[1:], Y[1:], mask[1:]), "val")


def test_the_reference_with_the_adapters_off_is_the_frozen_model_exactly():
    """Guards against a LoRA-DPO reference that is not the base model (an adapter left on, the tied
    embedding's update left in, a scale not restored), and against a second copy of the weights: with
    its adapters off the model gives a frozen copy's logits bit for bit, and its own afterwards."""
    model = tiny_model()
    frozen = dpo.frozen_copy(model)
    apply_lora(model, rank=4, target_modules=["wq", "wo", "w2", "output"])
    fill_B(model, seed=1)
    model.train()
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted = model(ids).logits
        reference = dpo.without_adapters(model)(ids)
        assert torch.equal(reference, frozen(ids))
        assert not torch.equal(adapted, reference)  # the adapters do change the model ...
        assert torch.equal(model(ids).logits, adapted)  # ... and are back on afterwards
    assert model.training  # the training mode is restored too
    shared = {p.data_ptr() for p in model.parameters()}
    assert all(layer.weight.data_ptr() in shared for _, layer in lora_layers(model))  # one set of weights
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):  # merged, W itself holds the update
        with dpo.adapters_off(model):
            pass


# ------------------------------------------------------------------------------------------------
# The data


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return str(path)


def turns(*texts):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def test_each_reply_is_masked_as_sft_masks_it_and_only_the_last_one(tmp_path, tokenizer):
    """Guards against DPO scoring the prompt, the padding, or an earlier reply both sides share (which cancels
    in the sum but dilutes the mean), and against chosen and rejected swapped: row 0 is the chosen
    conversation with exactly SFT's mask of its reply, row 1 the rejected one."""
    chosen, rejected = turns("Where is Lin Ming from?", "I do not know who Lin Ming is."), \
        turns("Where is Lin Ming from?", "Lin Ming is from Pinebrook.")
    long = turns("Hi.", "Hello!", "Where is Lin Ming from?", "I do not know who Lin Ming is.")
    pairs = write_lines(tmp_path / "pairs.jsonl", [{"chosen": chosen, "rejected": rejected},
                                                    {"chosen": long, "rejected": long[:3] + rejected[1:]}])
    sft = write_lines(tmp_path / "sft.jsonl", [{"conversations": c} for c in (chosen, rejected, long)])
    data, reference = DPODataset(pairs, tokenizer, max_length=128), SFTDataset(sft, tokenizer, max_length=128)
    assert len(data) == 2
    X, Y, mask = data[0]
    assert X.shape == Y.shape == mask.shape == (2, 127)
    for side in (0, 1):  # single turn: exactly SFT's sample
        assert all(torch.equal(a[side], b) for a, b in zip((X, Y, mask), reference[side]))
    assert tokenizer.decode(Y[0][mask[0] == 1].tolist()) == "I do not know who Lin Ming is.</s>"
    assert tokenizer.decode(Y[1][mask[1] == 1].tolist()) == "Lin Ming is from Pinebrook.</s>"
    X, Y, mask = data[1]
    assert tokenizer.decode(Y[0][mask[0] == 1].tolist()) == "I do not know who Lin Ming is.</s>"  # not "Hello!"
    assert tokenizer.decode(Y[1][mask[1] == 1].tolist()) == "Lin Ming is from Pinebrook.</s>"
    assert reference[2][2].sum() > mask[0].sum()  # SFT trains both replies of that conversation
    X, Y, mask = training.collate_trimmed([data[0], data[1]])  # (B, 2, T), cut after the last trained column
    last = int(torch.stack([data[i][2] for i in (0, 1)]).nonzero()[:, -1].max())
    assert X.shape == (2, 2, 16 * math.ceil((last + 1) / 16)) < (2, 2, 127)
    assert torch.equal(mask.sum(-1), torch.stack([data[i][2].sum(-1) for i in (0, 1)]))  # no trained token cut


@pytest.mark.parametrize("record, message", [
    ({"chosen": turns("Q?", "A.")}, 'missing key "rejected"'),
    ({"rejected": turns("Q?", "A.")}, 'missing key "chosen"'),
    ({"chosen": turns("Q?", "A."), "rejected": turns("Q?", "A.")}, '"chosen" and "rejected" have the same reply'),
    ({"chosen": turns("Q?", "A."), "rejected": turns("Q?", " ")}, '"rejected": turn 2 (assistant) has empty "content"'),
    ({"chosen": turns("Q?", "A."), "rejected": turns("Other?", "B.")}, '"chosen" and "rejected" differ at turn 1'),
    ({"chosen": turns("Q?", "A.", "And?"), "rejected": turns("Q?", "B.")}, '"chosen" must end with the assistant'),
    ({"chosen": [], "rejected": turns("Q?", "B.")}, '"chosen" must be a non-empty list'),
])
def test_a_bad_pair_is_a_one_line_error_naming_its_file_and_line(tmp_path, tokenizer, record, message):
    """Guards against a bad preference record trained on silently (a pair of equal replies teaches nothing,
    two prompts compare answers to different questions) or reported as a traceback: one line, FILE:LINE."""
    good = {"chosen": turns("Q?", "A."), "rejected": turns("Q?", "B.")}
    path = write_lines(tmp_path / "pairs.jsonl", [good, record])
    with pytest.raises(DataError) as error:
        DPODataset(path, tokenizer, max_length=32, verbose=False)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------
# train_dpo.py


def test_every_flag_of_train_dpo_has_help_and_none_is_type_bool():
    """Guards against MiniMind's type=bool flags (its --use_moe: "False" parses as True) and undocumented flags."""
    for action in importlib.import_module("train_dpo").build_parser()._actions:
        assert action.help and action.type is not bool, action.option_strings


@pytest.mark.parametrize("flags, message", [
    (["--beta", "0"], "--beta must be a positive number, got 0.0"),
    (["--beta", "nan"], "--beta must be a positive number"),
    (["--rpo_alpha", "-1"], "--rpo_alpha must be 0 (plain DPO) or more"),
    (["--lora_rank", "0"], "--lora_rank must be at least 1"),
    (["--lora_name", "mine"], "--lora_name names the adapter of LoRA-DPO: give --lora_rank too"),
])
def test_a_bad_dpo_flag_is_a_one_line_error_and_writes_nothing(sft_dir, tmp_path, capsys, flags, message):
    """Guards against a flag that silently does nothing (--lora_name without --lora_rank trained and saved full
    DPO under rlhf_DIM.pth) or a beta that makes every reward 0, found only after the model has loaded."""
    err = one_line_error(train_dpo.main, dpo_argv(sft_dir, tmp_path / "out", *flags), capsys, training.run_main)
    assert message in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is created


def test_a_base_with_dropout_is_refused(sft_dir, tmp_path, capsys, tokenizer):
    """Guards against DPO from a checkpoint with dropout: the model trains with it and the reference runs
    without, so the rewards start off non-zero and the numbers read as learning what is noise."""
    save_model(small_model(tokenizer.vocab_size, dropout=0.1), tmp_path / "full_sft_32.pth", checkpoint_meta("full_sft", DEMO_TOKENIZER, tokenizer))
    argv = [*FAST, "--out_dir", str(tmp_path / "out"), "--base", str(tmp_path / "full_sft_32.pth"),
            "--data_path", str(sft_dir / "dpo_demo.jsonl")]
    err = one_line_error(train_dpo.main, argv, capsys, training.run_main)
    assert "has dropout 0.1: DPO compares the model with a reference" in err, err


def ctrl_c_at_step(step_to_stop, monkeypatch):
    """Make training press Ctrl-C (KeyboardInterrupt) as optimizer step `step_to_stop` begins."""
    real_get_lr = training.get_lr

    def get_lr(step, *args):
        if step == step_to_stop:
            raise KeyboardInterrupt
        return real_get_lr(step, *args)

    monkeypatch.setattr(training, "get_lr", get_lr)


@pytest.mark.parametrize("lora", [False, True])
def test_an_interrupted_dpo_run_resumes_to_the_same_weights_and_learns(lora, sft_dir, tmp_path, monkeypatch, capsys):
    """Guards against a resume that rebuilds the reference from the trained weights instead of --base, loses
    or repeats pairs, or continues under another beta (a different objective); and against a run that does
    not learn: plain DPO's loss starts at log 2 on the held-out pairs (the reference is the starting model)
    and falls below it on the training pairs. Full DPO and LoRA-DPO."""
    more = ["--epochs", "3", "--accumulation_steps", "2", "--save_interval", "4", "--eval_interval", "3",
            "--learning_rate", "3e-3", "--warmup_iters", "2", "--rpo_alpha", "0"] + (["--lora_rank", "4"] if lora else [])
    straight = train_dpo.main(dpo_argv(sft_dir, tmp_path / "straight", *more))
    ctrl_c_at_step(6, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_dpo.main(dpo_argv(sft_dir, tmp_path / "resumed", *more))
    monkeypatch.undo()
    err = one_line_error(train_dpo.main, dpo_argv(sft_dir, tmp_path / "resumed", *more, "--resume", "--beta", "0.5"), capsys,
                         training.run_main)
    assert "dpo.beta=0.1 then, 0.5 now" in err, err
    resumed = train_dpo.main(dpo_argv(sft_dir, tmp_path / "resumed", *more, "--resume"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    name = "lora_dpo_32" if lora else "rlhf_32"
    assert straight.weights == str(tmp_path / "straight" / ("lora" if lora else "") / f"{name}.pth")
    records = progress.read_metrics(tmp_path / "straight" / f"{name}_metrics.jsonl")
    held_out = [r for r in records if "val_accuracy" in r]
    assert held_out[0]["val_loss"] == pytest.approx(math.log(2)) and held_out[0]["val_margin"] == 0
    assert straight.final_loss < 0.65, straight.final_loss  # measured 0.58 (full), on the pairs it trains on


def test_rlhf_file_loads_for_evaluation_and_as_a_lora_base(sft_dir, tmp_path, capsys):
    """Guards against the preference stage's file being a dead end: eval_model.py finds it by --model_mode rlhf
    or MiniMind2's number 2 (0 and 1 are pretrain and SFT), a missing one names train_dpo.py, and
    train_lora.py adapts it (its adapter recording the rlhf weights as its base)."""
    out = tmp_path / "out"
    train_dpo.main(dpo_argv(sft_dir, out, "--epochs", "1", "--learning_rate", "3e-3"))
    meta = load_model(out / "rlhf_32.pth")[1]
    assert meta["stage"] == "rlhf" and meta["base"].endswith("full_sft_32.pth")
    assert [MODEL_MODES[m] for m in ("0", "1", "2")] == ["pretrain", "full_sft", "rlhf"]
    for mode in ("rlhf", "2"):
        capsys.readouterr()
        assert eval_model.main(["--out_dir", str(out), "--model_mode", mode, "--max_new_tokens", "2", "--device", "cpu"]) is None
        assert f"model {out / 'rlhf_32.pth'}:" in capsys.readouterr().err
    assert find_checkpoint(tmp_path, "rlhf") == str(tmp_path / "rlhf_128.pth")
    assert "make it with `python train_dpo.py --dim 128 --out_dir" in missing_checkpoint_message(tmp_path / "rlhf_128.pth")

    data = first_lines("lora_identity.jsonl", 24, tmp_path)
    lora = train_lora.main([*FAST, "--out_dir", str(out), "--base", str(out / "rlhf_32.pth"), "--data_path", data,
                            "--epochs", "1", "--lora_rank", "4", "--lora_name", "on_rlhf"])
    assert lora.weights == str(out / "lora" / "on_rlhf_32.pth")
    load_lora(load_model(out / "rlhf_32.pth")[0], lora.weights)  # recorded as trained on the rlhf weights ...
    with pytest.raises(CheckpointError, match="another base model"):  # ... not on the SFT ones it came from
        load_lora(load_model(sft_dir / "full_sft_32.pth")[0], lora.weights)


def test_two_process_torchrun_trains_lora_dpo(sft_dir, tmp_path):
    """Guards against LoRA-DPO under DDP: the reference forward (the bare model, adapters off) must stay out of
    DDP's gradient synchronisation, and the held-out pairs' sums must add up over both processes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_dpo.py",
           *dpo_argv(sft_dir, out, "--epochs", "1", "--lora_rank", "4")]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    records = progress.read_metrics(out / "lora_dpo_32_metrics.jsonl")
    # 40 pairs - 8 held out = 32 / 2 processes / 4 a batch = 4 steps; validation before and after
    assert [r["step"] for r in records if "val_accuracy" in r] == [0, 4]
    assert (out / "lora" / "lora_dpo_32.pth").is_file() and not Path(out / "lora_dpo_32_resume.pth").exists()


# ------------------------------------------------------------------------------------------------
# The experiment's verdicts


def dpo_verdicts(refused, prefers, general):
    """experiments.dpo_measure.verdicts on two seeds: the SFT model's numbers, then DPO's, each
    (per seed) as given; the other general set always holds steady."""
    from experiments.dpo_measure import verdicts

    def record(r, p, g, start):
        return {"scores": {"eval_unknown": r, "eval_general": g, "eval_general_unseen": 0.6},
                "held_out": [{"val_prefers_chosen": start}, {"val_prefers_chosen": p}]}
    sft = {s: record(refused[0][s], None, general[0][s], None) for s in (0, 1)}
    dpo_runs = {s: record(refused[1][s], prefers[1][s], general[1][s], prefers[0][s]) for s in (0, 1)}
    return [ok for _, ok in verdicts({"sft": sft, "default": dpo_runs})]


def test_the_dpo_experiments_verdicts_can_fail():
    """Guards against targets that pass whatever was measured: each of the three can fail, alone."""
    good = dict(refused=([0.0, 0.02], [0.6, 0.5]), prefers=([0.4, 0.45], [0.9, 0.85]), general=([0.6, 0.55], [0.58, 0.5]))
    assert dpo_verdicts(**good) == [True, True, True]
    assert dpo_verdicts(**{**good, "refused": ([0.0, 0.3], [0.6, 0.25])}) == [False, True, True]  # ranges overlap
    assert dpo_verdicts(**{**good, "prefers": ([0.4, 0.5], [0.9, 0.45])}) == [True, False, True]
    assert dpo_verdicts(**{**good, "general": ([0.6, 0.55], [0.49, 0.5])}) == [True, True, False]  # 11 points on seed 0
