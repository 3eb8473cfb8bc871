"""Continuous batching: many requests decoded together, each joining and leaving the batch on its own.

model.generate() decodes a fixed batch: every row starts together and the batch runs until its
longest row is done, so a request that arrives meanwhile waits for the whole batch. A server wants
the opposite (Orca's "iteration-level scheduling", vLLM's continuous batching): between two decode
steps, requests that have arrived JOIN the running batch, and a request that has finished LEAVES it
at once, its place taken by the next one.

    step:       1    2    3    4    5    6    7    8
    request a   P    t    t    t    t    .              P: prefill (the prompt in one pass)
    request b        P    t    t    t    t    t    .     t: one decode step, shared by every running row
    request c                  P    t    t    .         .: its last token; it leaves the batch
    batch rows  1    2    2    3    3    3    2    1

Each request has a KV cache of its own: one row ("slot") of buffers shared by the batch,
(max_rows, K, capacity, D) per layer, with positions [0, length) of the row filled. Rows have
different lengths, so a decode step writes each row's new key at that row's own position and
masks each row's attention to its own positions; all rows still attend in ONE call, reading the
buffers in place. Rows are kept contiguous: when row i leaves, the last row moves into slot i.
The capacity follows the longest running row, as a dynamic array does: doubled when a row needs
more, halved when the rows need a quarter of it, so one long request does not keep every row long.

Each row also wears its own LoRA adapter (serving/multi_lora.py), so requests for different adapters
share the batch. The alternative, lora_mode="merged", folds one adapter into the base weights and
serves only its requests until the batch empties, then switches: S-LoRA's baseline. The batch runs
through the model's own blocks (forward_rows), so a mixture-of-experts model is served as a dense one
is (only its experts cannot wear per-row adapters: serving/multi_lora.RowLoRALayers says why).

Read top to bottom:
    SlotKVCache      one KV cache per request, as rows of shared buffers
    PromptWrites,    one step's view of those rows in model.KVCache's interface (write(layer, k, v)):
    TokenWrites        where prefill and decode put each row's keys, and which of them each row sees
    forward_rows     the model's own blocks over the rows, each row with its own positions and adapter
    Request          what one request asks for, and the queue its tokens come back on
    Engine           the scheduler thread: admit -> prefill -> decode step -> emit tokens -> leave
"""
import collections
import contextlib
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Optional

import torch

from model.LMConfig import LMConfig
from model.model import sample_next_token
from serving.multi_lora import AdapterBank, RowAdapters, RowLoRALayers


# ----------------------------------------------------------------------------------------------
# The KV cache: one per request, each a row of shared buffers.


class SlotKVCache:
    """Keys and values of up to `max_rows` requests: per layer a (max_rows, K, capacity, D) buffer.

    Row ("slot") i holds one request's cache, positions [0, length_i). model.KVCache has one length
    for the whole batch; here every row has its own, so writes say where, row by row.
    """

    def __init__(self, config: LMConfig, max_rows: int, capacity: int, device=None, dtype=torch.float32):
        shape = (max_rows, config.n_kv_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.smallest = capacity  # trim() never goes below the capacity it started with
        self.largest = max(capacity, config.max_seq_len)  # no row holds more positions than the model has

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, positions: int) -> None:
        """Make room for `positions` per row: at least double the capacity (up to the model's
        max_seq_len), copying what is there; doubling keeps the copying linear in the longest row."""
        if positions > self.capacity:
            self._resize(max(positions, min(2 * self.capacity, self.largest)))

    def trim(self, positions: int) -> None:
        """Give memory back once the rows need at most a quarter of the capacity: halve it (or more),
        keeping the first `positions` of every row. Every row has the same capacity, so one long
        request enlarges all of them; without this they would stay that large for good. A quarter,
        not a half, so that a row growing and shrinking around one size does not copy at every step."""
        if 4 * positions <= self.capacity and self.capacity > self.smallest:
            self._resize(max(self.smallest, 2 * positions))

    def _resize(self, capacity: int) -> None:
        def resized(t):  # (max_rows, K, old capacity, D) -> (max_rows, K, capacity, D), positions kept
            kept = min(capacity, t.shape[2])
            new = t.new_zeros(t.shape[0], t.shape[1], capacity, t.shape[3])
            new[:, :, :kept] = t[:, :, :kept]
            return new

        self.keys = [resized(t) for t in self.keys]
        self.values = [resized(t) for t in self.values]

    def move(self, src: int, dst: int, length: int) -> None:
        """Row dst takes over row src's cache (its first `length` positions)."""
        for t in self.keys + self.values:
            t[dst, :, :length] = t[src, :, :length]


# ----------------------------------------------------------------------------------------------
# One step's view of the slot cache. Attention.forward (model/model.py) hands each layer's new keys
# and values to `cache.write(layer, k, v)` and attends over what comes back, under the mask it was
# given: model.KVCache appends them for the whole batch at one length. These two say, row by row,
# where they go and what each row may see, so the model's own blocks run the engine's batch.


class PromptWrites:
    """Prefill: m prompts, right-padded to P tokens, written to positions [0, P) of rows `slots` (m,).

    The prompts attend over their own keys only, so write returns them as they came: as many keys as
    queries and no mask, which Attention.forward reads as plain causal attention. Right padding needs
    no mask: under causal attention no real token sees a later one (the padding's own keys are written
    too, past the row's length, where nothing reads them before they are overwritten).
    """

    mask = None

    def __init__(self, cache: SlotKVCache, slots: torch.Tensor, P: int):
        self.cache, self.slots = cache, slots
        self.positions = torch.arange(P, device=slots.device)[None]  # (1, P): every prompt starts at 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """k, v (m, K, P, D) -> stored in the rows' slots; returned unchanged, for attention."""
        P = k.shape[2]
        self.cache.keys[layer][self.slots, :, :P] = k
        self.cache.values[layer][self.slots, :, :P] = v
        return k, v


class TokenWrites:
    """Decode: one new token for each of rows 0..n-1; lengths (n,): how many positions each row holds,
    i.e. where its new key goes (and its RoPE position).

    Rows attend in ONE call over positions [0, S) of their slots, S = the longest row's length + 1,
    read in place; the mask (n, 1, 1, S) lets row i see positions 0..lengths[i] only, its own:

        lengths [2, 0]  ->  S = 3, mask [[1, 1, 1],
                                         [1, 0, 0]]
    """

    def __init__(self, cache: SlotKVCache, lengths: torch.Tensor):
        self.cache, self.lengths = cache, lengths
        self.positions = lengths[:, None]  # (n, 1): each row's new token sits at its own position
        self.S = int(lengths.max()) + 1  # keys to read: the longest row's cache plus its new token
        key_pos = torch.arange(self.S, device=lengths.device)
        self.mask = (key_pos[None, :] <= lengths[:, None])[:, None, None, :]  # (n, 1, 1, S)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """k, v (n, K, 1, D): row i's at position lengths[i] of row i -> views (n, K, S, D) of rows 0..n-1."""
        n = k.shape[0]
        rows = torch.arange(n, device=k.device)
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[rows, :, self.lengths] = k[:, :, 0]  # indexed (rows, :, lengths) -> (n, K, D)
        values[rows, :, self.lengths] = v[:, :, 0]
        return keys[:n, :, : self.S], values[:n, :, : self.S]  # no copy


# ----------------------------------------------------------------------------------------------
# The forward pass over the batch's rows: the model's own modules (embedding, every MiniMindBlock,
# norm, output), with one step's view of the slot cache, each row's RoPE positions, and its mask.
# Each row's adapter is added by the layers serving/multi_lora.RowLoRALayers put in place of the
# adapted Linears. tests/test_serve.py checks that it gives, row by row, the logits the model with
# that row's adapter loaded (model_lora.load_lora) gives alone.


@torch.inference_mode()
def forward_rows(model, ids, cache: SlotKVCache, *, slots=None, last=None, lengths=None):
    """The next-token logits (n, V) of n requests.

    Two kinds of call:
    prefill  ids (n, P): whole prompts, right-padded; written into rows `slots` (n,) at 0..P-1;
             last (n,): index of each prompt's last real token, whose logits are returned.
    decode   ids (n, 1): one new token per row for rows 0..n-1; lengths (n,): how many positions
             each row's cache holds, i.e. where this token goes.
    """
    n, T = ids.shape
    step = TokenWrites(cache, lengths) if lengths is not None else PromptWrites(cache, slots, T)
    rotations = torch.view_as_complex(model.rope[step.positions].float()).unsqueeze(2)  # (n|1, T, 1, D/2)
    h = model.tok_embeddings(ids)  # (n, T, C)
    for block in model.layers:
        h, _ = block(h, rotations, step.mask, step)  # _: an MoE layer's load-balancing loss, for training only
    if lengths is None:
        h = h[torch.arange(n, device=ids.device), last][:, None]  # (n, 1, C): only the last prompt token
    logits = model.output(model.norm(h))  # (n, 1, V)
    return logits[:, 0].float()  # (n, V)


# ----------------------------------------------------------------------------------------------
# A request, as the engine sees it.


@dataclass
class Request:
    """One chat completion to generate; the engine sends its tokens back on `events`.

    events receives ("token", id) for each generated token (the closing </s> included), then one
    ("end", "stop") when </s> came, ("end", "length") when max_new_tokens ran out, ("error", message)
    when generating failed, or ("stopped", message) when the engine was stopped first.
    """

    prompt: list  # token ids, the chat template already applied
    adapter: int = 0  # index into the AdapterBank's names; 0 = the base model
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: Optional[int] = None  # the same seed gives the same sampled answer
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by whoever gave up on it
    # the engine's bookkeeping
    row: int = -1  # its row of the batch (and slot of the cache) while running
    length: int = 0  # positions in its KV cache
    generated: int = 0  # tokens produced so far
    last_token: int = 0  # the newest token: the next decode step's input
    generator: Optional[torch.Generator] = None


class EngineFull(Exception):
    """The waiting queue is full: the caller should answer "try again later"."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no more requests."""


# ----------------------------------------------------------------------------------------------
# The engine: one thread that owns the model, and runs the batch step after step.


class Engine:
    """Decodes every submitted Request in shared batches on its own thread.

        engine = Engine(model, eos_token_id=2, bank=AdapterBank("minimind", {...}))
        engine.start()
        request = Request(prompt=ids, adapter=bank.index("lora_medical"), max_new_tokens=64)
        engine.submit(request)
        while (event := request.events.get())[0] == "token": ...
        engine.stop()

    The engine owns the model it is given, which it changes according to lora_mode:
    lora_mode "batched": every row wears its own adapter; any mix shares a batch (RowLoRALayers
                         take the adapted layers' places in the model).
    lora_mode "merged":  the adapter of the oldest waiting request is merged into the weights and
                         only requests for it join, until the batch empties; then the next one
                         (the alternative S-LoRA compares against; see _admit).
    max_batch_size: rows decoded together (1 = one request at a time); max_waiting: queued beyond
    those before submit refuses with EngineFull.
    """

    def __init__(self, model, eos_token_id: int, bank: AdapterBank, lora_mode: str = "batched",
                 max_batch_size: int = 32, max_waiting: int = 256):
        if lora_mode not in ("batched", "merged"):
            raise ValueError(f"lora_mode must be 'batched' or 'merged', got {lora_mode!r}")
        self.model, self.eos, self.bank, self.lora_mode = model, eos_token_id, bank, lora_mode
        self.max_batch_size, self.max_waiting = max_batch_size, max_waiting
        weight = model.output.weight
        self.device = weight.device
        self.cache = SlotKVCache(model.config, max_batch_size, 64, weight.device, weight.dtype)
        model.eval()  # the engine runs the model's blocks: no dropout
        if lora_mode == "batched":  # every adapted layer of the model adds its rows' adapters from now on
            self.row_adapters, self.row_layers = RowAdapters(bank, max_batch_size), RowLoRALayers(model, bank)
        else:
            self.row_adapters = self.row_layers = None
        self.merged, self.saved_base = 0, None  # merged mode: the adapter now in the weights, the base's copy
        self.running: list[Request] = []  # row i is running[i]; only the engine thread touches it
        self.waiting: collections.deque[Request] = collections.deque()  # guarded by self.lock
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        # What happened so far (GET /stats): the benchmark reads it, tests check it. Every key exists
        # from the start, so another thread copying the dict never sees it change size.
        self.stats = collections.Counter(dict.fromkeys([
            "steps",           # decode steps
            "rows_decoded",    # rows summed over the decode steps: / steps = the mean batch
            "largest_batch",
            "mixed_steps",     # decode steps whose rows wore two or more different adapters (base included)
            "joined_running",  # requests that joined while others were decoding
            "finished",        # requests that ended with </s> or max_new_tokens
            "cancelled",       # requests dropped because their client went away
            "moved",           # rows moved into a freed row
            "switches",        # merged mode: adapters merged into / taken out of the weights
        ], 0))

    # -- the caller's side ------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, request: Request) -> None:
        """Queue a request; it joins the batch at the next step with a free row (and, merged, its adapter)."""
        if not 0 <= request.adapter < len(self.bank.names):
            raise ValueError(f"adapter index {request.adapter} is not one of the bank's {len(self.bank.names)}")
        if not request.prompt or request.max_new_tokens < 1:
            raise ValueError("a request needs a prompt of at least one token and max_new_tokens >= 1")
        if len(request.prompt) + request.max_new_tokens > self.model.config.max_seq_len:
            raise ValueError(f"prompt ({len(request.prompt)}) + max_new_tokens ({request.max_new_tokens}) exceed "
                             f"max_seq_len={self.model.config.max_seq_len}")
        with self.lock:
            if self.stopping:
                raise EngineStopped("the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise EngineFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(request)
            self.wakeup.notify()

    def stop(self) -> None:
        """Finish: every queued or running request gets ("stopped", ...) and the thread ends."""
        with self.lock:
            self.stopping = True
            self.wakeup.notify()
        if self.thread.is_alive():
            self.thread.join()

    def idle(self) -> bool:
        """True when nothing is running or waiting (tests wait for this)."""
        with self.lock:
            return not self.waiting and not self.running

    # -- the engine thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not (self.waiting or self.running or self.stopping):
                    self.wakeup.wait()
                if self.stopping:
                    break
            joining = []
            try:
                self._drop_cancelled()
                joining = self._admit()
                if joining:
                    self._prefill(joining)
                if self.running:
                    self._decode_step()
            except Exception:  # a bug or out of memory: fail the requests involved, keep serving
                traceback.print_exc()
                for request in {id(r): r for r in self.running + joining}.values():
                    request.events.put(("error", "the engine failed while generating; see the server's log"))
                self.running = []
                self.cache.trim(0)
                self._switch_merged(0)
        with self.lock:
            abandoned = list(self.waiting) + self.running
            self.waiting.clear()
        for request in abandoned:
            request.events.put(("stopped", "the server is shutting down"))
        self.running = []
        self._switch_merged(0)

    def _admit(self) -> list:
        """Take waiting requests into free rows, oldest first.

        Merged mode takes only requests for the merged adapter. When the batch is empty it merges the
        adapter of the oldest waiting request and takes every waiting request for it (a batch as large
        as the queue allows); while they decode, a newcomer joins only if nobody older is waiting for
        another adapter, so requests for that one are never overtaken for long."""
        joining, skipped = [], []
        with self.lock:
            batch_was_empty = not self.running
            while self.waiting and len(self.running) + len(joining) < self.max_batch_size:
                request = self.waiting.popleft()
                if request.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    continue
                if self.lora_mode == "merged" and request.adapter != self.merged:
                    if batch_was_empty and not joining and not skipped:
                        self._switch_merged(request.adapter)
                    elif batch_was_empty:
                        skipped.append(request)  # waits for its adapter's turn, keeping its place
                        continue
                    else:
                        skipped.append(request)
                        break
                joining.append(request)
            self.waiting.extendleft(reversed(skipped))
        if joining and self.running:
            self.stats["joined_running"] += len(joining)
        return joining

    def _switch_merged(self, j: int) -> None:
        """Merged mode: put back the base weights, then merge adapter j (0: none) into them."""
        if self.lora_mode != "merged" or j == self.merged:
            return
        if self.saved_base is not None:
            self.bank.restore_base(self.model, self.saved_base)
            self.saved_base = None
        if j:
            self.saved_base = self.bank.merge_into(self.model, j)
        self.merged = j
        self.stats["switches"] += 1

    def _wearing(self, start: int, stop: int):
        """For the forward pass of rows [start, stop): their adapters on the model's adapted layers;
        merged mode has the one adapter in the weights already."""
        if self.row_layers is None:
            return contextlib.nullcontext()
        return self.row_layers.wearing(self.row_adapters.rows(start, stop))

    def _prefill(self, joining: list) -> None:
        """Run the new requests' prompts (together, right-padded) into free rows and emit their first token."""
        first = len(self.running)
        for row, request in enumerate(joining, start=first):
            request.row, request.length = row, len(request.prompt)
            if self.row_adapters is not None:
                self.row_adapters.wear(row, request.adapter)
            generator = torch.Generator(device=self.device)
            if request.seed is None:
                generator.seed()  # a fresh random state
            else:
                generator.manual_seed(request.seed)
            request.generator = generator
        width = max(len(r.prompt) for r in joining)
        self.cache.reserve(width)  # room for the prompts; decode steps make room as rows grow
        ids = torch.tensor([r.prompt + [0] * (width - len(r.prompt)) for r in joining], device=self.device)  # (m, P)
        last = torch.tensor([len(r.prompt) - 1 for r in joining], device=self.device)
        slots = torch.arange(first, first + len(joining), device=self.device)
        with self._wearing(first, first + len(joining)):
            logits = forward_rows(self.model, ids, self.cache, slots=slots, last=last)  # (m, V)
        self.running.extend(joining)
        self._emit(joining, logits)

    def _decode_step(self) -> None:
        """One new token for every running row, in one forward pass."""
        n = len(self.running)
        ids = torch.tensor([[r.last_token] for r in self.running], device=self.device)  # (n, 1)
        lengths = torch.tensor([r.length for r in self.running], device=self.device)  # (n,)
        self.cache.reserve(max(r.length for r in self.running) + 1)  # the longest row's new token goes at its length
        with self._wearing(0, n):
            logits = forward_rows(self.model, ids, self.cache, lengths=lengths)  # (n, V)
        for request in self.running:
            request.length += 1
        self.stats["steps"] += 1
        self.stats["rows_decoded"] += n
        self.stats["largest_batch"] = max(self.stats["largest_batch"], n)
        if len({r.adapter for r in self.running}) > 1:
            self.stats["mixed_steps"] += 1
        self._emit(list(self.running), logits)

    def _emit(self, requests: list, logits: torch.Tensor) -> None:
        """Pick each row's next token (greedy rows together, sampled rows with their own generator),
        send it, and let finished rows leave the batch."""
        tokens = logits.argmax(dim=-1)  # (n,): greedy, what temperature 0 asks for
        for i, r in enumerate(requests):
            if r.temperature > 0:
                tokens[i] = sample_next_token(logits[i : i + 1], r.temperature, r.top_p, 0, 1.0, None, r.generator)[0]
        leaving = []
        for r, token in zip(requests, tokens.tolist()):
            r.last_token = token
            r.generated += 1
            r.events.put(("token", token))
            if token == self.eos:
                r.events.put(("end", "stop"))
            elif r.generated >= r.max_new_tokens:
                r.events.put(("end", "length"))
            else:
                continue
            leaving.append(r)
        self.stats["finished"] += len(leaving)
        self._leave(leaving)

    def _drop_cancelled(self) -> None:
        """Requests whose client went away leave before the next step spends work on them: running
        ones free their row, waiting ones their place in the queue (which counts toward max_waiting)."""
        with self.lock:
            waiting = len(self.waiting)
            self.waiting = collections.deque(r for r in self.waiting if not r.cancelled.is_set())
            self.stats["cancelled"] += waiting - len(self.waiting)
        gone = [r for r in self.running if r.cancelled.is_set()]
        self.stats["cancelled"] += len(gone)
        self._leave(gone)

    def _leave(self, leaving: list) -> None:
        """Free the rows of `leaving`: the last row moves into each freed row, so rows stay 0..n-1.
        Highest rows first, so the row that moves is never one that is itself leaving."""
        for request in sorted(leaving, key=lambda r: r.row, reverse=True):
            last = len(self.running) - 1
            if request.row != last:
                mover = self.running[last]
                self.cache.move(last, request.row, mover.length)
                if self.row_adapters is not None:
                    self.row_adapters.move(last, request.row)
                self.running[request.row], mover.row = mover, request.row
                self.stats["moved"] += 1
            self.running.pop()
            request.row = -1
        self.cache.trim(max((r.length for r in self.running), default=0) + 1)
