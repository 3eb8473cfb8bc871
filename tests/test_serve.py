"""serving/ (engine, multi_lora, openai_api, http_server) and serve_openai_api.py: many adapters served in shared batches.

A tiny model (dim 32, 2 layers, grouped-query attention) and two adapters of different ranks and
targets (one on the tied output/embedding matrix) are saved into tmp_path; the server is built from
serving/ in this process on a free port and called over HTTP with the standard library, as any
client would. The command line, serve_openai_api.py, is run as a process, as a user runs it.
"""
import doctest
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import evaluation
from formats.checkpoint import save_model
from formats.loader import checkpoint_meta, load_checkpoint
from model.LMConfig import LMConfig
from model.model import MiniMindLM
from model.model_lora import apply_lora, load_lora, remove_lora, save_lora
from model.tokenizer import Tokenizer
from plumbing import errors
from serving import multi_lora
from serving.engine import Engine, Request, SlotKVCache, forward_rows
from serving.http_server import client_state, listen
from serving.multi_lora import AdapterBank, RowAdapters, RowLoRAEmbedding, RowLoRALayers, RowLoRALinear, read_adapter

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "model" / "demo_tokenizer"
ADAPTERS = {  # name -> (rank, targets): different ranks and targets share one bank
    "lora_a": (8, ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"]),  # the demo's targets
    "lora_b": (4, ["wq", "wo"]),
}
QUESTIONS = ["What is Pinebrook famous for?", "林晓住在哪个镇？", "Which department for a rash? 🙂", "Hi"]
MODELS = ["minimind", "lora_a", "lora_b"]
LONG_TOKENS = 1200  # a request that runs for a while (about a second) beside the others


def sharp_model(seed: int, **config) -> MiniMindLM:
    """A tiny model whose weights have std 3/sqrt(fan-in): at the usual 0.02 a random model's greedy
    answer is one token repeated, which any bug would reproduce."""
    torch.manual_seed(seed)
    model = MiniMindLM(LMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=Tokenizer.load(TOKENIZER).vocab_size,
                                max_seq_len=2048, **config))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 3 / p.shape[1] ** 0.5)
    return model


def save_adapters(model, folder, adapters: dict, suffix: str = "") -> None:
    """folder/NAME_32{suffix}.pth for each NAME: (rank, targets) of `adapters`, with random, non-zero B."""
    for name, (rank, targets) in adapters.items():
        apply_lora(model, rank=rank, alpha=2 * rank, target_modules=targets)  # scale 2: the scale must be applied
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("lora.B.weight"):
                    p.normal_(0, 0.1)  # B = 0 would make every adapter the base model
        save_lora(model, folder / f"{name}_32{suffix}.pth")
        remove_lora(model)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """out/full_sft_32.pth (+ sidecar) and out/lora/lora_a_32.pth, lora_b_32.pth."""
    out = tmp_path_factory.mktemp("out")
    model = sharp_model(0)
    save_model(model, out / "full_sft_32.pth", meta=checkpoint_meta("full_sft", TOKENIZER, Tokenizer.load(TOKENIZER)))
    save_adapters(model, out / "lora", ADAPTERS)
    return out


def start_server(out, adapters=tuple(ADAPTERS), lora_mode="batched", dtype=torch.float32, ckpt="full_sft_32.pth",
                 suffix=""):
    """A server built from serving/ on a free port, in this process, as serve_openai_api.py builds it
    -> (server, port)."""
    loaded = load_checkpoint(out / ckpt, dtype=dtype)
    read = {name: read_adapter(loaded.model, out / "lora" / f"{name}_32{suffix}.pth") for name in adapters}
    server = listen("127.0.0.1", 0)
    try:
        server.start_engine(loaded.model, loaded.tokenizer, read, loaded.model.config.max_seq_len, lora_mode=lora_mode,
                            log_requests=False)
    except BaseException:
        server.server_close()
        raise
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def run_script(*argv) -> subprocess.Popen:
    """serve_openai_api.py started as a user starts it, on the CPU, one thread (not waited for)."""
    return subprocess.Popen([sys.executable, str(ROOT / "serve_openai_api.py"), *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def stop_server(server):
    server.shutdown()
    server.close()


@pytest.fixture(scope="module")
def server(out):
    server, port = start_server(out)
    yield server, port
    stop_server(server)


def greedy_answers(out, name, questions, max_new_tokens, ckpt="full_sft_32.pth", suffix=""):
    """eval_model.py's greedy answers (evaluation.generate_answers) with adapter `name` (or the base):
    what the server must reproduce."""
    adapter = None if name == "minimind" else out / "lora" / f"{name}_32{suffix}.pth"
    loaded = load_checkpoint(out / ckpt, adapter=adapter)
    return evaluation.generate_answers(loaded.model, loaded.tokenizer, questions, max_new_tokens, 16, 2048)


@pytest.fixture(scope="module")
def references(out):
    """{model: {question: greedy answer of 24 tokens}}, and LONG: lora_a's answer of LONG_TOKENS to QUESTIONS[0]."""
    answers = {name: dict(zip(QUESTIONS, greedy_answers(out, name, QUESTIONS, 24))) for name in MODELS}
    answers["LONG"] = greedy_answers(out, "lora_a", QUESTIONS[:1], LONG_TOKENS)[0]
    return answers


def chat_request(model, question, **fields):
    return {"model": model, "messages": [{"role": "user", "content": question}], **fields}


def post(port, body, path="/v1/chat/completions"):
    """POST a JSON body (a dict, or raw bytes) -> (status, parsed JSON answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    status, answer = response.status, json.loads(response.read())
    connection.close()
    return status, answer


def stream(port, body, on_event=None):
    """POST with "stream": true -> the list of events' data (parsed; "[DONE]" kept as it is)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    events = []
    for line in response:
        line = line.decode("utf-8").rstrip("\n")
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
        if on_event:
            on_event(events[-1])
    connection.close()
    return events


def streamed_text(events):
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])


def in_threads(calls):
    """Run the calls at the same time -> their results, in order."""
    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# The per-row computation


def test_batched_multi_adapter_forward_equals_each_row_alone(out):
    """Guards against a batched LoRA that mixes rows up (row i computed with row j's A or B, the scale
    applied twice or not at all, a padded rank that leaks, the tied embedding's update missing), and
    against a KV slot written or read at another row's position, or lost when a row moves: every row
    of a mixed batch (base, two adapters, prompts of different lengths) must get the logits the model
    with that adapter loaded gives on that row alone, through prefill, decode steps and a row move.
    Also against per-row layers that change the model's parameters or keep a step's adapters after it."""
    loaded = load_checkpoint(out / "full_sft_32.pth")
    model, tok = loaded.model, loaded.tokenizer
    reference = load_checkpoint(out / "full_sft_32.pth").model  # the model with one adapter loaded at a time
    keys = list(model.state_dict())
    bank = AdapterBank("minimind", {name: read_adapter(model, out / "lora" / f"{name}_32.pth") for name in ADAPTERS})
    layers = RowLoRALayers(model, bank)
    assert isinstance(model.tok_embeddings, RowLoRAEmbedding) and model.tok_embeddings.weight is model.output.weight
    assert list(model.state_dict()) == keys  # the same parameters under the same names
    rows = RowAdapters(bank, max_rows=4)
    wears = ["lora_a", "minimind", "lora_b", "lora_a"]
    for row, name in enumerate(wears):
        rows.wear(row, bank.index(name))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True) for q in QUESTIONS]
    cache = SlotKVCache(model.config, 4, 8)  # small on purpose: reserve must grow it
    cache.reserve(max(map(len, prompts)) + 4)
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])  # (4, P) right-padded
    with layers.wearing(rows.rows(0, 4)):
        logits = forward_rows(model, ids, cache, slots=torch.arange(4), last=torch.tensor([len(p) - 1 for p in prompts]))
    sequences = [list(p) for p in prompts]

    def expected(name, sequence):
        if name != "minimind":
            load_lora(reference, out / "lora" / f"{name}_32.pth")
        with torch.inference_mode():
            result = reference(torch.tensor([sequence])).logits[0, -1]
        remove_lora(reference)
        return result

    for step in range(4):
        for row, name in enumerate(wears):
            alone = expected(name, sequences[row])  # logits of size ~10: float32 rounding is ~1e-6 of them
            torch.testing.assert_close(logits[row], alone, rtol=0, atol=1e-5 * alone.abs().max().item())
        if step == 1:  # row 1 leaves; the last row moves into its place, with its cache and its adapter
            cache.move(3, 1, len(sequences[3]))
            rows.move(3, 1)
            wears, sequences, logits = wears[:1] + wears[3:] + wears[2:3], sequences[:1] + sequences[3:] + sequences[2:3], \
                logits[[0, 3, 2]]
        tokens = logits.argmax(-1)
        lengths = torch.tensor([len(s) for s in sequences])
        for s, t in zip(sequences, tokens.tolist()):
            s.append(t)
        with layers.wearing(rows.rows(0, len(wears))):
            logits = forward_rows(model, tokens[:, None], cache, lengths=lengths)
    assert all(m.adapter is None for m in model.modules() if isinstance(m, (RowLoRALinear, RowLoRAEmbedding)))


def test_the_per_row_layers_worked_example_holds():
    """Guards against RowLoRALinear's docstring example (W x + B A x for one row: 3 + 10 = 13) going stale."""
    assert doctest.testmod(multi_lora).failed == 0


def test_base_rows_alone_skip_the_adapter_path(out):
    """Guards against a batch of base-only rows paying for the adapters (zeros multiplied in every
    layer): with no row wearing an adapter there is nothing to compute."""
    loaded = load_checkpoint(out / "full_sft_32.pth")
    bank = AdapterBank("minimind", {name: read_adapter(loaded.model, out / "lora" / f"{name}_32.pth") for name in ADAPTERS})
    rows = RowAdapters(bank, max_rows=3)
    rows.wear(1, bank.index("lora_b"))
    assert rows.rows(0, 1) == {} and rows.rows(2, 3) == {}
    assert set(rows.rows(0, 2)) == set(bank.A) and rows.rows(0, 2)["output"][0].shape == (2, 32, 8)
    # ranks 8 and 4 share one stack, lora_b's padded with zeros; the base's row is all zeros
    assert bank.A["layers.0.attention.wq"].shape == (3, 8, 32) and not bank.A["layers.0.attention.wq"][0].any()
    assert not bank.A["layers.0.attention.wq"][2, 4:].any() and "layers.0.feed_forward.w1" in bank.A


# ------------------------------------------------------------------------------------------------
# Greedy answers, whatever shares the batch


def test_greedy_answers_equal_eval_model_in_a_batch_mixing_base_and_two_adapters(server, references):
    """Guards against answers that depend on what else is in the batch (another row's adapter, cache
    or padding leaking in): twelve requests for the base and two adapters, sent at once so that they
    share batches, each get exactly eval_model.py's greedy answer for that question and adapter."""
    server, port = server
    before = server.service.engine.stats["mixed_steps"]
    calls = [(m, q) for q in QUESTIONS for m in MODELS]
    results = in_threads([lambda m=m, q=q: post(port, chat_request(m, q, temperature=0, max_tokens=24)) for m, q in calls])
    for (m, q), (status, answer) in zip(calls, results):
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"] == references[m][q], (m, q)
        assert answer["model"] == m and answer["object"] == "chat.completion"
    assert server.service.engine.stats["mixed_steps"] > before  # they did share batches
    assert len({references[m][QUESTIONS[0]] for m in MODELS}) == 3  # and each adapter changes the answer


def test_a_streamed_answer_concatenates_to_the_whole_answer(server):
    """Guards against streaming that loses, repeats or splits text (half a Chinese character in a
    chunk), or reports other token counts or another finish_reason than the plain answer; and
    against a seed that does not make sampling repeatable."""
    _, port = server
    for fields in ({"temperature": 0, "max_tokens": 30}, {"temperature": 0.9, "top_p": 0.9, "seed": 7, "max_tokens": 30}):
        status, whole = post(port, chat_request("lora_a", QUESTIONS[1], **fields))
        events = stream(port, chat_request("lora_a", QUESTIONS[1], **fields, stream_options={"include_usage": True}))
        assert status == 200 and events[-1] == "[DONE]"
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events[:-1])
        assert streamed_text(events) == whole["choices"][0]["message"]["content"]
        assert events[-3]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
        assert events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
        assert whole["usage"]["completion_tokens"] == 30


# ------------------------------------------------------------------------------------------------
# Bad requests, clients that leave, requests that join


def raw_request(port, head: bytes) -> tuple:
    """Send bytes as they are (for what http.client will not send) -> (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        response = http.client.HTTPResponse(s)
        response.begin()
        return response.status, json.loads(response.read())


LONG = "word " * 2100  # over 2,048 tokens: longer than the model's context
BAD_REQUESTS = [  # (body, status, param, what the message says)
    (b'{"model": "minimind", "messages": [', 400, None, "not valid JSON"),
    (b'[1, 2]', 400, None, "JSON object"),
    ({"model": "minimind"}, 400, "messages", "'messages' is required"),
    ({"model": "minimind", "messages": []}, 400, "messages", "non-empty list"),
    ({"model": "minimind", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", "robot"),
    ({"model": "minimind", "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]},
     400, "messages[1].role", "only the first"),
    ({"model": "minimind", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", "string"),
    (chat_request("gpt-4", "hi"), 404, "model", "this server has: minimind, lora_a, lora_b"),
    (chat_request("minimind", "hi", max_tokens=-1), 400, "max_tokens", "at least 1"),
    (chat_request("minimind", "hi", max_tokens=0), 400, "max_tokens", "at least 1"),
    (chat_request("minimind", "hi", max_tokens=10**12), 400, "max_tokens", "context is 2048 tokens"),
    (chat_request("minimind", "hi", max_tokens="5"), 400, "max_tokens", "integer"),
    (chat_request("minimind", LONG), 400, "messages", "context is 2048 tokens"),
    (chat_request("minimind", "hi", temperature=5), 400, "temperature", "[0, 2]"),
    (chat_request("minimind", "hi", top_p=0), 400, "top_p", "(0, 1]"),
    (chat_request("minimind", "hi", n=2), 400, "n", "must be 1"),
    (chat_request("minimind", "hi", tools=[{"type": "function"}]), 400, "tools", "unsupported parameter"),
    (chat_request("minimind", "hi", stream="yes"), 400, "stream", "true or false"),
]


def test_bad_requests_get_openai_errors_while_a_good_request_completes(server, references):
    """Guards against a bad request that crashes the server, hangs, gets an HTML page or a 200, or
    disturbs requests already running: each gets its status and an OpenAI error object naming the
    field, and a streamed answer running meanwhile completes unchanged."""
    server, port = server
    good, decoding = {}, threading.Event()
    body = chat_request("lora_a", QUESTIONS[0], temperature=0, max_tokens=LONG_TOKENS)
    thread = threading.Thread(target=lambda: good.update(events=stream(port, body, on_event=lambda e: decoding.set())))
    thread.start()
    assert decoding.wait(30)
    for body, status, param, message in BAD_REQUESTS:
        got, answer = post(port, body)
        assert got == status, (body, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["param"] == param
        assert message in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"
    assert raw_request(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")[0] == 413
    assert raw_request(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 411
    assert raw_request(port, b"PUT /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[0] == 405
    assert raw_request(port, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 501
    assert post(port, chat_request("minimind", "hi"), path="/v1/completions")[0] == 404
    assert thread.is_alive()  # all of that happened while the good request was decoding
    thread.join(timeout=60)
    assert streamed_text(good["events"]) == references["LONG"]
    status, answer = post(port, chat_request("minimind", QUESTIONS[3], temperature=0, max_tokens=24))
    assert status == 200 and answer["choices"][0]["message"]["content"] == references["minimind"][QUESTIONS[3]]


def test_models_are_listed_with_their_base(server):
    """Guards against a client (the openai library's models.list/retrieve) not finding the adapters."""
    _, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/models")
    listing = json.loads(connection.getresponse().read())
    assert [m["id"] for m in listing["data"]] == MODELS and listing["object"] == "list"
    assert [m["parent"] for m in listing["data"]] == [None, "minimind", "minimind"]
    connection.request("GET", "/v1/models/lora_b")  # the same connection: keep-alive works
    assert json.loads(connection.getresponse().read())["id"] == "lora_b"
    connection.request("GET", "/v1/models/nope")
    response = connection.getresponse()
    assert response.status == 404 and json.loads(response.read())["error"]["code"] == "model_not_found"
    connection.close()


def test_a_request_joins_the_running_batch_and_leaves_it_when_done(server, references):
    """Guards against static batching (a request waiting until the running batch has finished), a
    finished request holding its row until the others finish, and a row that moves into a freed
    place (its cache, its adapter) answering wrongly afterwards. A starts; B joins once A is
    decoding, C once B is; B finishes first and leaves, so C moves into B's row; all three answers
    are eval_model's."""
    server, port = server
    engine = server.service.engine
    before = dict(engine.stats)
    first_token = {"A": threading.Event(), "B": threading.Event()}
    done = []

    def run(name, model, question, max_tokens):
        def seen(event):
            if name in first_token and event != "[DONE]" and event["choices"][0]["delta"].get("content"):
                first_token[name].set()
        events = stream(port, chat_request(model, question, temperature=0, max_tokens=max_tokens), on_event=seen)
        done.append(name)
        return streamed_text(events)

    results = {}
    a = threading.Thread(target=lambda: results.update(A=run("A", "lora_a", QUESTIONS[0], LONG_TOKENS)))
    a.start()
    assert first_token["A"].wait(30)
    b = threading.Thread(target=lambda: results.update(B=run("B", "minimind", QUESTIONS[1], 24)))
    b.start()
    assert first_token["B"].wait(30)
    c = threading.Thread(target=lambda: results.update(C=run("C", "lora_b", QUESTIONS[2], 24)))
    c.start()
    for t in (a, b, c):
        t.join(timeout=120)
    assert done.index("B") < done.index("A") and done.index("C") < done.index("A")  # short ones did not wait for A
    assert engine.stats["joined_running"] - before.get("joined_running", 0) >= 2
    assert engine.stats["moved"] > before.get("moved", 0)
    assert results["B"] == references["minimind"][QUESTIONS[1]] and results["C"] == references["lora_b"][QUESTIONS[2]]
    assert results["A"] == references["LONG"]


def test_a_client_that_disconnects_is_dropped_and_the_others_go_on(server, references):
    """Guards against a client that hangs up mid-stream (or while waiting for a whole answer) keeping
    its row busy for its whole max_tokens, or taking the server or other requests down with it."""
    server, port = server
    engine = server.service.engine
    before = engine.stats["cancelled"]
    body = json.dumps(chat_request("lora_a", QUESTIONS[0], temperature=0, max_tokens=1900)).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    # A streamed answer: read a few events, then hang up.
    streamed = socket.create_connection(("127.0.0.1", port), timeout=30)
    streamed.sendall(head % (len(body) + 16) + body[:-1] + b', "stream": true}')
    received = b""
    while received.count(b"data: ") < 3:
        received += streamed.recv(4096)
    streamed.close()
    # A whole answer: hang up while it is being generated.
    whole = socket.create_connection(("127.0.0.1", port), timeout=30)
    whole.sendall(head % len(body) + body)
    time.sleep(0.05)
    whole.close()
    status, answer = post(port, chat_request("minimind", QUESTIONS[2], temperature=0, max_tokens=24))
    assert status == 200 and answer["choices"][0]["message"]["content"] == references["minimind"][QUESTIONS[2]]
    wait_until(lambda: engine.stats["cancelled"] >= before + 2 and engine.idle())


def test_a_cancelled_request_leaves_the_queue_without_waiting_for_a_row(out):
    """Guards against a request whose client left keeping its place in the queue (counted toward
    --max_waiting, so that others are turned away with 503) until a row frees up, which behind long
    answers can take minutes: it leaves at the next step, while the request ahead still runs."""
    loaded = load_checkpoint(out / "full_sft_32.pth")
    engine = Engine(loaded.model, loaded.tokenizer.eos_token_id, AdapterBank("minimind", {}), max_batch_size=1)
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=True)
    ahead, behind = Request(prompt, max_new_tokens=2048 - len(prompt)), Request(prompt, max_new_tokens=8)
    engine.start()
    try:
        engine.submit(ahead)
        assert ahead.events.get(timeout=30)[0] == "token"  # ahead holds the one row
        engine.submit(behind)
        behind.cancelled.set()
        wait_until(lambda: not engine.waiting)
        assert engine.running == [ahead] and engine.stats["cancelled"] == 1 and behind.events.empty()
    finally:
        ahead.cancelled.set()
        engine.stop()


def test_a_long_max_tokens_is_clamped_and_the_kv_cache_shrinks_back_after_it(server, monkeypatch):
    """Guards against one request with a large max_tokens growing the KV cache of every row to that
    length at once and keeping it so for good (about 1 GB more memory at MiniMind2's size, long after
    the request ended), and against a max_tokens that overruns the context failing the request instead
    of ending the answer at the context's end: the cache grows only as the row does, never past the
    model's context, and is back to its first size once the batch is empty."""
    server, port = server
    cache = server.service.engine.cache
    wait_until(lambda: cache.capacity == cache.smallest)
    capacities, reserve = [], cache.reserve
    monkeypatch.setattr(cache, "reserve", lambda positions: (reserve(positions), capacities.append(cache.capacity)))
    status, answer = post(port, chat_request("lora_a", QUESTIONS[0], temperature=0, max_tokens=2048))
    assert status == 200 and answer["choices"][0]["finish_reason"] == "length", answer
    assert answer["usage"]["total_tokens"] == 2048  # the prompt and the answer fill the context exactly
    assert capacities[0] == cache.smallest  # the prompt's prefill reserved room for the prompt, not for 2,048
    assert max(capacities) == 2048  # doubled as the row grew, up to the model's context and no further
    wait_until(lambda: cache.capacity == cache.smallest)


def test_a_half_closed_client_still_gets_its_whole_answer(server, references):
    """Guards against a client that shuts its sending side once its request is sent (shutdown(SHUT_WR),
    as `nc -N` does) being taken for one that left: its request was cancelled and it got no answer.
    Both a whole answer (probed with a "100 Continue", which HTTP/1.1 clients skip) and a streamed one
    (probed with an SSE comment) come back complete; each takes longer than the disconnect check."""
    _, port = server
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    for stream_it in (False, True):
        body = json.dumps(chat_request("lora_a", QUESTIONS[0], temperature=0, max_tokens=LONG_TOKENS, stream=stream_it)).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(head % len(body) + body)
            s.shutdown(socket.SHUT_WR)
            response = http.client.HTTPResponse(s)
            response.begin()  # skips any 100 Continue
            assert response.status == 200
            data = response.read().decode("utf-8")
        if stream_it:
            events = [json.loads(line[len("data: "):]) for line in data.split("\n")
                      if line.startswith("data: ") and line != "data: [DONE]"]
            assert streamed_text(events + ["[DONE]"]) == references["LONG"]
        else:
            assert json.loads(data)["choices"][0]["message"]["content"] == references["LONG"]


def test_client_state_tells_a_half_close_from_a_departure():
    """Guards against the disconnect check taking a half-closed client (FIN, still reading) for one that
    left, and missing one that did leave: after a FIN, recv reads end of file even once the peer has
    reset, so only the socket's pending error tells a closed client (reset by what we wrote) from a
    half-closed one."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for how in ("half-close", "close"):
            client = socket.create_connection(listener.getsockname())
            conn, _ = listener.accept()
            with conn:
                assert client_state(conn) == "here"
                client.shutdown(socket.SHUT_WR) if how == "half-close" else client.close()
                wait_until(lambda: client_state(conn) != "here")
                assert client_state(conn) == "shut"
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the probe
                if how == "close":
                    wait_until(lambda: client_state(conn) == "gone")
                else:
                    assert client.recv(100).startswith(b"HTTP/1.1 100") and client_state(conn) == "shut"
            client.close()


HIGH_FD = 1500


@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= HIGH_FD, reason="no file descriptors that high")
def test_client_state_watches_sockets_numbered_past_1024():
    """Guards against the disconnect check using select.select, which raises ValueError for a socket
    numbered 1024 or more: a busy server's later connections were all taken for departed clients
    and cancelled a quarter of a second after they started."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as client:
        conn, _ = listener.accept()
        os.dup2(conn.fileno(), HIGH_FD)
        conn.close()
        with socket.socket(fileno=HIGH_FD) as high:
            assert client_state(high) == "here"
            client.shutdown(socket.SHUT_WR)
            wait_until(lambda: client_state(high) == "shut")


def test_a_post_no_route_reads_leaves_the_keep_alive_connection_usable(server, references):
    """Guards against the body of a request answered without reading it (a POST to an unknown path, a
    GET with a body) staying in the socket and being parsed as the next request on the connection:
    the openai client's completions.create, then chat.completions.create, got a 501."""
    _, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models")):
        connection.request(method, path, body=json.dumps({"model": "minimind", "prompt": "hi"}).encode(),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status in (200, 404) and not response.will_close
        sock = connection.sock
        connection.request("POST", "/v1/chat/completions", body=json.dumps(chat_request("minimind", QUESTIONS[3], temperature=0,
                                                                                max_tokens=24)).encode())
        response = connection.getresponse()
        assert response.status == 200 and connection.sock is sock  # answered on the same connection
        assert json.loads(response.read())["choices"][0]["message"]["content"] == references["minimind"][QUESTIONS[3]]
    connection.close()


UNREADABLE = [  # (body, param, what the message says): valid JSON, or nearly, that is not a request we can read
    (b'{"model": "minimind", "messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages[0].content",
     "lone surrogate"),
    (b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}', "model", "lone surrogate"),
    (b'{"model": "minimind", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
     "messages[0].content[0].text", "lone surrogate"),
    (b'{"\\ud800": 1, "model": "minimind", "messages": [{"role": "user", "content": "hi"}]}', None, "lone surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested 100000 levels deep"),
    (b'{"model": "minimind", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", None, "nested"),
    (b'{"model": "minimind", "seed": ' + b"7" * 5000 + b', "messages": [{"role": "user", "content": "hi"}]}', None,
     "more than 4300 digits"),
]


@pytest.mark.parametrize("body, param, message", UNREADABLE, ids=lambda v: repr(v)[:40])
def test_a_lone_surrogate_or_deep_nesting_gets_a_400_not_a_dropped_connection(server, body, param, message):
    """Guards against valid JSON that is not text (a lone surrogate escaped as "\\ud800", which can be
    neither tokenized nor written into an error message) or that nests deeper than Python's json can
    recurse, or holds an integer Python will not convert, ending in a traceback and a connection
    closed without any answer: each gets a 400 with OpenAI's error object, naming the field."""
    _, port = server
    status, answer = post(port, body)
    assert status == 400 and answer["error"]["param"] == param and message in answer["error"]["message"], answer
    assert answer["error"]["type"] == "invalid_request_error"


def test_a_prompt_of_more_bytes_than_the_context_holds_is_refused_before_tokenizing(server, monkeypatch):
    """Guards against the tokenizer spending its time on a prompt that cannot fit the context whatever
    its tokens (a few such requests occupied the server for minutes): no token is longer than
    max_token_bytes, so more bytes than context * max_token_bytes is refused at once, with a 400."""
    server, port = server
    tokenizer = server.service.tokenizer
    most = server.service.context * tokenizer.max_token_bytes
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: pytest.fail("the prompt was tokenized"))
    status, answer = post(port, {"model": "minimind", "messages": [{"role": "system", "content": "a" * (most // 2)},
                                                                   {"role": "user", "content": "b" * (most // 2 + 1)}]})
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded", answer
    assert f"{most + 1} bytes" in answer["error"]["message"] and answer["error"]["param"] == "messages"


def test_a_client_that_leaves_is_not_logged_as_an_error_but_a_bug_is(server, capsys):
    """Guards against every client that leaves (a broken pipe, a reset connection) printing a traceback
    in the server's log, hundreds of which bury the real ones, and against silencing real bugs too."""
    server, _ = server
    for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "Connection reset by peer"),
                  RuntimeError("a real bug")):
        try:
            raise error
        except Exception:
            server.handle_error(None, ("127.0.0.1", 1))
    err = capsys.readouterr().err
    assert "RuntimeError: a real bug" in err and "Traceback" in err
    assert "BrokenPipeError" not in err and "ConnectionResetError" not in err


def test_merged_mode_serves_one_adapter_at_a_time_with_the_same_answers(out, references):
    """Guards against the merge-per-request baseline (bench_serve.py compares with it) mixing adapters
    in a batch, answering with the wrong adapter merged, or leaving an adapter inside the base
    weights after switching back: its answers are eval_model's too, and the base comes back bit for bit."""
    server, port = start_server(out, lora_mode="merged")
    try:
        engine = server.service.engine
        base = {k: v.clone() for k, v in engine.model.state_dict().items()}
        calls = [(m, q) for q in QUESTIONS[:2] for m in MODELS] + [("minimind", QUESTIONS[3])]
        results = in_threads([lambda m=m, q=q: post(port, chat_request(m, q, temperature=0, max_tokens=24)) for m, q in calls])
        for (m, q), (status, answer) in zip(calls, results):
            assert status == 200 and answer["choices"][0]["message"]["content"] == references[m][q], (m, q)
        assert engine.stats["mixed_steps"] == 0 and engine.stats["switches"] >= 2
        post(port, chat_request("minimind", "hi", max_tokens=1))  # the base again: no adapter merged
        assert all(torch.equal(v, base[k]) for k, v in engine.model.state_dict().items())
    finally:
        stop_server(server)


# ------------------------------------------------------------------------------------------------
# The command line


BAD_FLAGS = [  # (argv, what the one line says); --port 70000 and --lora_name ../x: tests/test_cli.py
    (["--lora_name", "minimind"], "that name is the base model's"),
    (["--lora_name", "lora_a", "lora_a"], "names lora_a more than once"),
    (["--max_batch_size", "0"], "--max_batch_size must be at least 1"),
    (["--dim", "32", "--lora_name", "lora_c"], "lora_c_32.pth not found"),
    (["--dim", "32", "--max_seq_len", "4096"], "--max_seq_len 4096 is more than the 2048 positions of"),
]


def test_bad_flags_are_one_line_user_errors(out):
    """Guards against a bad flag ending in a traceback, or being found only after the model loaded.
    (The processes run side by side: each spends its time importing torch.)"""
    procs = [run_script("--out_dir", out, "--port", "0", "--device", "cpu", *argv) for argv, _ in BAD_FLAGS]
    for proc, (argv, message) in zip(procs, BAD_FLAGS):
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (argv, err)
        assert lines[0].startswith("serve_openai_api.py: error: ")


def test_an_adapter_of_another_base_is_refused_at_start_unless_allowed(tmp_path):
    """Guards against the server wearing an adapter trained on other base weights (its A and B mean
    something only on those: the answers would be fluent nonsense) without a word, and against a
    server with no way to load one anyway: refused at start-up in one line (exit 2), naming the flag;
    served with --allow_other_base, as eval_model.py does."""
    tok = Tokenizer.load(TOKENIZER)
    save_model(sharp_model(1), tmp_path / "full_sft_32.pth", meta=checkpoint_meta("full_sft", TOKENIZER, tok))
    save_adapters(sharp_model(2), tmp_path / "lora", {"lora_other": ADAPTERS["lora_b"]})  # trained on another base
    flags = ["--out_dir", tmp_path, "--dim", "32", "--lora_name", "lora_other", "--port", "0", "--device", "cpu"]
    refused, allowed = run_script(*flags), run_script(*flags, "--allow_other_base")
    try:
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert "lora_other_32.pth" in err and "--allow_other_base" in err
        line = allowed.stdout.readline()
        assert line.startswith("serving minimind, lora_other at http://127.0.0.1:"), (line, allowed.stderr.read())
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, answer = post(port, chat_request("lora_other", "hi", max_tokens=2))
        assert status == 200 and answer["model"] == "lora_other"
    finally:
        allowed.kill()
        allowed.communicate()


def flag_help(script: str) -> dict:
    """{flag: the lines `python SCRIPT --help` prints for it (name, choices, help, default), joined}."""
    text = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"}).stdout
    blocks, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):  # a flag's first line; its help goes on on deeper-indented lines
            current = line.split()[0].rstrip(",")
            blocks[current] = []
        if current is not None:
            blocks[current].append(line.strip())
    return {flag: " ".join(lines) for flag, lines in blocks.items()}


def test_base_flags_are_eval_models():
    """Guards against the server and eval_model.py reading the same base checkpoint flags differently:
    the same names, choices, defaults and help, as each script's --help prints them."""
    ours, theirs = flag_help("serve_openai_api.py"), flag_help("eval_model.py")
    for flag in ("--out_dir", "--model_mode", "--ckpt", "--tokenizer", "--dim", "--n_layers", "--n_heads", "--n_kv_heads",
                 "--use_moe", "--device", "--dtype", "--allow_other_base"):
        assert ours[flag] == theirs[flag], flag


def test_ctrl_c_stops_the_server_cleanly(out):
    """Guards against Ctrl-C leaving a traceback, a hung process or the port still taken."""
    proc = run_script("--out_dir", out, "--dim", "32", "--port", "0", "--device", "cpu")
    try:
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert post(port, chat_request("minimind", "hi", max_tokens=2))[0] == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == errors.INTERRUPTED_EXIT and "Traceback" not in err, err
    assert err.strip().endswith("serve_openai_api.py: interrupted")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


# ------------------------------------------------------------------------------------------------
# Other models: bfloat16 weights, a mixture of experts


def test_a_bfloat16_server_answers_as_eval_model_does_in_bfloat16(out):
    """Guards against bfloat16 weights served beside a float32 KV cache or adapter bank (which fails or
    silently upcasts), and against a bfloat16 engine whose per-row forward drifts from the model's own:
    the base model's greedy answers equal eval_model.py's with --dtype bfloat16, token for token; an
    adapter's row, whose update the engine computes with alpha/rank folded into B before rounding to
    bfloat16 (LoRALinear scales after), gives the logits of the model with that adapter loaded within
    bfloat16's rounding (2% of their range)."""
    server, port = start_server(out, dtype=torch.bfloat16)
    try:
        engine = server.service.engine
        assert engine.model.output.weight.dtype == engine.cache.keys[0].dtype == torch.bfloat16
        assert {A.dtype for A in engine.bank.A.values()} == {torch.bfloat16}
        loaded = load_checkpoint(out / "full_sft_32.pth", dtype=torch.bfloat16)
        want = evaluation.generate_answers(loaded.model, loaded.tokenizer, QUESTIONS, 24, 1, 2048)
        for question, answer in zip(QUESTIONS, want):
            status, got = post(port, chat_request("minimind", question, temperature=0, max_tokens=24))
            assert status == 200 and got["choices"][0]["message"]["content"] == answer, question
    finally:
        stop_server(server)
    reference, tok = loaded.model, loaded.tokenizer
    model = load_checkpoint(out / "full_sft_32.pth", dtype=torch.bfloat16).model
    bank = AdapterBank("minimind", {name: read_adapter(model, out / "lora" / f"{name}_32.pth") for name in ADAPTERS},
                       dtype=torch.bfloat16)
    layers, rows = RowLoRALayers(model, bank), RowAdapters(bank, max_rows=3)
    for row, name in enumerate(MODELS):
        rows.wear(row, bank.index(name))
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=True)
    cache = SlotKVCache(model.config, 3, len(prompt), dtype=torch.bfloat16)
    with layers.wearing(rows.rows(0, 3)):
        logits = forward_rows(model, torch.tensor([prompt] * 3), cache, slots=torch.arange(3),
                              last=torch.tensor([len(prompt) - 1] * 3))
    for row, name in enumerate(MODELS):
        if name != "minimind":
            load_lora(reference, out / "lora" / f"{name}_32.pth")
        with torch.inference_mode():
            alone = reference(torch.tensor([prompt])).logits[0, -1].float()
        remove_lora(reference)
        torch.testing.assert_close(logits[row], alone, rtol=0, atol=0.02 * alone.abs().max().item())


MOE_ADAPTERS = {  # on a mixture of experts: one that leaves the experts alone, one inside them
    "lora_attn": (8, ["wq", "wk", "wv", "wo", "output"]),
    "lora_ffn": (4, ["w1", "w2", "w3"]),  # every expert's and the shared expert's
}


@pytest.fixture(scope="module")
def moe_out(tmp_path_factory):
    """out/full_sft_32_moe.pth (4 routed experts, 2 per token, a shared one) and out/lora/NAME_32_moe.pth."""
    out = tmp_path_factory.mktemp("moe")
    model = sharp_model(3, use_moe=True)
    save_model(model, out / "full_sft_32_moe.pth", meta=checkpoint_meta("full_sft", TOKENIZER, Tokenizer.load(TOKENIZER)))
    save_adapters(model, out / "lora", MOE_ADAPTERS, suffix="_moe")
    return out


def test_a_mixture_of_experts_model_is_served_with_eval_models_answers(moe_out):
    """Guards against an engine that runs a forward of its own beside the model's (it had no mixture of
    experts, so MoE checkpoints were refused) or that routes a row's tokens differently in a shared
    batch: an MoE model's greedy answers, for the base and an adapter outside the experts sharing
    batches, equal eval_model.py's (evaluation.generate_answers). An adapter inside the experts cannot
    be worn per row (an expert sees every row's routed tokens at once): refused at start-up, naming
    --lora_mode merged, where it is served with eval_model.py's answers too."""
    def served(adapters, lora_mode):
        server, port = start_server(moe_out, adapters, lora_mode, ckpt="full_sft_32_moe.pth", suffix="_moe")
        try:
            calls = [(m, q) for q in QUESTIONS for m in ["minimind", *adapters]]
            results = in_threads([lambda m=m, q=q: post(port, chat_request(m, q, temperature=0, max_tokens=24)) for m, q in calls])
            return {call: answer["choices"][0]["message"]["content"] for call, (_, answer) in zip(calls, results)}, \
                dict(server.service.engine.stats)
        finally:
            stop_server(server)

    def want(name):
        return greedy_answers(moe_out, name, QUESTIONS, 24, ckpt="full_sft_32_moe.pth", suffix="_moe")

    answers, stats = served(["lora_attn"], "batched")
    assert stats["mixed_steps"] > 0  # the base and the adapter shared decode steps
    for name in ("minimind", "lora_attn"):
        assert [answers[(name, q)] for q in QUESTIONS] == want(name), name
    assert answers[("minimind", QUESTIONS[0])] != answers[("lora_attn", QUESTIONS[0])]

    with pytest.raises(errors.UserError, match=r"experts.0.w1 \(adapted by lora_ffn\) is inside a "
                                               "mixture of experts.*--lora_mode merged"):
        stop_server(start_server(moe_out, ["lora_ffn"], "batched", ckpt="full_sft_32_moe.pth", suffix="_moe")[0])
    answers, _ = served(["lora_ffn"], "merged")
    assert [answers[("lora_ffn", q)] for q in QUESTIONS] == want("lora_ffn")
