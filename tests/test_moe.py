"""Tests for the mixture of experts (LMConfig(use_moe=True), model.py's MoEFeedForward).

Known answers come from tests/fixtures/minimind2_moe/ (made by MiniMind2's own code); the rest
compares two ways of computing the same thing (the grouped dispatch vs token by token, cached vs
full, batched vs alone, merged vs unmerged adapters) or trains a tiny model for a few seconds.
"""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import MINIMIND2_MOE, fill_B, fixture_config, fixture_model, logits_of, tiny_model

from bench.bench_moe import train_router
from formats.checkpoint import CheckpointError, load_model, load_weights, save_model
from model.LMConfig import LMConfig
from model.model import MiniMindLM, count_parameters, trainable_parameters_report
from model.model_moe import MoEFeedForward, load_balancing_loss
from model.model_lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    mark_only_lora_as_trainable,
    merge_lora,
    remove_lora,
    save_lora,
    unmerge_lora,
)

MOE_DEFAULTS = dict(num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=True, scoring_func="softmax",
                    aux_loss_alpha=0.1, seq_aux=True, norm_topk_prob=True)  # MiniMind2's


@pytest.fixture(scope="module")
def golden():
    return torch.load(MINIMIND2_MOE / "golden.pth", weights_only=True)


def moe_layers(model) -> list:
    return [layer.feed_forward for layer in model.layers]


def round_routed_outputs_to_float16(model) -> list:
    """Forward hooks that make every routed expert return its output rounded to float16, as
    MiniMind2's training path stores it. Returns the handles (call .remove() on each)."""
    return [expert.register_forward_hook(lambda module, args, out: out.half().float())
            for moe in moe_layers(model) for expert in moe.experts]  # fmt: skip


# ---- config -------------------------------------------------------------------------------------


def test_moe_config_has_minimind2s_defaults_and_round_trips():
    """Guards against MoE defaults drifting from MiniMind2's (a MiniMind2-MoE checkpoint would then
    need flags to load) and against use_moe=True still being refused."""
    config = LMConfig(dim=640, n_layers=8, use_moe=True)  # MiniMind2-MoE
    assert {name: getattr(config, name) for name in MOE_DEFAULTS} == MOE_DEFAULTS
    assert LMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert fixture_config(moe=True).use_moe and fixture_config(moe=True).hidden_dim == 192


@pytest.mark.parametrize("bad, field", [
    (dict(num_experts_per_tok=5), "num_experts_per_tok"), (dict(num_experts_per_tok=0), "num_experts_per_tok"),
    (dict(n_routed_experts=0), "n_routed_experts"), (dict(n_routed_experts=2.0), "n_routed_experts"),
    (dict(scoring_func="sigmoid"), "scoring_func"), (dict(aux_loss_alpha=-0.1), "aux_loss_alpha"),
    (dict(aux_loss_alpha=math.nan), "aux_loss_alpha"), (dict(n_shared_experts=2), "n_shared_experts"),
    (dict(seq_aux="yes"), "seq_aux"), (dict(norm_topk_prob=None), "norm_topk_prob"),
])  # fmt: skip
def test_moe_config_rejects_bad_fields(bad, field):
    """Guards against an MoE config that builds and then fails deep inside a forward pass (top-k of
    5 out of 4 experts), or silently means something else (scoring_func='sigmoid' computing a
    softmax, a negative alpha rewarding collapse); each is one line naming the field."""
    with pytest.raises(ValueError, match=f"^LMConfig: {field} ") as err:
        LMConfig(use_moe=True, **bad)
    assert "\n" not in str(err.value)
    LMConfig(use_moe=False, **bad)  # a dense model never reads these fields


# ---- MiniMind2 compatibility --------------------------------------------------------------------


def test_minimind2_moe_checkpoint_loads_strictly_with_its_keys():
    """Guards against renamed MoE parameters (experts, gate, shared_experts): a MiniMind2-MoE
    checkpoint must load with strict=True, and ours must have exactly its keys, shapes and order."""
    theirs = torch.load(MINIMIND2_MOE / "model.pth", weights_only=True)
    model = fixture_model(moe=True)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]
    assert model.state_dict()["layers.0.feed_forward.gate.weight"].shape == (4, 64)  # (n_routed_experts, dim)
    assert model.tok_embeddings.weight is model.output.weight


@pytest.mark.parametrize("flash_attn", [True, False])
def test_golden_eval_logits(golden, flash_attn):
    """Guards against any numeric drift from MiniMind2-MoE's inference path: routing softmax, top-k,
    renormalisation, how expert outputs are weighted and summed, the shared expert."""
    out = fixture_model(moe=True, flash_attn=flash_attn)(golden["input_ids"])
    torch.testing.assert_close(out.logits, golden["logits_eval"], atol=1e-5, rtol=0)
    assert out.aux_loss.item() == 0.0  # eval mode: no balancing loss, as in MiniMind2


def test_golden_train_mode_aux_loss_and_logits(golden):
    """Guards against a training path or load-balancing loss that is not MiniMind2's (seq_aux
    counting, the E/(T*k) scale, alpha, the sum over layers). MiniMind2's training path stores each
    routed expert's output in float16; ours does not (it computes what eval mode computes), so its
    logits_train are reproduced with that rounding put back by forward hooks."""
    model = fixture_model(moe=True).train()
    ids = golden["input_ids"]
    out = model(ids)
    torch.testing.assert_close(out.aux_loss, golden["aux_loss_train"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits, model.eval()(ids).logits, atol=0, rtol=0)  # one function
    assert (out.logits - golden["logits_train"]).abs().max() > 1e-4  # the float16 rounding's size

    model.train()
    hooks = round_routed_outputs_to_float16(model)
    rounded = model(ids).logits
    for hook in hooks:
        hook.remove()
    # Position 0 attends to itself only, so attention gives bit-identical inputs to the MoE layers
    # here and in MiniMind2; with the rounding put back, the logits then agree to float32 precision.
    torch.testing.assert_close(rounded[:, 0], golden["logits_train"][:, 0], atol=1e-6, rtol=0)
    # Later positions carry ~1e-7 differences from attention's summation order, which can tip a
    # float16 rounding by one step (~3e-5 here) in a few entries; nearly all entries agree to 1e-6.
    diff = (rounded - golden["logits_train"]).abs()
    assert diff.max() < 1e-4 and (diff < 1e-5).float().mean() > 0.95 and diff.median() < 1e-6


def test_eval_mode_keeps_gradients_and_training_mode_adds_the_balancing_loss():
    """Guards against copying MiniMind2's no_grad inference routing (a model in eval mode would then
    give no gradient to its experts, e.g. for a gradient check or saliency), and against an aux
    loss that is computed but detached from the router."""
    model = fixture_model(moe=True)
    ids = torch.randint(0, 320, (2, 8))
    model(ids).logits.sum().backward()
    assert model.layers[0].feed_forward.experts[0].w1.weight.grad is not None
    gate = model.layers[0].feed_forward.gate.weight
    gate.grad = None
    model.train()(ids).aux_loss.backward()
    assert gate.grad is not None and gate.grad.abs().max() > 0


# ---- the MoE feed-forward -------------------------------------------------------------------------


def moe_token_by_token(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The reference: MoEFeedForward's docstring formula, one token at a time, no grouping."""
    B, T, C = x.shape
    rows = []
    for token in x.reshape(B * T, C):
        p = F.softmax(token @ moe.gate.weight.T, dim=-1)  # (E,)
        top = torch.topk(p, moe.top_k).indices  # (k,)
        w = p[top] / p[top].sum() if moe.norm_topk_prob and moe.top_k > 1 else p[top]
        y = sum(w[i] * moe.experts[j](token[None])[0] for i, j in enumerate(top.tolist()))
        if moe.shared_experts is not None:
            y = y + moe.shared_experts(token[None])[0]
        rows.append(y)
    return torch.stack(rows).reshape(B, T, C)


@pytest.mark.parametrize("overrides", [
    {}, dict(num_experts_per_tok=1), dict(num_experts_per_tok=3, n_routed_experts=5),
    dict(norm_topk_prob=False), dict(n_shared_experts=False), dict(num_experts_per_tok=4),
])  # fmt: skip
def test_grouped_dispatch_equals_token_by_token(overrides):
    """Guards against the grouped fast path mixing tokens up: a wrong token for a sorted pair
    (p // k), weights applied to the wrong expert's output, a token counted twice or dropped, the
    shared expert missed; and against its gradients differing from the plain formula's."""
    torch.manual_seed(0)
    moe = tiny_model(use_moe=True, **overrides).layers[0].feed_forward
    x = torch.randn(3, 7, 64, requires_grad=True)
    fast, _ = moe(x)
    ref = moe_token_by_token(moe, x)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)

    params = [x, moe.gate.weight, moe.experts[0].w1.weight, moe.experts[-1].w2.weight]
    g = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * g).sum(), params)
    ref_grads = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_an_expert_without_tokens_still_takes_part(tmp_path):
    """Guards against skipping experts that received no tokens: their parameters would get no
    gradient at all (grad None), and DDP, which expects every parameter's gradient each step,
    fails with "Expected to have finished reduction" unless find_unused_parameters=True."""
    import torch.distributed as dist

    moe = MoEFeedForward(LMConfig(dim=32, n_heads=2, use_moe=True))
    with torch.no_grad():
        moe.gate.weight[:3] = 1.0
        moe.gate.weight[3] = -1.0  # positive inputs below: expert 3 always scores lowest, never chosen
    x = torch.rand(2, 8, 32)
    assert 3 not in moe.route(x.reshape(-1, 32))[2]
    moe(x)[0].pow(2).mean().backward()
    assert torch.equal(moe.experts[3].w1.weight.grad, torch.zeros_like(moe.experts[3].w1.weight))

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(moe.train())
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(2):  # DDP reports unused parameters at the start of the next step
            y, aux_loss = ddp(torch.rand(2, 8, 32))
            optimizer.zero_grad()
            (y.pow(2).mean() + aux_loss).backward()
            optimizer.step()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("seq_aux", [True, False])
def test_load_balancing_loss_is_minimind2s_formula(seq_aux):
    """Guards against a balancing loss that differs from MiniMind2's on inputs the golden file does
    not cover (seq_aux=False, other k and E): written out here as MiniMind2 writes it, with counts
    scaled by E/(T*k) per sequence, or a one-hot mean over the batch."""
    torch.manual_seed(0)
    B, T, E, k, alpha = 3, 10, 5, 2, 0.1
    probs = F.softmax(torch.randn(B * T, E), dim=-1)
    chosen = torch.topk(probs, k, dim=-1).indices
    got = load_balancing_loss(probs, chosen, B if seq_aux else 1, alpha)
    if seq_aux:
        ce = torch.zeros(B, E).scatter_add_(1, chosen.view(B, -1), torch.ones(B, T * k)).div_(T * k / E)
        want = (ce * probs.view(B, T, E).mean(dim=1)).sum(dim=1).mean() * alpha
    else:
        fi = F.one_hot(chosen.view(-1), num_classes=E).float().mean(0) * E
        want = (probs.mean(0) * fi).sum() * alpha
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)


def test_balancing_loss_is_alpha_when_balanced_and_pushes_down_overloaded_experts():
    """Guards against the docstring's claims drifting from the code: a perfectly balanced router
    scores exactly alpha, and the gradient lowers the probability of the overloaded expert more."""
    alpha = 0.1
    balanced = torch.full((4, 2), 0.5)
    assert load_balancing_loss(balanced, torch.tensor([[0], [1], [0], [1]]), 1, alpha).item() == pytest.approx(alpha)
    probs = torch.tensor([[0.7, 0.3]] * 4, requires_grad=True)
    load_balancing_loss(probs, torch.tensor([[0], [0], [0], [1]]), 1, alpha).backward()  # expert 0 has 3 of 4
    assert torch.allclose(probs.grad[:, 0], torch.tensor(alpha * 1.5 / 4))  # dL/dp = alpha * f / N, f = (1.5, 0.5)
    assert (probs.grad[:, 0] > probs.grad[:, 1]).all()


@pytest.mark.parametrize("seq_aux", [True, False])
def test_aux_loss_is_the_sum_over_moe_layers(seq_aux):
    """Guards against aux_loss reporting one layer only (or the last layer's, as a value stashed on a
    module would after a second forward), seq_aux not reaching the loss (per sequence vs per batch),
    and the loss leaking into eval mode or dense models."""
    model = tiny_model(use_moe=True, n_layers=3, seq_aux=seq_aux).train()
    ids = torch.randint(0, 97, (2, 9))
    inputs = []
    hooks = [moe.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for moe in moe_layers(model)]
    total = model(ids).aux_loss
    for hook in hooks:
        hook.remove()
    per_layer = []
    for moe, x in zip(moe_layers(model), inputs):  # x: (B, T, C)
        probs, _, chosen = moe.route(x.reshape(-1, x.shape[-1]))
        per_layer.append(load_balancing_loss(probs, chosen, n_groups=2 if seq_aux else 1, alpha=0.1))
    torch.testing.assert_close(total, sum(per_layer), atol=1e-7, rtol=0)
    assert not any(hasattr(module, "aux_loss") for module in model.modules())  # returned, not stored
    assert model.eval()(ids).aux_loss.item() == 0.0
    assert tiny_model(use_moe=True, aux_loss_alpha=0.0).train()(ids).aux_loss.item() == 0.0
    assert tiny_model(use_moe=False).train()(ids).aux_loss.item() == 0.0


def test_seq_aux_balances_each_sequence_batch_aux_the_whole_batch():
    """Guards against seq_aux being ignored (or inverted): two sequences that each use one expert,
    a different one, are balanced as a batch (batch-level loss = alpha) but not each on its own."""
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)  # sequence 0 -> expert 0, sequence 1 -> expert 1
    chosen = probs.argmax(-1, keepdim=True)  # (8, 1)
    per_sequence = load_balancing_loss(probs, chosen, n_groups=2, alpha=1.0)
    per_batch = load_balancing_loss(probs, chosen, n_groups=1, alpha=1.0)
    assert per_batch.item() == pytest.approx(1.0) and per_sequence.item() == pytest.approx(1.8)


def test_moe_runs_in_bfloat16_with_float32_routing_probabilities():
    """Guards against dtype clashes in the dispatch (index_add of float32-weighted outputs into a
    bf16 buffer) under autocast and in a bf16 model, and against a router softmax in bf16, whose
    ~3 significant digits would blur close calls between experts and the balancing loss."""
    model = tiny_model(use_moe=True).train()
    ids = torch.randint(0, 97, (2, 12))
    exact = model(ids).aux_loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
    assert out.logits.dtype == torch.bfloat16 and out.aux_loss.dtype == torch.float32
    assert abs(out.aux_loss.item() - exact.item()) < 0.01  # bf16 hidden states route a little differently
    (out.logits.float().pow(2).mean() + out.aux_loss).backward()

    half = tiny_model(use_moe=True).to(torch.bfloat16).train()
    probs, weights, _ = half.layers[0].feed_forward.route(torch.randn(5, 64, dtype=torch.bfloat16))
    assert probs.dtype == weights.dtype == torch.float32
    out = half(ids)
    assert out.logits.dtype == torch.bfloat16
    (out.logits.float().pow(2).mean() + out.aux_loss).backward()
    assert half.layers[0].feed_forward.gate.weight.grad.dtype == torch.bfloat16


# ---- generation, padding, compile ---------------------------------------------------------------


def test_moe_cached_decode_equals_full_forward():
    """Guards against MoE routing that depends on the other tokens in the call (a capacity limit,
    a batch statistic): decoding one token at a time through the KV cache must give the logits of
    one full forward."""
    model = tiny_model(use_moe=True)
    ids = torch.randint(0, 97, (2, 12))
    full = logits_of(model, ids)
    out = model(ids[:, :5], use_cache=True)
    pieces = [out.logits]
    for t in range(5, 12):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    prompt = ids[:, :4]
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, logits_of(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, temperature=0, eos_token_id=-1), seq)


def test_moe_left_padded_batch_rows_equal_each_alone():
    """Guards against padding tokens influencing real ones through the experts (e.g. a per-batch
    routing quota): each row of a left-padded batch must get what it gets alone."""
    model = tiny_model(use_moe=True)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (3, 9, 6)]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask).logits
    batch_out = model.generate(ids, attention_mask=mask, max_new_tokens=6, temperature=0, eos_token_id=-1)
    for row, prompt in enumerate(prompts):
        alone = torch.tensor([prompt])
        torch.testing.assert_close(batch_logits[row, width - len(prompt) :], logits_of(model, alone)[0], atol=1e-5, rtol=0)
        alone_out = model.generate(alone, max_new_tokens=6, temperature=0, eos_token_id=-1)
        assert batch_out[row, width:].tolist() == alone_out[0, len(prompt) :].tolist()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch-internal, on first compile
def test_torch_compile_traces_the_moe_model_in_one_graph():
    """Guards against dispatch code torch.compile cannot trace. The number of tokens each expert
    gets is data, so fullgraph=True needs capture_scalar_outputs (the counts become symbolic sizes)
    and a count whose shape does not depend on the data (one_hot, not bincount). Without the flag,
    compile still works with one graph break per MoE layer. aot_eager: tracing without codegen."""
    model = tiny_model(use_moe=True, n_layers=1)
    ids = torch.randint(0, 97, (2, 10))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(logits_of(compiled, ids), logits_of(model, ids), atol=1e-5, rtol=0)
        model.train()
        out = compiled(ids)
        (out.logits.pow(2).mean() + out.aux_loss).backward()
    assert model.layers[0].feed_forward.gate.weight.grad is not None
    torch._dynamo.reset()


# ---- checkpoints -------------------------------------------------------------------------------


def test_ddp_saved_minimind2_moe_checkpoint_loads(tmp_path, golden):
    """Guards against refusing a MiniMind2-MoE checkpoint saved from a DDP model (keys start with
    `module.`, file named with `_moe` before `.pth`), and against loading it into a dense model
    by mistake: that must be a CheckpointError naming the MoE keys, not a silent partial load."""
    theirs = torch.load(MINIMIND2_MOE / "model.pth", weights_only=True)
    path = tmp_path / "pretrain_64_moe.pth"
    torch.save({f"module.{k}": v for k, v in theirs.items()}, path)
    model = MiniMindLM(fixture_config(moe=True)).eval()
    load_weights(model, torch.load(path, weights_only=True))
    torch.testing.assert_close(logits_of(model, golden["input_ids"]), golden["logits_eval"], atol=1e-5, rtol=0)

    loaded, meta = load_model(path, config=fixture_config(moe=True))
    assert meta == {} and torch.equal(logits_of(loaded.eval(), golden["input_ids"]), logits_of(model, golden["input_ids"]))
    with pytest.raises(CheckpointError, match=r"unexpected: layers\.0\.feed_forward\.experts\.0\.w1\.weight"):
        load_weights(MiniMindLM(fixture_config(moe=True, use_moe=False)), theirs)


def test_moe_save_load_round_trip_keeps_the_config(tmp_path):
    """Guards against an MoE checkpoint whose sidecar loses use_moe or the expert fields (it would
    reload as a dense model and be refused, or with the wrong top-k and silently differ)."""
    model = tiny_model(use_moe=True, num_experts_per_tok=3, n_routed_experts=5, seq_aux=False)
    save_model(model, tmp_path / "full_sft_64_moe.pth")
    loaded, _ = load_model(tmp_path / "full_sft_64_moe.pth")
    assert loaded.config == model.config and isinstance(loaded.layers[0].feed_forward, MoEFeedForward)
    ids = torch.randint(0, 97, (1, 7))
    assert torch.equal(logits_of(loaded.eval(), ids), logits_of(model, ids))


# ---- LoRA on an MoE model -------------------------------------------------------------------------


def lora_names(model) -> set:
    return {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def test_default_lora_on_moe_adapts_what_minimind2s_rule_adapts():
    """Guards against the default targets drifting from MiniMind2's rule (every nn.Linear with a
    square weight) on an MoE model, which would make adapter files incompatible. Expert Linears
    are (hidden, dim) / (dim, hidden) and the gate (E, dim) -- in MiniMind2 not even an nn.Linear --
    so, as in a dense model, only wq and wo are adapted."""
    model = fixture_model(moe=True)
    minimind2_rule = {name for name, m in model.named_modules()
                      if isinstance(m, nn.Linear) and m.weight.shape[0] == m.weight.shape[1] and not name.endswith("gate")}  # fmt: skip
    apply_lora(model, rank=4)
    assert lora_names(model) == minimind2_rule == {f"layers.{i}.attention.{n}" for i in range(2) for n in ("wq", "wo")}


def test_lora_on_experts_shared_expert_and_gate_merges_saves_and_loads(tmp_path, golden):
    """Guards against adapters the grouped dispatch bypasses (experts called as functions on
    copied weights), merges that miss an expert, and adapter files that cannot rebuild the same
    targets: merged logits must equal unmerged, and save -> load must give the same logits."""
    ids = golden["input_ids"]
    model = fixture_model(moe=True)
    apply_lora(model, rank=4, target_modules=["w1", "w2", "w3", "gate"])
    expected_names = {f"layers.{i}.feed_forward.{m}" for i in range(2)
                      for m in [f"experts.{j}.{w}" for j in range(4) for w in ("w1", "w2", "w3")]
                      + [f"shared_experts.{w}" for w in ("w1", "w2", "w3")] + ["gate"]}  # fmt: skip
    assert lora_names(model) == expected_names
    gate = model.layers[0].feed_forward.gate
    assert gate.lora.A.weight.shape == (4, 64) and gate.lora.B.weight.shape == (4, 4)  # B: (n_experts, rank)
    fill_B(model, seed=0, std=0.3)
    adapted = logits_of(model, ids)
    assert not torch.allclose(adapted, golden["logits_eval"], atol=1e-3)

    merge_lora(model)
    torch.testing.assert_close(logits_of(model, ids), adapted, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(logits_of(model, ids), adapted, atol=1e-5, rtol=0)

    save_lora(model, tmp_path / "lora_experts_64_moe.pth")
    saved = torch.load(tmp_path / "lora_experts_64_moe.pth", weights_only=True)
    assert saved["lora_config"]["targets"] == ["gate", "w1", "w2", "w3"]
    assert "layers.1.feed_forward.experts.3.w2.lora.B.weight" in saved
    fresh = fixture_model(moe=True)
    load_lora(fresh, tmp_path / "lora_experts_64_moe.pth")
    assert torch.equal(logits_of(fresh, ids), adapted)
    remove_lora(fresh)
    assert torch.equal(logits_of(fresh, ids), logits_of(fixture_model(moe=True), ids))


def test_moe_trainable_parameter_report_matches_a_hand_count():
    """Guards against miscounting an MoE model (experts or the shared expert counted once per
    layer only, the gate forgotten, the tied embedding twice) or its adapters."""
    model = fixture_model(moe=True)
    ffn = 192 * 64 * 3  # one SwiGLU expert: w1, w2, w3
    per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 64 * 2 + 4 * ffn + ffn + 4 * 64  # attention, norms, 4 routed + shared, gate
    base_total = 320 * 64 + 2 * per_layer + 64  # tied embedding once, final norm
    assert count_parameters(model) == (base_total, base_total) == (414_528, 414_528)
    apply_lora(model, rank=4, target_modules=["w1", "gate"])
    mark_only_lora_as_trainable(model)
    adapter = 2 * (5 * (4 * 64 + 192 * 4) + (4 * 64 + 4 * 4))  # per layer: 5 w1 (4 routed + shared) and the gate
    assert count_parameters(model) == (base_total + adapter, adapter)
    assert trainable_parameters_report(model) == (
        f"trainable params: {adapter:,} || all params: {base_total + adapter:,} || "
        f"trainable%: {100 * adapter / (base_total + adapter):.4f}")
    assert adapter == 10_784


def test_minimind2_moe_has_its_published_size():
    """Guards against an MoE layer with a missing or extra expert, a gate of the wrong shape, or an
    expert width other than hidden_dim: MiniMind2-MoE (dim 640, 8 layers) is published as 145M
    parameters."""
    with torch.device("meta"):
        model = MiniMindLM(LMConfig(dim=640, n_layers=8, use_moe=True))
    hidden = 1728  # 8/3 * 640 rounded up to a multiple of 64
    expert = 3 * 640 * hidden
    attention = 2 * 640 * 640 + 2 * 160 * 640  # wq, wo; wk, wv with 2 of 8 kv heads
    per_layer = attention + 2 * 640 + 5 * expert + 4 * 640  # norms, 4 routed + 1 shared, gate
    assert count_parameters(model)[0] == 6400 * 640 + 8 * per_layer + 640 == 145_029_760  # "145M"


# ---- training -------------------------------------------------------------------------------------


def test_aux_loss_evens_out_the_expert_load():
    """Guards against a load-balancing loss that does not balance (wrong sign, no gradient to the
    router, counts and probabilities of different experts multiplied). A tiny top-1 MoE whose
    router starts out sending most tokens to expert 0 trains for 60 steps on counting sequences:
    with the aux loss the most-loaded expert's share falls towards 1/4 and the loss towards its
    balanced value alpha * n_layers; without it, expert 0 keeps about half the tokens. (Top-1,
    Switch Transformer's routing, because there the router's own gradient feeds the favourite; with
    top-2 on this toy data the language-model loss alone evens the load out too.)
    Measured by `python -m bench.bench_moe --only balance`."""
    with_aux = train_router(alpha=0.1, steps=60, seed=0)
    without = train_router(alpha=0.0, steps=60, seed=0)
    assert with_aux["share_before"] > 0.8 and without["share_before"] > 0.8  # the same lopsided start
    assert with_aux["share_after"] < 0.40 and without["share_after"] > 0.45  # measured: 0.29 and 0.54
    assert with_aux["aux_first"] > 0.45 and with_aux["aux_last"] < 0.22  # balanced: alpha * 2 layers = 0.2
    assert with_aux["ce_last"] < 0.7 * with_aux["ce_first"]  # and the model still learns the data
