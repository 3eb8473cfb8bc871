"""eval_model.py: the scoring rule, the modes, the model/adapter loading and its error messages.

Everything runs on a tiny model (dim 32, 2 layers) with the MiniMind2 fixture tokenizer, saved
into tmp_path, so the whole file takes seconds.
"""
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import MINIMIND2, ROOT, small_model

import eval_model
from evaluation import answer_is_correct, load_eval_set
from plumbing import errors
from formats.checkpoint import save_model
from formats.loader import checkpoint_meta
from model.model_lora import apply_lora, mark_only_lora_as_trainable, save_lora
from model.tokenizer import Tokenizer

TOKENIZER = MINIMIND2 / "tokenizer.json"  # MiniMind2-style, 1,000 tokens

# A handful of questions whose answers a LoRA adapter can learn in a few dozen steps.
ITEMS = [
    {"question": "What colour is the sky?", "answer": "The sky is blue.", "must_contain": ["blue"]},
    {"question": "How many legs has a cat?", "answer": "A cat has four legs.", "must_contain": ["four"]},
    {"question": "What do bees make?", "answer": "Bees make honey.", "must_contain": ["honey"]},
]


# --- the scoring rule --------------------------------------------------------------------------

@pytest.mark.parametrize("answer, must_contain, expected", [
    ("The sky is blue.", ["blue"], True),
    ("The sky is BLUE.", ["blue"], True),                 # case is ignored ...
    ("the capital is veloria city", ["Veloria City"], True),  # ... in both directions
    ("The sky is grey.", ["blue"], False),
    ("建议去心内科做心电图。", ["心内科", "心电图"], True),     # Chinese, several required strings
    ("建议去心内科看看。", ["心内科", "心电图"], False),         # one of two missing -> wrong
    ("Call it MiniMind, made by ACME", ["minimind", "acme"], True),
    ("", ["blue"], False),
])
def test_answer_is_correct(answer, must_contain, expected):
    """Guards against a scoring rule that is case-sensitive, accepts a partial match of several
    required strings, or breaks on Chinese text."""
    assert answer_is_correct(answer, must_contain) is expected


@pytest.mark.parametrize("line, problem", [
    ('{"question": "q", "answer": "a", "must_contain": []}', "must_contain"),
    ('{"question": "q", "must_contain": ["a"]}', "answer"),
    ('not json', "invalid JSON"),
])
def test_bad_eval_record_names_file_and_line(tmp_path, line, problem):
    """Guards against an empty must_contain silently scoring every answer as correct, and bad lines
    being skipped (which changes every accuracy's denominator) instead of reported."""
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(ITEMS[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(eval_model.UserError, match=rf"eval.jsonl:2: .*{problem}"):
        load_eval_set(path)


# --- a tiny model and adapter in tmp_path -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """out/full_sft_32.pth (+ sidecar) and out/lora/lora_sky_32.pth, an adapter trained on ITEMS."""
    out = tmp_path_factory.mktemp("out")
    tok = Tokenizer.load(TOKENIZER)
    # MiniMind2's default head counts (8 query, 2 kv), so a plain copy loads with --dim/--n_layers alone.
    model = small_model(tok.vocab_size, n_heads=8, max_seq_len=512)

    # Teach the adapter the reference answers (prompt -> answer + </s>), loss on the answer only.
    # A random model's logits are tiny (weights of std 0.02 behind an RMSNorm), too small for a
    # frozen base to let any adapter raise one token's probability; a large final-norm gain fixes that.
    with torch.no_grad():
        model.norm.weight.fill_(10.0)
    save_model(model, out / "full_sft_32.pth", meta=checkpoint_meta("full_sft", TOKENIZER, tok))
    apply_lora(model, rank=8, target_modules=["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    mark_only_lora_as_trainable(model)
    rows, targets = [], []
    for it in ITEMS:
        prompt = tok.apply_chat_template([{"role": "user", "content": it["question"]}], tokenize=True,
                                         add_generation_prompt=True)
        answer = tok.encode(it["answer"]) + [tok.eos_token_id]
        rows.append(prompt + answer)
        targets.append([-100] * len(prompt) + answer)  # -100: no loss on the prompt (or padding)
    width = max(map(len, rows))
    x = torch.tensor([r + [0] * (width - len(r)) for r in rows])  # (3, width), right-padded
    y = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(50):
        logits = model(x[:, :-1]).logits  # (3, width-1, V)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y[:, 1:], ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_lora(model, out / "lora" / "lora_sky_32.pth")

    data = out / "eval_sky.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in ITEMS), encoding="utf-8")
    return out


def run_main(argv, capsys):
    """eval_model.py's main in-process, as its __main__ runs it -> (exit code, stdout, stderr)."""
    code = errors.run_main(eval_model.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_auto_mode_runs_without_a_terminal(tiny):
    """Guards against MiniMind's habit of blocking on input(): --mode auto (the default) must answer
    the built-in prompts and exit with stdin closed, as in CI."""
    proc = subprocess.run([sys.executable, str(ROOT / "eval_model.py"), "--out_dir", str(tiny), "--dim", "32",
                           "--max_new_tokens", "4"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=tiny,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    for prompt in eval_model.AUTO_PROMPTS:
        assert prompt in proc.stdout


def test_auto_mode_is_deterministic_under_seed(tiny, capsys):
    """Guards against sampling that ignores --seed (two runs of the demo would then disagree)."""
    argv = ["--out_dir", str(tiny), "--dim", "32", "--max_new_tokens", "6", "--temperature", "1.0", "--json"]
    first = run_main(argv + ["--seed", "1"], capsys)[1]
    assert run_main(argv + ["--seed", "1"], capsys)[1] == first
    assert run_main(argv + ["--seed", "2"], capsys)[1] != first


def test_chat_commands(tiny, capsys, monkeypatch):
    """Guards against chat commands being sent to the model as text, and /lora failing to switch
    the adapter on the loaded base (or crashing on an unknown name)."""
    script = "/help\nhello\n/lora lora_sky\n/lora nope\n/lora none\n/reset\n/exit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code, out, _ = run_main(["--out_dir", str(tiny), "--dim", "32", "--mode", "chat", "--max_new_tokens", "4"], capsys)
    assert code == 0
    assert "/reset" in out and "(adapter lora_sky:" in out and "now: +lora_sky" in out
    assert "adapters for dim 32 in" in out and ": lora_sky)" in out  # the failed "/lora nope" lists what exists
    assert "now: base model" in out and "history cleared" in out


def test_compare_base_adapter_and_removed(tiny, capsys):
    """Guards against --compare evaluating the same weights twice (identical columns), and against
    remove_lora leaving anything behind: the 'adapter removed' column must equal the base exactly."""
    code, out, err = run_main(["--out_dir", str(tiny), "--dim", "32", "--lora_name", "lora_sky", "--compare", "--json",
                               "--eval_data", str(tiny / "eval_sky.jsonl"), "--max_new_tokens", "8"], capsys)
    assert code == 0, err
    base, adapter, removed = (c["sets"]["eval_sky"] for c in json.loads(out)["columns"])
    assert adapter["loss"] < base["loss"] - 1.0  # the adapter learned these answers
    assert [i["answer"] for i in adapter["items"]] != [i["answer"] for i in base["items"]]
    assert removed == base


def test_compare_table(tiny, capsys):
    """Guards against the human-readable table losing a column or a set."""
    code, out, _ = run_main(["--out_dir", str(tiny), "--dim", "32", "--lora_name", "lora_sky", "--compare",
                             "--eval_data", str(tiny / "eval_sky.jsonl"), "--max_new_tokens", "8"], capsys)
    assert code == 0
    assert "| eval set | metric | base | +lora_sky | adapter removed |" in out
    assert "| eval_sky (3) | accuracy |" in out


def test_minimind2_plain_files_load_with_size_flags(tiny, tmp_path, capsys):
    """Guards against needing this project's sidecar: a MiniMind2 state dict (no .json) and a
    MiniMind2 adapter (no lora_config entry) load with --dim/--n_layers and score the same."""
    sd = torch.load(tiny / "full_sft_32.pth", weights_only=True)
    adapter = torch.load(tiny / "lora" / "lora_sky_32.pth", weights_only=True)
    adapter.pop("lora_config", None)
    (tmp_path / "lora").mkdir()
    torch.save(sd, tmp_path / "full_sft_32.pth")
    torch.save(adapter, tmp_path / "lora" / "lora_sky_32.pth")
    common = ["--lora_name", "lora_sky", "--json", "--eval_data", str(tiny / "eval_sky.jsonl"),
              "--max_new_tokens", "8", "--max_seq_len", "512"]
    reference = json.loads(run_main(["--out_dir", str(tiny), "--dim", "32"] + common, capsys)[1])
    plain = ["--ckpt", str(tmp_path / "full_sft_32.pth"), "--out_dir", str(tmp_path), "--tokenizer", str(TOKENIZER)] + common
    code, out, err = run_main(plain, capsys)
    assert code == 2 and "--dim 32 --n_layers 2" in err  # without a sidecar the size must be given
    code, out, err = run_main(plain + ["--dim", "32", "--n_layers", "2"], capsys)
    assert code == 0, err
    assert json.loads(out)["columns"] == reference["columns"]


def test_missing_adapter_lists_the_ones_that_exist(tiny, capsys):
    """Guards against a bare FileNotFoundError traceback for a mistyped adapter name."""
    code, out, err = run_main(["--out_dir", str(tiny), "--dim", "32", "--lora_name", "lora_medcal"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "lora_medcal_32.pth not found" in err and ": lora_sky)" in err and "train_lora.py" in err


@pytest.mark.parametrize("mode, script", [("sft", "train_full_sft.py"), ("pretrain", "train_pretrain.py")])
def test_missing_checkpoint_names_the_command(tmp_path, capsys, mode, script):
    """Guards against a missing checkpoint ending in a traceback instead of saying how to make it."""
    code, _, err = run_main(["--out_dir", str(tmp_path), "--model_mode", mode, "--dim", "64"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"python {script} --dim 64" in err
    code, _, err = run_main(["--ckpt", str(tmp_path / "full_sft_99.pth")], capsys)
    assert code == 2 and "full_sft_99.pth not found" in err and "train_full_sft.py" in err


def test_an_answer_naming_a_forbidden_fact_is_wrong_and_a_file_whose_reference_fails_is_refused(tmp_path):
    """Guards against scoring "Lin Xiao is from Pinebrook. Lin Xiao is a baker." as a right answer to "what is
    Lin Xiao's job?" (it names the wrong relation first, and a list of every fact would pass any question),
    and against an evaluation file whose own reference answer would be scored wrong."""
    assert answer_is_correct("Lin Xiao is a baker.", ["baker"], ["Pinebrook"])
    assert not answer_is_correct("Lin Xiao is from Pinebrook. Lin Xiao is a baker.", ["baker"], ["pinebrook"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": "A baker from Pinebrook.", "must_contain": ["baker"],
                               "must_not_contain": ["Pinebrook"]}) + "\n", encoding="utf-8")
    with pytest.raises(errors.UserError, match=r"bad.jsonl:1: the reference 'answer' itself fails the item"):
        load_eval_set(bad)
