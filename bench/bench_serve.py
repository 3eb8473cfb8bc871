"""Serving many adapters from one base: serve_openai_api.py under N concurrent clients, measured.

Each row starts the server in a process of its own and sends it the same requests from N client
threads (standard library HTTP, streamed answers, greedy, --max_tokens each) and reports:

    tokens/s          generated tokens (usage.completion_tokens) per second of wall time, all clients
    TTFT p50 / p99    time to first token: request sent -> first piece of text received
    per token p50/p99 the rest of an answer: (last piece - first piece) / (tokens - 1), per request
    mean batch        rows per decode step, from the server's /stats
    server CPU/token  CPU time the server process used per generated token (from /proc): what a
                      token costs, which other processes on a shared machine barely change

for these workloads (request i goes to model i mod k of the row's list):

    base only               every request for the base ("minimind")
    1, 2, all adapters      batched: each row of a batch wears its own adapter (the default server)
                            merged:  one adapter at a time merged into the weights (--lora_mode merged),
                                     the merge-per-request alternative S-LoRA compares against
    one at a time           all adapters, --max_batch_size 1: what serving without batching gives

and then the correctness check: 200 requests from 32 clients mixing the base and every adapter, each
answer compared with eval_model.py's greedy answer for its question and adapter.

Last, the model alone (no HTTP): the CPU time of one decode step of --clients rows through
engine.forward_rows, for the same mixes, and for one adapter read through ONE shared copy (a
stride-0 view) instead of each row's own: the difference is what reading every row's private copy
of its adapter costs (memory traffic, the price of the per-row products).

Without --ckpt it builds, in a temporary folder, a random model of the demo's shape (dim 128, 4
layers, the demo tokenizer) and random adapters of the demo's shape (rank 16 on wq, wk, wv, wo, w1,
w2, w3 and the tied output), so it needs none of the demo's files. Its weights have std
3/sqrt(fan-in) instead of 0.02: a random model at 0.02 answers every question with one repeated
token, which would let a garbled answer pass as a right one.

    python -m bench.bench_serve                                          # random model, ~3 minutes
    python -m bench.bench_serve --ckpt out/full_sft_128.pth --lora_name lora_medical lora_identity
    python -m bench.bench_serve --requests 32 --check_requests 0 --wait 0   # a quick look
"""
import argparse
import http.client
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.machine import OthersWatch, add_quiet_args, measure_machine, wait_until_quiet
from evaluation import AUTO_PROMPTS, generate_answers
from formats.checkpoint import save_model
from plumbing.errors import UserError, run_main
from model.LMConfig import LMConfig
from formats.loader import adapter_path, checkpoint_meta, list_adapters, load_checkpoint, repo_path
from model.model import MiniMindLM
from serving.engine import SlotKVCache, forward_rows
from model.model_lora import apply_lora, remove_lora, save_lora
from serving.multi_lora import AdapterBank, RowAdapters, RowLoRALayers, read_adapter
from model.tokenizer import Tokenizer
from plumbing.flags import LORA_TARGETS

ROOT = Path(__file__).resolve().parent.parent
DEMO_SHAPE = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4)  # train_pretrain.py's defaults
DEMO_TARGETS = LORA_TARGETS.split(",")  # train_lora.py's --lora_targets


# ----------------------------------------------------------------------------------------------
# The files to serve: given, or a random model and adapters of the demo's shape.


def random_model_and_adapters(out_dir: Path, n_adapters: int, seed: int = 0) -> tuple:
    """out_dir/full_sft_128.pth and out_dir/lora/random_{i}_128.pth -> (checkpoint path, adapter names)."""
    tokenizer_path = repo_path("model/demo_tokenizer")
    tok = Tokenizer.load(tokenizer_path)
    torch.manual_seed(seed)
    model = MiniMindLM(LMConfig(**DEMO_SHAPE, vocab_size=tok.vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 3 / p.shape[1] ** 0.5)  # varied greedy answers (see the module docstring)
    ckpt = out_dir / "full_sft_128.pth"
    save_model(model, ckpt, meta=checkpoint_meta("full_sft", tokenizer_path, tok))
    names = [f"random_{i}" for i in range(1, n_adapters + 1)]
    for name in names:
        apply_lora(model, rank=16, target_modules=DEMO_TARGETS)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if key.endswith("lora.B.weight"):
                    p.normal_(0, 0.1)  # a trained adapter's B is far from zero; B = 0 would be the base
        save_lora(model, adapter_path(out_dir, name, DEMO_SHAPE["dim"]))
        remove_lora(model)
    return ckpt, names


# ----------------------------------------------------------------------------------------------
# The server, in a process of its own.


class Server:
    """serve_openai_api.py started with `flags`; .port once it listens; stop() ends it (Ctrl-C)."""

    def __init__(self, ckpt, out_dir, names, threads: int, flags=()):
        command = [sys.executable, str(ROOT / "serve_openai_api.py"), "--ckpt", str(ckpt), "--out_dir", str(out_dir),
                   "--port", "0", "--device", "cpu", "--no-log_requests", *flags]
        if names:
            command += ["--lora_name", *names]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        if "http://" not in line:
            self.process.kill()
            raise UserError(f"the server did not start: {self.process.stderr.read().strip()}")
        self.port = int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (user + system, from /proc/PID/stat; nan elsewhere).

        Until it is stopped and waited for, the server is a child whose time OthersWatch counts as
        someone else's: measure() takes it back out."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(name)": state is field 3, utime 14, stime 15
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stats(self) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request("GET", "/stats")
        stats = json.loads(connection.getresponse().read())
        connection.close()
        return stats

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # Ctrl-C: the server's own clean shutdown
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ----------------------------------------------------------------------------------------------
# The clients.


def ask(connection, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed, greedy request on an open connection -> its text, token count and timings."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                       "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}})
    sent = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body=body.encode(), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        return {"error": f"HTTP {response.status}: {response.read()[:200]!r}"}
    first = last = None
    pieces, tokens, done = [], None, False
    for line in response:
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: "):].strip()
        if data == b"[DONE]":
            done = True
            continue
        event = json.loads(data)
        if "error" in event:
            return {"error": event["error"]["message"]}
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        if event["choices"] and event["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            pieces.append(event["choices"][0]["delta"]["content"])
    if not done or tokens is None or first is None:
        return {"error": "the stream ended without [DONE], usage or any text"}
    return {"text": "".join(pieces), "tokens": tokens, "ttft": first - sent,
            "per_token": (last - first) / (tokens - 1) if tokens > 1 else None, "end": last}


def run_clients(port: int, jobs: list, clients: int, max_tokens: int) -> tuple:
    """Send every (model, prompt) of `jobs` from `clients` threads, each on its own keep-alive
    connection -> (results in job order, wall seconds from the first request to the last answer)."""
    todo = queue.Queue()
    for i, job in enumerate(jobs):
        todo.put((i, job))
    results = [None] * len(jobs)

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            try:
                i, (model, prompt) = todo.get_nowait()
            except queue.Empty:
                break
            try:
                results[i] = ask(connection, model, prompt, max_tokens)
            except Exception as e:  # a broken connection, a malformed event: the answer is lost
                results[i] = {"error": f"{type(e).__name__}: {e}"}
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def percentile(values: list, p: float) -> float:
    """The p-th percentile by the nearest-rank rule: percentile([1, 2, 3, 4], 50) -> 2."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def workload(models: list, n: int) -> list:
    """n jobs, request i to models[i % k] with prompt i % len(AUTO_PROMPTS) (the built-in prompts)."""
    return [(models[i % len(models)], AUTO_PROMPTS[i % len(AUTO_PROMPTS)]) for i in range(n)]


def measure(server: Server, models: list, args) -> dict:
    """One row: warm up, wait for a quiet machine, then time the workload."""
    run_clients(server.port, workload(models, 2 * len(models)), min(args.clients, 2 * len(models)), 4)  # first passes
    if args.wait > 0:
        wait_until_quiet(args.wait)
    before, watch, server_cpu = server.stats(), OthersWatch(), server.cpu_seconds()
    results, seconds = run_clients(server.port, workload(models, args.requests), args.clients, args.max_tokens)
    server_cpu = server.cpu_seconds() - server_cpu
    others = max(0.0, watch.share() - server_cpu / ((time.perf_counter() - watch.started) * os.cpu_count()))
    after = server.stats()
    ok = [r for r in results if "error" not in r]
    if len(ok) < len(results):
        raise UserError(f"{len(results) - len(ok)} of {len(results)} requests failed, e.g. "
                        f"{next(r['error'] for r in results if 'error' in r)}")
    steps = after.get("steps", 0) - before.get("steps", 0)
    tokens = sum(r["tokens"] for r in ok)
    return {"tokens_per_s": tokens / seconds, "cpu_per_token": server_cpu / tokens,
            "ttft": [r["ttft"] for r in ok], "per_token": [r["per_token"] for r in ok if r["per_token"] is not None],
            "mean_batch": (after.get("rows_decoded", 0) - before.get("rows_decoded", 0)) / steps if steps else 0.0,
            "others": others}


# ----------------------------------------------------------------------------------------------
# The correctness check: many clients, every answer compared with eval_model's.


def reference_answers(ckpt, out_dir, names: list, dim: int, max_tokens: int) -> dict:
    """{(model, prompt): eval_model.py's greedy answer}: what every served answer must equal."""
    answers = {}
    for model_name in ["minimind", *names]:
        adapter = None if model_name == "minimind" else adapter_path(out_dir, model_name, dim)
        loaded = load_checkpoint(ckpt, adapter=adapter)
        got = generate_answers(loaded.model, loaded.tokenizer, AUTO_PROMPTS, max_tokens, 16, loaded.model.config.max_seq_len)
        answers.update({(model_name, p): a for p, a in zip(AUTO_PROMPTS, got)})
    return answers


def check_answers(server: Server, names: list, references: dict, requests: int, clients: int, max_tokens: int) -> dict:
    """requests from `clients` at once over the base and every adapter -> counts of ok, lost, garbled."""
    jobs = workload(["minimind", *names], requests)
    results, seconds = run_clients(server.port, jobs, clients, max_tokens)
    lost = [r["error"] for r in results if "error" in r]
    garbled = [job for job, r in zip(jobs, results) if "error" not in r and r["text"] != references[job]]
    return {"ok": len(results) - len(lost) - len(garbled), "lost": lost, "garbled": garbled, "seconds": seconds}


# ----------------------------------------------------------------------------------------------
# The model alone: what one decode step costs, without HTTP.


def decode_step_costs(ckpt, out_dir, names: list, mixes: dict, rows: int, rounds: int = 15) -> dict:
    """{case: CPU seconds of one decode step of `rows` rows}, best of `rounds`, the cases taking turns.

    Rows hold a 64-token prompt each; row i wears mixes[case][i % k]. CPU time (process_time) rather
    than wall time: another process taking the core stretches the wall clock, not this figure."""
    loaded = load_checkpoint(ckpt)
    model, dim = loaded.model, loaded.model.config.dim
    bank = AdapterBank("minimind", {name: read_adapter(model, adapter_path(out_dir, name, dim)) for name in names})
    layers = RowLoRALayers(model, bank)  # each adapted layer adds the rows' adapters that `wearing` gives it
    cache = SlotKVCache(model.config, rows, 128)
    prompt = torch.randint(0, model.config.vocab_size, (rows, 64))
    forward_rows(model, prompt, cache, slots=torch.arange(rows), last=torch.full((rows,), 63))
    token, lengths = torch.randint(0, model.config.vocab_size, (rows, 1)), torch.full((rows,), 64)
    cases = {}
    for case, models in mixes.items():
        wearing = RowAdapters(bank, rows)
        for i in range(rows):
            wearing.wear(i, bank.index(models[i % len(models)]))
        cases[case] = wearing.rows(0, rows)
    one = cases["1 adapter"]  # every row the same adapter, read through one copy (stride 0 over the rows)
    cases["1 adapter, one shared copy"] = {layer: (down[:1].expand_as(down), up[:1].expand_as(up))
                                           for layer, (down, up) in one.items()}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for case, adapters in cases.items():
            start = time.process_time()
            with layers.wearing(adapters):
                for _ in range(10):
                    forward_rows(model, token, cache, lengths=lengths)
            best[case] = min(best[case], (time.process_time() - start) / 10)
    return best


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser():
    p = argparse.ArgumentParser(description="Throughput and latency of serve_openai_api.py: base, mixed adapters, "
                                            "merge per request, one at a time.")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint to serve (default: a random model of the demo's shape, built in a temporary folder)")
    p.add_argument("--out_dir", default="out", help="with --ckpt: the checkpoints folder whose lora/ holds the adapters (default: %(default)s)")
    p.add_argument("--lora_name", nargs="+", default=None,
                   help="with --ckpt: the adapters to serve (default: every adapter in OUT_DIR/lora for the model's dim)")
    p.add_argument("--random_adapters", type=int, default=4,
                   help="without --ckpt: how many random adapters to build (default: %(default)s)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    p.add_argument("--requests", type=int, default=64, help="requests per row (default: %(default)s)")
    p.add_argument("--max_tokens", type=int, default=64, help="max_tokens of every request (default: %(default)s)")
    p.add_argument("--check_requests", type=int, default=200,
                   help="requests of the correctness check, 0 to skip it (default: %(default)s)")
    p.add_argument("--check_clients", type=int, default=32, help="clients of the correctness check (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="the server's torch threads (OMP_NUM_THREADS); the clients take the other core "
                        "(default: %(default)s)")
    add_quiet_args(p)
    p.set_defaults(wait=20)  # a row is seconds long: a long wait before each would dwarf it
    return p


def check_args(args) -> None:
    for flag in ("clients", "requests", "check_clients", "threads", "random_adapters"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.max_tokens < 2:
        raise UserError(f"--max_tokens must be at least 2 (a per-token latency needs two tokens), got {args.max_tokens}")
    if args.check_requests < 0:
        raise UserError(f"--check_requests must be 0 (skip) or more, got {args.check_requests}")
    if args.lora_name and not args.ckpt:
        raise UserError("--lora_name names adapters of --ckpt; without --ckpt random adapters are built")


def ms(values: list) -> str:
    return f"{1e3 * percentile(values, 50):,.1f} / {1e3 * percentile(values, 99):,.1f}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    torch.set_num_threads(1)  # this process runs the clients; its torch work is building and references
    with tempfile.TemporaryDirectory() as tmp:
        if args.ckpt:
            ckpt, out_dir = Path(args.ckpt), Path(args.out_dir)
            names = args.lora_name or list_adapters(out_dir, load_checkpoint(ckpt).model.config.dim)
            if not names:
                raise UserError(f"{out_dir}/lora has no adapters for {ckpt}; name them with --lora_name")
            what = f"{ckpt} with adapters {', '.join(names)}"
        else:
            out_dir = Path(tmp)
            ckpt, names = random_model_and_adapters(out_dir, args.random_adapters)
            what = (f"a random model of the demo's shape ({DEMO_SHAPE}) with {len(names)} random rank-16 adapters on "
                    f"{','.join(DEMO_TARGETS)}")
        print(f"serving {what}; {args.clients} clients, {args.requests} requests per row, max_tokens "
              f"{args.max_tokens}, greedy, streamed", file=sys.stderr, flush=True)
        dim = load_checkpoint(ckpt).model.config.dim
        references = reference_answers(ckpt, out_dir, names, dim, args.max_tokens) if args.check_requests else None

        if args.wait > 0:
            wait_until_quiet(args.wait)
        machine = measure_machine(args.threads)
        mixes = {"base only": ["minimind"], "1 adapter": names[:1], "2 adapters": names[:2],
                 f"all {len(names)} adapters": names}
        if len(names) < 2:
            del mixes["2 adapters"]
        if len(names) <= 2:
            del mixes[f"all {len(names)} adapters"]
        rows, check = [], None
        servers = [("batched", [], list(mixes)),
                   ("merged", ["--lora_mode", "merged"], [m for m in mixes if m != "base only"]),
                   ("one at a time", ["--max_batch_size", "1"], [list(mixes)[-1]])]
        for mode, flags, row_names in servers:
            server = Server(ckpt, out_dir, names, args.threads, flags)
            try:
                for row in row_names:
                    print(f"measuring {mode}: {row} ...", file=sys.stderr, flush=True)
                    rows.append((row, mode, measure(server, mixes[row], args)))
                if mode == "batched" and args.check_requests:
                    print("checking answers ...", file=sys.stderr, flush=True)
                    check = check_answers(server, names, references, args.check_requests, args.check_clients,
                                          args.max_tokens)
            finally:
                server.stop()
        print("measuring decode steps without HTTP ...", file=sys.stderr, flush=True)
        torch.set_num_threads(args.threads)  # as many as the server had
        steps = decode_step_costs(ckpt, out_dir, names, mixes, args.clients)

    print(machine.header())
    print(f"\nserve_openai_api.py in its own process ({args.threads} torch thread(s)); {args.clients} streaming clients "
          f"in this one; {args.requests} greedy requests of max_tokens {args.max_tokens} per row; {what}\n")
    # float32 only: the correctness check compares with eval_model.py's float32 answers, which bfloat16
    # rows with adapters need not reproduce token for token (tests/test_serve.py says why)
    print("| adapters in use | server | precision | tokens/s | TTFT p50 / p99 (ms) | per token p50 / p99 (ms) | mean batch | "
          "server CPU per token (µs) | others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row, mode, r in rows:
        print(f"| {row} | {mode} | float32 | {r['tokens_per_s']:,.0f} | {ms(r['ttft'])} | {ms(r['per_token'])} | "
              f"{r['mean_batch']:.1f} | {1e6 * r['cpu_per_token']:,.0f} | {r['others']:.0%} |")
    speed = {(row, mode): r["tokens_per_s"] for row, mode, r in rows}
    cost = {(row, mode): r["cpu_per_token"] for row, mode, r in rows}
    base = speed[("base only", "batched")]
    widest = list(mixes)[-1]
    print()
    for row in mixes:
        if row != "base only":
            line = (f"- {row}, batched: {speed[(row, 'batched')] / base:.2f}x the base-only throughput (goal >= 0.8x; "
                    f"by server CPU per token {cost[('base only', 'batched')] / cost[(row, 'batched')]:.2f}x)")
            line += f"; {speed[(row, 'batched')] / speed[(row, 'merged')]:.2f}x merge-per-request"
            print(line + (" (goal > 1x)" if row != "1 adapter" else ""))
    print(f"- {widest}, batched: {speed[(widest, 'batched')] / speed[(widest, 'one at a time')]:.1f}x the throughput of "
          "answering one request at a time (goal >= 3x)")
    if check is not None:
        print(f"- {args.check_requests} requests from {args.check_clients} clients over the base and every adapter, in "
              f"{check['seconds']:.1f} s: {check['ok']} equal to eval_model.py's greedy answer, {len(check['lost'])} "
              f"lost, {len(check['garbled'])} garbled (goal: none lost or garbled)")
        for problem in check["lost"][:3] + [f"garbled: {job}" for job in check["garbled"][:3]]:
            print(f"  - {problem}")
    print(f"\nThe model alone, no HTTP: one decode step of {args.clients} rows (engine.forward_rows, 64 cached positions "
          f"each, {args.threads} thread(s)), CPU time, best of 15 with the cases taking turns\n")
    print("| rows wear | precision | CPU ms per step | vs base only |")
    print("|---|---|---|---|")
    for case, seconds in steps.items():
        print(f"| {case} | float32 | {1e3 * seconds:.2f} | {steps['base only'] / seconds:.2f}x |")
    print(f"\n{machine.footer()}")


if __name__ == "__main__":
    sys.exit(run_main(main))
