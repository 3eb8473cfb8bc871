"""The arithmetic behind the benchmark tables (FLOPs per token, parameter counts, optimizer state).

Timings belong in bench/, not in tests; but an MFU is only as right as the FLOP count it divides,
so the counting is pinned down here on a tiny model, in well under a second.
"""
import torch

from bench.bench_generate import bytes_per_step
from bench.bench_lora import optimizer_state_bytes
from bench.bench_serve import percentile, workload
from bench.bench_train import bf16_speedup, flops_per_token, goal_cells, lora_params, make_batch, matmul_params
from bench.machine import cpu_dtypes
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, mark_only_lora_as_trainable

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, max_seq_len=32)


def test_matmul_params_counts_the_tied_matrix_once_and_skips_norms():
    """Guards against counting the tied embedding twice (as lookup and as output), or counting norm
    gains, either of which would inflate every MFU figure."""
    config = LMConfig(**CONFIG)
    model = MiniMindLM(config)
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * config.hidden_dim  # wq, wo; wk, wv (2 kv heads x 16); w1, w2, w3
    assert matmul_params(model) == 2 * per_layer + 256 * 64
    norms = (2 * 2 + 1) * 64
    assert matmul_params(model) == sum(p.numel() for p in model.parameters()) - norms


def test_lora_adapters_are_not_base_matmul_params():
    """Guards against the adapters' A and B being counted in N (they have their own 6 N_lora term)."""
    model = MiniMindLM(LMConfig(**CONFIG))
    before = matmul_params(model)
    apply_lora(model, rank=4)
    assert matmul_params(model) == before
    assert lora_params(model) == 2 * 2 * (4 * 64 + 64 * 4)  # 2 layers x (wq, wo) x (A + B)


def test_flops_formula_full_vs_lora():
    """Guards against crediting LoRA with the frozen weights' weight gradients (6 N instead of 4 N)."""
    config = LMConfig(**CONFIG)
    attention = 12 * 2 * 64 * 31
    assert flops_per_token(config, 31, 1000, 0, "pretrain") == 6000 + attention
    assert flops_per_token(config, 31, 1000, 0, "full_sft") == 6000 + attention
    assert flops_per_token(config, 31, 1000, 10, "lora") == 4000 + attention + 60


def test_optimizer_state_bytes_reads_adamw_state():
    """Guards against reporting a formula instead of the optimizer's real state: AdamW keeps two
    float32 moments per trainable number (plus a step count per tensor), frozen weights none."""
    model = MiniMindLM(LMConfig(**CONFIG))
    apply_lora(model, rank=4)
    mark_only_lora_as_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    assert optimizer_state_bytes(optimizer) == 0  # no state before the first step
    model(torch.randint(0, 256, (1, 8))).logits.sum().backward()
    optimizer.step()
    moments = 2 * 4 * lora_params(model)
    assert moments <= optimizer_state_bytes(optimizer) <= moments + 8 * len(params)


def test_sft_batches_mask_the_prompt_and_pretraining_batches_do_not():
    """Guards against the SFT benchmark grading every position (then it would time pretraining)."""
    g = torch.Generator().manual_seed(0)
    X, Y, mask = make_batch(256, 2, 31, "pretrain", g)
    assert X.shape == Y.shape == mask.shape == (2, 30) and mask.all()
    assert torch.equal(X[:, 1:], Y[:, :-1])  # Y is X shifted by one, as the datasets make it
    _, _, mask = make_batch(256, 2, 31, "full_sft", g)
    assert not mask[:, :10].any() and mask[:, 10:].all()


def test_percentiles_by_nearest_rank():
    """Guards against a p99 that is really the maximum of a short list or an interpolated value no
    request had: bench_serve's latencies use the nearest-rank rule, always one of the measurements."""
    values = list(range(1, 101))  # 1 .. 100
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([7.0], 99) == 7.0


def test_serve_workload_cycles_models_and_prompts():
    """Guards against a "2 adapters" row that sends every request to one adapter (then it measures
    nothing mixed): request i goes to model i mod k."""
    jobs = workload(["a", "b"], 5)
    assert [m for m, _ in jobs] == ["a", "b", "a", "b", "a"] and len({p for _, p in jobs}) == 5


def test_decode_bytes_count_the_weights_in_their_dtype_and_each_rows_cache():
    """Guards against a decode bound that assumes float32 for bfloat16 weights (it would halve the
    bound and flatter the bfloat16 rows 2x), counts the tied matrix twice, or ignores the KV cache
    that every row reads beside the weights."""
    model = MiniMindLM(LMConfig(**CONFIG))
    weights = sum(p.numel() for p in model.parameters())  # distinct tensors: the tied matrix once
    per_position = 2 * 2 * 2 * 16  # K and V, 2 layers, 2 kv heads, head_dim 16
    assert bytes_per_step(model, 1, 8, 8) == 4 * weights + 1 * 12 * per_position * 4  # mean position 8 + 8/2
    model.cast_weights(torch.bfloat16)
    assert bytes_per_step(model, 3, 8, 8) == 2 * weights + 3 * 12 * per_position * 2


def test_benchmark_precisions_are_the_scripts_precisions(monkeypatch):
    """Guards against a benchmark that times bfloat16 where the training scripts would not use it (a
    CPU that only emulates it), or lists a precision twice."""
    from plumbing import device
    for has_it, expected in ((True, [torch.float32, torch.bfloat16]), (False, [torch.float32])):
        monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda cpuinfo=None, has_it=has_it: has_it)
        assert cpu_dtypes(["float32", "bfloat16", "float32"]) == expected


def test_bfloat16_rows_are_compared_with_float32_rows_of_their_stage():
    """Guards against a speed-up taken against another stage's float32 row, and the MFU goal (set for
    float32) applied to bfloat16 rows, whose MFU divides by a ~3x higher peak."""
    row = lambda mode, dtype, tps: {"size": "MiniMind2-Small", "mode": mode, "dtype": dtype, "tokens_per_s": tps}  # noqa: E731
    results = {("pretrain", torch.float32): row("pretrain", torch.float32, 100.0),
               ("pretrain", torch.bfloat16): row("pretrain", torch.bfloat16, 170.0),
               ("lora", torch.float32): row("lora", torch.float32, 1000.0)}
    assert bf16_speedup(results["pretrain", torch.bfloat16], results) == 1.7
    assert bf16_speedup(results["pretrain", torch.float32], results) is None
    assert goal_cells(results["pretrain", torch.bfloat16], results, mfu=0.2) == ("tokens/s >= 1.6x float32", "yes")
    assert goal_cells(results["pretrain", torch.float32], results, mfu=0.8) == ("MFU >= 75%", "yes")


def test_the_benchmarks_demo_size_is_the_model_the_demo_trains():
    """Guards against the benchmarks' "demo" drifting from the training scripts' defaults (it once
    named an older dim-256 model while run_demo.py trained dim 128, so the tables timed a model no
    one trained)."""
    import train_pretrain
    from bench.bench_generate import model_sizes
    from bench.bench_train import SIZES
    from formats.loader import load_tokenizer

    args = train_pretrain.build_parser().parse_args([])
    trained = dict(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                   vocab_size=load_tokenizer(args.tokenizer).vocab_size)
    fields, _, batch = SIZES["demo"]
    assert fields == trained and batch == args.batch_size
    assert model_sizes()["demo"] == trained
