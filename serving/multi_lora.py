"""Many LoRA adapters on one base model in ONE forward pass: every row of a batch wears its own adapter.

model_lora.py puts one adapter on the model at a time: each adapted Linear computes W x + scale·B A x
with THE adapter's A and B. A server answering several adapters at once cannot work that way: in one
batch row 0 asks lora_medical, row 1 lora_identity, row 2 the bare base. W is the same for every
row, so W x stays one matrix product for the whole batch; only the small update differs from row to
row. The idea of Punica (its BGMV kernel) and S-LoRA: give every row its own A and B, and compute
the update of all rows at once with batched matrix products (torch.bmm):

    x (n, T, in) ──── W (out, in), shared ────────────────────────────────────────►  W x  (n, T, out)
          │                                                                             +
          └─ bmm: x @ down (n, in, r) ─► (n, T, r) ─ bmm: @ up (n, r, out) ─►  B_i A_i x_i, row by row

    row:       0              1               2            3
    wears:     lora_medical   lora_identity   (base)       lora_medical
    down:      A_medᵀ         A_idᵀ           zeros        A_medᵀ        <- copied in once, when the row's
    up:        (s·B_med)ᵀ     (s·B_id)ᵀ       zeros        (s·B_med)ᵀ       request joins the batch

"No adapter" is an adapter whose A and B are zero: its update is exactly 0, so base rows need no
special case. The extra work per adapted layer is two thin bmm's, rank r wide, beside the full W x.

Read top to bottom:
    read_adapter     an adapter file -> each layer's (A, B, scale), through model_lora.load_lora
    AdapterBank      every served adapter's A and B, stacked per layer (index 0 = no adapter);
                     also merge_into / restore_base, the merge-per-request alternative
    RowAdapters      the A and B each row of the running batch wears, kept in the row's own slot
                     (transposed: x @ down @ up reads them in memory order, 2-4x faster than strided)
    RowLoRALinear    an nn.Linear computing W x + B_i A_i x_i for every row i
    RowLoRAEmbedding the tied embedding: E[ids] + B_i[ids] A_i for every row i (see LoRAEmbedding)
    RowLoRALayers    puts those in place of the adapted layers, and hands them one step's adapters

The model keeps its own forward: serving/engine.py runs its blocks, and the layers put in place here
add each row's update, as model_lora.LoRALinear adds one adapter's.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from model.model_lora import LoRALinear, load_lora, remove_lora
from model.model_moe import MoEFeedForward
from plumbing.errors import UserError
from speed.matvec import linear


# ----------------------------------------------------------------------------------------------
# Reading adapters: through model_lora's one loader, which checks that each file fits the model.


def read_adapter(model: nn.Module, path, allow_other_base: bool = False) -> dict:
    """{layer name: (A (r, in), B (out, r), scale)} of the adapter in `path`; the model is left as it was.

    load_lora puts the adapter on the model (refusing, with a CheckpointError, a file that does not
    fit it, or that was trained on another base unless allow_other_base); we copy out each LoRALinear's A, B and alpha/rank, then remove_lora gives back the
    bare base, bit for bit. The tied embedding has no entry of its own: it reads "output"'s A and B.

    e.g. {"layers.0.attention.wq": (A (16, 128), B (128, 16), 1.0), ..., "output": (A (16, 128), B (2048, 16), 1.0)}
    """
    load_lora(model, path, allow_other_base=allow_other_base)
    try:
        return {name: (m.lora.A.weight.detach().clone(), m.lora.B.weight.detach().clone(), m.scale)
                for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    finally:
        remove_lora(model)


# ----------------------------------------------------------------------------------------------
# The bank: all adapters' matrices, stacked so that "adapter j" is an index into a tensor.


class AdapterBank:
    """Every served adapter's A and B, one stack per adapted layer; index 0 is "no adapter".

        bank = AdapterBank("minimind", {"lora_identity": read_adapter(...), "lora_medical": read_adapter(...)})
        bank.names                          -> ['minimind', 'lora_identity', 'lora_medical']
        bank.A["layers.0.attention.wq"]     -> (3, r, in)   A of each; zeros where one does not adapt the layer
        bank.B["layers.0.attention.wq"]     -> (3, out, r)  scale·B of each: alpha/rank folded in once

    Adapters of different ranks are padded with zeros to the largest rank r: an extra zero row of A
    gives a zero entry of A x, which meets a zero column of B, so the padding adds exactly nothing.
    """

    def __init__(self, base_name: str, adapters: dict, device=None, dtype=torch.float32):
        self.names = [base_name, *adapters]
        self.A, self.B = {}, {}
        self.adapted_by = {}  # {layer: names of the adapters that adapt it}
        layers = sorted({layer for adapter in adapters.values() for layer in adapter})
        for layer in layers:
            present = [(j, adapter[layer]) for j, adapter in enumerate(adapters.values(), start=1) if layer in adapter]
            self.adapted_by[layer] = [self.names[j] for j, _ in present]
            rank = max(A.shape[0] for _, (A, _, _) in present)
            in_features, out_features = present[0][1][0].shape[1], present[0][1][1].shape[0]
            A_stack = torch.zeros(len(self.names), rank, in_features, device=device, dtype=dtype)
            B_stack = torch.zeros(len(self.names), out_features, rank, device=device, dtype=dtype)
            for j, (A, B, scale) in present:
                A_stack[j, : A.shape[0]] = A
                B_stack[j, :, : B.shape[1]] = scale * B.to(torch.float32)  # scale in float32, then to dtype
            self.A[layer], self.B[layer] = A_stack, B_stack

    def index(self, name: str) -> int:
        """bank.index("lora_medical") -> 2: the row of every stack that holds this adapter."""
        return self.names.index(name)

    # The alternative S-LoRA compares against: fold ONE adapter into the base weights, answer with a
    # plain model, put the base back. Exact per batch, but a batch can then hold one adapter only.

    @torch.no_grad()
    def merge_into(self, model: nn.Module, j: int) -> dict:
        """W <- W + scale·B_j A_j in every adapted layer of `model` -> the base weights, for restore_base.

        The tied output matrix is also the embedding table, so "output" updates both uses at once,
        as merge_lora does. The copies make restore_base exact, where subtracting ΔW again would
        leave rounding behind after every switch."""
        saved = {}
        for layer, A in self.A.items():
            weight = model.get_submodule(layer).weight
            saved[layer] = weight.detach().clone()
            weight.add_(self.B[layer][j] @ A[j])  # (out, r) @ (r, in) -> (out, in)
        return saved

    @torch.no_grad()
    def restore_base(self, model: nn.Module, saved: dict) -> None:
        """Put back the base weights merge_into saved: bit for bit the model before the merge."""
        for layer, weight in saved.items():
            model.get_submodule(layer).weight.copy_(weight)


# ----------------------------------------------------------------------------------------------
# The rows of the running batch, each with its own adapter.


class RowAdapters:
    """The A and B that each row of the running batch wears, in buffers of `max_rows` rows per layer.

    A request's adapter is copied into its row once, when it joins the batch (`wear`); a decode step
    then reads the first n rows as they are (`rows`), with no gathering per step. When a row leaves
    and the last row moves into its place (serving/engine.py keeps the batch's rows contiguous), its
    matrices move with it (`move`). They are stored transposed, as the products read them:

        down = Aᵀ (in, r)      up = (scale·B)ᵀ (r, out)      so that  B A x = (x @ down) @ up

        rows = RowAdapters(bank, max_rows=32)
        rows.wear(0, bank.index("lora_medical")); rows.wear(1, 0)      # row 1: the base
        down, up = rows.rows(0, 2)["layers.0.attention.wq"]            # (2, in, r), (2, r, out)
    """

    def __init__(self, bank: AdapterBank, max_rows: int):
        self.bank = bank
        self.down = {layer: A.new_zeros(max_rows, A.shape[2], A.shape[1]) for layer, A in bank.A.items()}  # (max_rows, in, r)
        self.up = {layer: B.new_zeros(max_rows, B.shape[2], B.shape[1]) for layer, B in bank.B.items()}  # (max_rows, r, out)
        self.wears = [0] * max_rows  # the adapter index of each row; 0 = base

    def wear(self, row: int, j: int) -> None:
        """Row `row` now wears adapter j (0: none)."""
        for layer in self.down:
            self.down[layer][row] = self.bank.A[layer][j].T  # (r, in) -> (in, r)
            self.up[layer][row] = self.bank.B[layer][j].T  # (out, r) -> (r, out)
        self.wears[row] = j

    def move(self, src: int, dst: int) -> None:
        """Row dst takes over what row src wears."""
        self.wear(dst, self.wears[src])

    def rows(self, start: int, stop: int) -> dict:
        """{layer: (down (n, in, r), up (n, r, out))} for rows [start, stop), views, no copy; {} if none
        of them wears an adapter, so a batch of base rows costs exactly what the base model costs."""
        if not any(self.wears[start:stop]):
            return {}
        return {layer: (self.down[layer][start:stop], self.up[layer][start:stop]) for layer in self.down}


# ----------------------------------------------------------------------------------------------
# The layers: nn.Linear and nn.Embedding again, each adding every row's own update.


class RowLoRALinear(nn.Linear):
    """An nn.Linear holding the base layer's own `weight` whose forward adds each row's adapter:

        x (n, T, in) -> W x + B_i A_i x_i for each row i: (n, T, out)

    `adapter` is this step's (down (n, in, r), up (n, r, out)) from RowAdapters.rows, or None for no
    update; RowLoRALayers.wearing sets it before a forward and clears it after. Like
    model_lora.LoRALinear it replaces the Linear in the model, so the block's own forward runs it.

    One row, rank 1, in 2, out 1: W = [[1, 1]], A = [[1, 0]], B = [[10]] (scale folded in), x = [1, 2]
    -> W x = 3, A x = 1, B A x = 10: 13.
    >>> base = nn.Linear(2, 1, bias=False)
    >>> base.weight = nn.Parameter(torch.tensor([[1., 1.]]), requires_grad=False)   # W
    >>> layer = RowLoRALinear(base)
    >>> layer.adapter = torch.tensor([[[1.], [0.]]]), torch.tensor([[[10.]]])    # Aᵀ (1, 2, 1), Bᵀ (1, 1, 1)
    >>> layer(torch.tensor([[[1., 2.]]]))
    tensor([[[13.]]])
    """

    def __init__(self, base: nn.Linear):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight  # the very same Parameter: the tied embedding/output matrix stays one
        self.adapter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight)  # (n, T, out): the shared base product, one matmul for every row
        if self.adapter is None:
            return y
        down, up = self.adapter
        return torch.baddbmm(y, torch.bmm(x, down), up)  # (n, T, in) @ (n, in, r) @ (n, r, out): row i with ITS A, B


class RowLoRAEmbedding(nn.Embedding):
    """The tied embedding's lookup with each row's adapter: ids (n, T) -> E[ids] + B_i[ids] A_i, (n, T, C).

    MiniMind's embedding table E IS the output layer's weight, so an adapter on "output" changes both
    (model_lora.LoRAEmbedding): the lookup reads E + ΔE = E + B A, whose row for a token t is
    E[t] + B[t] A. `adapter`: the OUTPUT layer's (down = Aᵀ (n, C, r), up = (scale·B)ᵀ (n, r, V)), or None.
    """

    def __init__(self, base: nn.Embedding):
        super().__init__(base.num_embeddings, base.embedding_dim, base.padding_idx, device="meta")
        self.weight = base.weight  # the very same Parameter as the output layer's
        self.adapter = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.weight, self.padding_idx)  # (n, T, C)
        if self.adapter is None:
            return x
        down, up = self.adapter
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None]  # (n, 1): each row picks from its own B
        rows_of_B = up[rows, :, ids]  # (n, T, r): row i's B rows for row i's tokens
        return torch.baddbmm(x, rows_of_B, down.transpose(1, 2))  # x + (n, T, r) @ (n, r, C)


class RowLoRALayers:
    """The model with a RowLoRALinear in place of every layer the bank adapts (and a RowLoRAEmbedding in
    place of the embedding tied to an adapted output layer), and the one place that tells them which
    adapters this step's rows wear:

        layers = RowLoRALayers(model, bank)          # once: the model now runs per-row adapters
        with layers.wearing(rows.rows(0, n)):        # each forward: rows 0..n-1's A and B
            logits = model's own blocks ...          # (serving/engine.py's forward_rows)

    The layers hold the model's own weight Parameters under the same names, so its state dict, the
    tied embedding/output matrix and AdapterBank.merge_into are unchanged. Outside `wearing`, every
    layer computes the base: what a step does not set, it cannot inherit from the step before. A batch
    of base rows (RowAdapters.rows gives {}) costs what the base costs.
    """

    def __init__(self, model: nn.Module, bank: AdapterBank):
        self.model = model
        for name in bank.A:
            self._refuse_inside_experts(name, bank.adapted_by[name])
        self.layers = {}  # {adapter layer name: [the layers reading its A and B]}
        for name in bank.A:
            base = model.get_submodule(name)
            # the embedding sharing this weight (MiniMind's tied output) reads the same adapter
            tied = [emb_name for emb_name, emb in model.named_modules()
                    if isinstance(emb, nn.Embedding) and emb.weight is base.weight]
            self.layers[name] = [self._put(name, RowLoRALinear(base))]
            self.layers[name] += [self._put(emb_name, RowLoRAEmbedding(model.get_submodule(emb_name))) for emb_name in tied]

    def _refuse_inside_experts(self, name: str, adapters: list) -> None:
        """An expert of a mixture of experts runs on the tokens routed to it, from every row at once: its
        input has no rows left to give each its own adapter (merging one adapter at a time still works)."""
        parts = name.split(".")
        for i in range(len(parts)):
            if isinstance(self.model.get_submodule(".".join(parts[:i])), MoEFeedForward):
                raise UserError(f"{name} (adapted by {', '.join(adapters)}) is inside a mixture of experts, whose "
                                "experts see the tokens of every row mixed together, so rows cannot each wear their "
                                "own adapter there; serve such adapters with --lora_mode merged, or train ones that "
                                "leave the feed-forward alone (e.g. --lora_targets wq,wk,wv,wo,output)")

    def _put(self, where: str, layer: nn.Module) -> nn.Module:
        """`layer` in place of the model's submodule `where` (e.g. "layers.0.attention.wq"), in its mode."""
        parent, _, child = where.rpartition(".")
        layer.train(self.model.get_submodule(where).training)
        setattr(self.model.get_submodule(parent), child, layer)
        return layer

    @contextmanager
    def wearing(self, adapters: dict):
        """For the forward passes inside: each layer adds adapters[its name] ((down, up) per row, from
        RowAdapters.rows); a layer not in `adapters` adds nothing. Cleared on the way out, error or not."""
        try:
            for name, layers in self.layers.items():
                for layer in layers:
                    layer.adapter = adapters.get(name)
            yield
        finally:
            for layers in self.layers.values():
                for layer in layers:
                    layer.adapter = None
