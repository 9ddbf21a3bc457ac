"""The Continuous Thought Machine, as the paper writes it.

Symbols as in the paper: T internal ticks, D neurons (d_model), M memory length (each neuron's trace of
pre-activations), B batch, N attention tokens (the backbone's H' x W' grid), C classes.

Per tick t (`ContinuousThoughtMachine.tick`) the model
  1. reads the action synchronisation S_action of the last n_synch_action neurons,
  2. reads its input o_t with its reader (`ctm.nn.readers`, `CTMConfig.input_reader`): by default it turns
     S_action into a query and attends over the image tokens (keys/values fixed for the whole forward),
  3. runs the synapses on [o_t, post-activations z_t] to get pre-activations a_t,
  4. pushes a_t into each neuron's FIFO trace of the last M pre-activations,
  5. runs every neuron's private MLP (the neuron-level models) on its trace to get z_{t+1},
  6. reads the output synchronisation S_out of the first n_synch_out neurons and projects it to logits,
  7. reports certainty = 1 - normalised entropy of those logits.

This file is the code that runs for plain autograd (`fast_backward = False`), torch.compile, double
backward and forward-mode AD, and for the official options the engine does not compute (`engine.covers`:
U-Net synapses, shallow or LayerNorm-ed neuron-level models, dropout in training, the direct and schedule
readers). Training and inference at full speed run the same function on the fast engine (`ctm.engine`),
entered through one dispatch at the top of `forward`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CTMConfig
from . import engine
from .backbones import build_backbone
from .outputs import CTMOutput, Tracking, certainty, normalised_entropy
from .positional import build_positional_embedding
from .readers import TokenTable, build_reader, device_of
from .synapses import build_synapses

MAX_DECAY = 15.0  # decay rates are clamped to [0, MAX_DECAY]


class SuperLinear(nn.Module):
    """D private linear maps, one per neuron: (B, D, in_dims) -> (B, D, out_dims).

    Weights are stored as (in_dims, out_dims, D) and biases as (1, D, out_dims), the seed's layout. The
    official options add dropout and a LayerNorm on the input and a learnable temperature dividing the output.
    """

    def __init__(self, in_dims: int, out_dims: int, n_neurons: int, *, layernorm: bool = False,
                 temperature: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dims + out_dims)
        self.w1 = nn.Parameter(torch.empty(in_dims, out_dims, n_neurons).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(1, n_neurons, out_dims))
        self.norm = nn.LayerNorm(in_dims) if layernorm else None
        self.temperature = nn.Parameter(torch.ones(1)) if temperature else None
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        if self.dropout:
            x = F.dropout(x, self.dropout, self.training)
        if self.norm is not None:
            x = self.norm(x)
        out = torch.einsum("bdm,mhd->bdh", x, self.w1) + self.b1
        return out if self.temperature is None else out / self.temperature

    def extra_repr(self) -> str:
        m, h, d = self.w1.shape
        return f"in_dims={m}, out_dims={h}, neurons={d}" + (f", dropout={self.dropout}" if self.dropout else "")


class NeuronLevelModels(nn.Module):
    """Each neuron's private MLP over its trace: (B, D, M) -> (B, D).

    Deep (the tutorial's): SuperLinear -> GLU -> SuperLinear -> GLU, with memory_hidden_dims hidden units per
    neuron. Not deep: SuperLinear -> GLU.
    """

    def __init__(self, memory_length: int, hidden: int, n_neurons: int, *, deep: bool = True,
                 **options: Any) -> None:
        super().__init__()
        self.first = SuperLinear(memory_length, 2 * hidden if deep else 2, n_neurons, **options)
        self.second = SuperLinear(hidden, 2, n_neurons, **options) if deep else None

    def forward(self, trace: Tensor) -> Tensor:
        h = F.glu(self.first(trace), dim=-1)  # (B, D, hidden), or (B, D, 1) when not deep
        if self.second is not None:
            h = F.glu(self.second(h), dim=-1)  # (B, D, 1)
        return h.squeeze(-1)  # (B, D)


class CrossAttention(nn.Module):
    """Multi-head attention of one query per sample over fixed tokens.

    The parameters and function of `nn.MultiheadAttention(d, heads, batch_first=True)` with a single
    query, split so that keys and values are projected once per forward instead of once per tick.
    """

    def __init__(self, d: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        # nn.MultiheadAttention's initialisation: xavier on the packed projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def project_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, d) tokens -> keys and values, each (B, heads, N, d / heads)."""
        b, n, d = tokens.shape
        k, v = F.linear(tokens, self.in_proj.weight[d:], self.in_proj.bias[d:]).split(d, dim=-1)
        return k.view(b, n, self.heads, -1).transpose(1, 2), v.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(B, d) query against projected keys/values -> output (B, d) and weights (B, heads, N)."""
        b, d = query.shape
        q = F.linear(query, self.in_proj.weight[:d], self.in_proj.bias[:d]).view(b, self.heads, 1, -1)
        weights = (q * q.shape[-1] ** -0.5 @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, h, 1, N)
        if self.dropout:
            weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ v).view(b, d)
        return self.out_proj(out), weights.squeeze(2)


class SynchState(NamedTuple):
    """The running sums of a synchronisation, each (B, P): alpha (decayed sum of z_i z_j), beta (of ones)."""

    alpha: Tensor
    beta: Tensor


class Synchronisation(nn.Module):
    """Pairwise synchronisation of P pairs of neurons (left[p], right[p]).

    With one learnable decay per pair and r = exp(-decay):
        alpha_t = r alpha_{t-1} + z_left z_right,   beta_t = r beta_{t-1} + 1,   S_t = alpha_t / sqrt(beta_t),
    started from alpha = z_left z_right, beta = 1 at the first call. The decays live on the model
    (`decay_params_out`, `decay_params_action`: the seed's names); this module holds the pairs (`select_pairs`),
    saved with the weights when they were drawn at random. `neurons` (D) bounds the indices a state dict may
    load into them (`load_state_dict` refuses others in one line, naming the buffer).
    """

    def __init__(self, left: Tensor, right: Tensor, *, drawn: bool = False, first: int | None = None,
                 n: int | None = None, neurons: int | None = None) -> None:
        super().__init__()
        self.first, self.n, self.neurons = first, n, neurons  # first-last: neurons first .. first + n - 1
        self.register_buffer("left", left, persistent=drawn)
        self.register_buffer("right", right, persistent=drawn)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for side in ("left", "right"):
            loaded = state_dict.get(prefix + side)
            if isinstance(loaded, Tensor) and self.neurons is not None:
                check_neuron_indices(loaded, prefix + side, self.neurons)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z: Tensor, state: SynchState | None, r: Tensor) -> tuple[Tensor, SynchState]:
        """z (B, D) post-activations, r (P,) decay factors -> S (B, P) and the new state."""
        products = z[:, self.left] * z[:, self.right]  # (B, P)
        if state is None:
            state = SynchState(products, torch.ones_like(products))
        else:
            state = SynchState(r * state.alpha + products, r * state.beta + 1)
        return state.alpha / state.beta.sqrt(), state

    def extra_repr(self) -> str:
        which = "drawn at random" if self.first is None else f"neurons {self.first}..{self.first + self.n - 1}"
        return f"pairs={self.left.numel()}, {which}"


def check_neuron_indices(indices: Tensor, name: str, neurons: int) -> None:
    """ValueError naming `name` unless `indices` are integers in [0, neurons): indices of a model's neurons."""
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"{name} must hold integer neuron indices, got {indices.dtype}")
    if indices.device.type == "meta" or not indices.numel():
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= neurons:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds neuron index {bad}, outside 0..{neurons - 1} (the model has d_model = "
                         f"{neurons} neurons); these weights do not belong to this model's sizes")


def select_pairs(selection: str, d_model: int, n: int, last: bool, n_self_pairs: int = 0) -> Synchronisation:
    """The pairs of a synchronisation over n selected neurons (`CTMConfig.neuron_selection`).

    first-last: all pairs i <= j of the first n neurons (output; `last` False) or of the last n (action).
    random: all pairs i <= j of two draws of n neurons, (left_i, right_j). random-pairing: n pairs
    (left_i, right_i) of two draws, the first n_self_pairs of them a neuron with itself. Draws are with
    replacement, from torch's global generator (like the parameters' initialisation).
    """
    if selection == "first-last":
        first = d_model - n if last else 0
        i, j = torch.triu_indices(n, n)
        return Synchronisation(i + first, j + first, first=first, n=n, neurons=d_model)
    left, right = torch.randint(d_model, (n,)), torch.randint(d_model, (n,))
    if selection == "random":
        i, j = torch.triu_indices(n, n)
        return Synchronisation(left[i], right[j], drawn=True, neurons=d_model)
    right = torch.cat((left[:n_self_pairs], right[n_self_pairs:]))
    return Synchronisation(left, right, drawn=True, neurons=d_model)


class TickState(NamedTuple):
    """What one tick hands to the next."""

    z: Tensor  # (B, D) post-activations z_t
    trace: Tensor  # (B, D, M) the last M pre-activations of each neuron
    synch_action: SynchState | None  # None before the first tick, and without action synchronisation
    synch_out: SynchState


class TickInputs(NamedTuple):
    """What every tick reads and no tick changes."""

    read: Any  # what the reader prepared (`ctm.nn.readers`), e.g. keys/values (B, heads, N, d/heads) each
    r_action: Tensor | None  # (P_action,) decay factors exp(-decay); None without action synchronisation
    r_out: Tensor  # (P_out,)

    def rows(self, rows: Tensor) -> TickInputs:
        """Only the batch rows `rows` (adaptive computation drops halted samples)."""
        return self._replace(read=self.read.rows(rows))


class TickOutput(NamedTuple):
    logits: Tensor  # (B, C)
    certainty: Tensor  # (B, 2)
    pre_activations: Tensor  # (B, D) a_t
    post_activations: Tensor  # (B, D) z_{t+1}
    attention: Tensor  # (B, heads, N) the reader's attention weights (empty or zeros where it attends to none)
    synchronisation_action: Tensor  # (B, P_action); (B, 0) without action synchronisation
    synchronisation_out: Tensor  # (B, P_out)


# ---------------------------------------------------------------------------------------------- the model


class TickModel(nn.Module):
    """What every model that thinks in ticks shares (the CTM, the LSTM baseline): the input encoder
    (`compute_features`: backbone -> positional embedding -> key/value tokens), the reader of its input
    (`self.reader`, `ctm.nn.readers`), the tick loop (`forward`, `forward_tokens`), adaptive halting (`think`)
    and the checks of an input batch. A subclass builds `config`, `reader`, `backbone`, `positional_embedding`
    and `kv_proj`, and gives `start(tokens)`, `tick(state, inputs, t)` and `dtype`."""

    #: True: forward runs on the fast engine (`ctm.nn.engine`) where it applies (the CTM's); False: always the
    #: readable path with plain autograd.
    fast_backward: bool = False
    config: CTMConfig

    def forward(self, x: Any, track: bool = False) -> CTMOutput:
        """Run T ticks on a batch of inputs: images (B, C, H, W), or what the backbone takes; with
        input_reader direct vectors (B, d_input), with schedule a list of `ctm.nn.readers.Phase`."""
        self.check_input(x)
        if engine.applies(self):
            return engine.forward(self, x, track)
        tokens, grid = self.reader.encode(x, self.compute_features)  # e.g. tokens (B, N, d_input)
        with self.full_precision(x):  # under autocast only the backbone runs in low precision
            return self.forward_tokens(tokens, track, grid)

    def forward_tokens(self, tokens: Any, track: bool = False, grid: tuple[int, int] | None = None
                       ) -> CTMOutput:
        """The core: T ticks attending over key/value tokens (B, N, d_input) from any input encoder (or
        reading what the reader takes: direct vectors (B, d_input), a schedule with encoded attend phases)."""
        state, inputs = self.start(tokens)
        ticks = []
        for t in range(self.reader.ticks(tokens)):
            state, out = self.tick(state, inputs, t)
            ticks.append(out)
        predictions = torch.stack([o.logits for o in ticks], -1)  # (B, C, T)
        certainties = torch.stack([o.certainty for o in ticks], -1)  # (B, 2, T)
        tracking = None
        if track:
            def stacked(name: str) -> Tensor:  # (T, B, ...)
                return torch.stack([getattr(o, name).detach() for o in ticks])

            tracking = Tracking(stacked("pre_activations"), stacked("post_activations"), stacked("attention"),
                                stacked("synchronisation_out"), stacked("synchronisation_action"),
                                grid or (1, ticks[0].attention.shape[-1]))
        return CTMOutput(predictions, certainties, ticks[-1].synchronisation_out, tracking)

    def think(self, x: Tensor, halt_certainty: float, max_ticks: int | None = None):
        """Adaptive computation: each sample thinks until its certainty reaches `halt_certainty`; see
        `ctm.halting.think`. Returns a `ThinkOutput`."""
        from .halting import think

        return think(self, x, halt_certainty, max_ticks)

    # ------------------------------------------------------------------------------------------ helpers

    def compute_features(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The input encoder: a batch -> (B, N, d_input) key/value tokens and their grid (H', W'); a
        sequence's L tokens are the grid (1, L)."""
        features = self.backbone(x)  # (B, d_backbone, H', W') or (B, d_backbone, L)
        if self.positional_embedding is not None:
            features = features + self.positional_embedding(features)
        grid = tuple(features.shape[2:])
        grid = grid if len(grid) == 2 else (1, math.prod(grid))
        return self.kv_proj(features.flatten(2).transpose(1, 2)), grid

    def certainty(self, logits: Tensor) -> Tensor:
        """(B, C) logits -> (B, 2) certainty; with several output positions the normalised entropy is the
        mean over the positions of each one's entropy over its classes."""
        P = self.config.out_positions
        if P == 1:
            return certainty(logits)
        ne = normalised_entropy(logits.unflatten(-1, (P, -1))).mean(-1)  # (B,)
        return torch.stack((ne, 1 - ne), -1)

    def full_precision(self, x: Any):
        """A context in which autocast is off, so the ticks run in the parameters' precision."""
        device = device_of(x)
        if device.type in ("cpu", "cuda"):
            return torch.autocast(device.type, enabled=False)
        return contextlib.nullcontext()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the parameters (what inputs must match)."""
        return next(self.parameters()).dtype

    def check_input(self, x: Any) -> None:
        """Raise a ValueError naming what is wrong with an input batch, before any torch op sees it."""
        self.reader.check_input(x, self)

    def check_backbone_input(self, x: Tensor) -> None:
        """`check_input` for what the backbone takes (the attention reader's input, a schedule's attend phase)."""
        backbone = self.config.backbone
        if backbone == "sign-embedding":
            return self._check_sequence(x)
        c = self.config.in_channels
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, {c}, H, W), got {type(x).__name__}")
        if backbone == "none":  # any number of grid dimensions
            if x.dim() < 3 or x.shape[1] != c:
                raise ValueError(f"expected input of shape (B, {c}, ...) with backbone 'none' "
                                 f"(CTMConfig.in_channels={c}), got shape {tuple(x.shape)}")
            if not x.is_floating_point():
                raise ValueError(f"expected a floating-point input tensor, got {x.dtype}")
            return self._check_dtype(x)
        if x.dim() != 4:
            hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
            raise ValueError(f"expected input of shape (B, {c}, H, W), got shape {tuple(x.shape)}{hint}")
        b, ch, h, w = x.shape
        if ch != c:
            raise ValueError(
                f"expected {c} input channel(s) (CTMConfig.in_channels), got {ch} in shape {tuple(x.shape)}")
        if b < 1:
            raise ValueError("expected a batch of at least one image, got an empty batch")
        if backbone.startswith("tutorial") and (h < 4 or w < 4):
            raise ValueError(f"images must be at least 4x4 (the {backbone} backbone halves them twice), got {h}x{w}")
        if backbone == "tutorial-s2d" and (h % 2 or w % 2):
            raise ValueError(f"the tutorial-s2d backbone stacks 2x2 pixels into channels: images need an even "
                             f"height and width, got {h}x{w} (resize them, e.g. --image-size)")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image tensor, got {x.dtype} (use x.float() / 255)")
        return self._check_dtype(x)

    def _check_dtype(self, x: Tensor) -> None:
        dtype = self.dtype
        if x.dtype != dtype:
            raise ValueError(f"expected {dtype} inputs (the model's parameters are {dtype}), got {x.dtype}; use "
                             f"x.to({dtype}), or model.to({x.dtype}) for a model in that precision")

    @staticmethod
    def _check_sequence(x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, L), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"the sign-embedding backbone takes sequences of +-1 of shape (B, L), got "
                             f"{tuple(x.shape)}")


class ContinuousThoughtMachine(TickModel):
    """A CTM: an input encoder (backbone -> positional embedding -> key/value tokens), then T ticks of
    attention, synapses, neuron-level models and synchronisation over the tokens (`forward_tokens`). How a
    tick reads its input is the reader's (`CTMConfig.input_reader`, `ctm.nn.readers`).
    `forward(x)` returns a `CTMOutput`; `think(x, ...)` halts adaptively. The options of the official
    implementation are `CTMConfig` fields (`ctm.backbones`, `ctm.positional`, `ctm.synapses`).
    """

    #: True: forward runs on the fast engine (`ctm.engine`: the same function, a hand-written backward).
    #: False: every forward runs the readable path below with plain autograd: needed for double backward,
    #: backward twice through one forward (retain_graph), forward-mode AD or torch.func transforms.
    #: torch.compile always traces the readable path.
    fast_backward: bool = True

    def __init__(self, config: CTMConfig | None = None) -> None:
        super().__init__()
        config = CTMConfig() if config is None else config
        if not isinstance(config, CTMConfig):
            raise TypeError(f"config must be a CTMConfig, got {type(config).__name__}")
        self.config = c = config
        attends = c.input_reader != "direct"  # the direct reader has no attention, no action synchronisation
        # The input encoder: backbone -> positional embedding -> key/value tokens (B, N, d_input).
        self.backbone = build_backbone(c)
        self.positional_embedding = build_positional_embedding(c.positional_embedding, c.d_backbone)
        self.kv_proj = nn.Sequential(nn.Linear(c.d_backbone, c.d_input), nn.LayerNorm(c.d_input)) if attends else None
        # The core. The reader uses the model's q_proj and attention (their state-dict names predate readers).
        self.q_proj = nn.Linear(c.synch_size_action, c.d_input) if attends else None
        self.attention = CrossAttention(c.d_input, c.heads, c.dropout) if attends else None
        # A schedule's token phases read rows of the token table (e.g. QAMNIST's indices and operators).
        self.token_table = TokenTable(c.input_tokens, c.fixed_tokens, c.d_input) if c.input_tokens else None
        self.reader = build_reader(c, self.q_proj, self.attention, self.token_table)
        self.synapses = build_synapses(c.d_input + c.d_model, c.d_model, c.synapse_depth, c.dropout)
        self.neuron_level_models = NeuronLevelModels(
            c.memory_length, c.memory_hidden_dims, c.d_model, deep=c.deep_nlms, layernorm=c.nlm_layernorm,
            temperature=c.nlm_temperature, dropout=c.nlm_dropout)
        self.start_activated_state = nn.Parameter(
            torch.empty(c.d_model).uniform_(-math.sqrt(1 / c.d_model), math.sqrt(1 / c.d_model)))
        bound = math.sqrt(1 / (c.d_model + c.memory_length))
        self.start_trace = nn.Parameter(torch.empty(c.d_model, c.memory_length).uniform_(-bound, bound))
        # first-last: output synchronisation over the first n_synch_out neurons, action over the last
        # n_synch_action; or pairs drawn at random (`select_pairs`).
        self.synch_out = select_pairs(c.neuron_selection, c.d_model, c.n_synch_out, False, c.n_self_pairs)
        self.synch_action = select_pairs(c.neuron_selection, c.d_model, c.n_synch_action, True, c.n_self_pairs) \
            if attends else None
        self.decay_params_out = nn.Parameter(torch.zeros(c.synch_size_out))
        self.decay_params_action = nn.Parameter(torch.zeros(c.synch_size_action)) if attends else None
        self.output_projector = nn.Linear(c.synch_size_out, c.out_dims)

    # ------------------------------------------------------------------------------------------ the tick

    def tick(self, state: TickState, inputs: TickInputs, t: int) -> tuple[TickState, TickOutput]:
        """Internal tick t (from 0): the seven steps of the module docstring."""
        # 1. action synchronisation of the last n_synch_action neurons (none with the direct reader)
        s_action, synch_action = (self.synch_action(state.z, state.synch_action, inputs.r_action)
                                  if self.synch_action is not None else (state.z[:, :0], None))  # (B, P_action)
        # 2. the reader: o_t, by default cross-attention over the tokens with a query from S_action
        o, attention = self.reader.read(s_action, inputs.read, t)  # (B, d_input), (B, heads, N)
        # 3. synapses: pre-activations from [o_t, z_t]
        a = self.synapses(torch.cat((o, state.z), dim=-1))  # (B, D)
        # 4. the FIFO trace of the last M pre-activations
        trace = torch.cat((state.trace[:, :, 1:], a.unsqueeze(-1)), dim=-1)  # (B, D, M)
        # 5. neuron-level models: each neuron's MLP on its own trace
        z = self.neuron_level_models(trace)  # (B, D): z_{t+1}
        # 6. output synchronisation of the first n_synch_out neurons -> logits
        s_out, synch_out = self.synch_out(z, state.synch_out, inputs.r_out)  # (B, P_out)
        logits = self.output_projector(s_out)  # (B, C)
        # 7. certainty
        return TickState(z, trace, synch_action, synch_out), TickOutput(
            logits, self.certainty(logits), a, z, attention, s_action, s_out)

    def start(self, tokens: Any) -> tuple[TickState, TickInputs]:
        """Before the first tick: what the reader reads (keys/values of tokens (B, N, d_input) by default),
        decay factors, the start state."""
        read = self.reader.start(tokens, self.start_trace.dtype)
        r_action, r_out = self.decay_factors()
        B = read.batch
        z = self.start_activated_state.unsqueeze(0).expand(B, -1)  # (B, D)
        trace = self.start_trace.unsqueeze(0).expand(B, -1, -1)  # (B, D, M)
        _, synch_out = self.synch_out(z, None, r_out)
        return TickState(z, trace, None, synch_out), TickInputs(read, r_action, r_out)

    # ------------------------------------------------------------------------------------------ helpers

    def decay_rates(self) -> tuple[Tensor, Tensor]:
        """The decays of the action and the output pairs, clamped to [0, MAX_DECAY].

        The clamp is straight-through: the forward sees the clamped rate, the gradient flows as if unclamped
        (the seed clamps the parameters in place before using them; no writes to parameters here).
        """
        def clamped(p: Tensor | None) -> Tensor | None:  # None: no action synchronisation (direct reader)
            return None if p is None else p + (p.clamp(0, MAX_DECAY) - p).detach()

        return clamped(self.decay_params_action), clamped(self.decay_params_out)

    def decay_factors(self) -> tuple[Tensor | None, Tensor]:
        """r = exp(-decay) of the action and the output pairs (decays clamped, see `decay_rates`)."""
        rate_action, rate_out = self.decay_rates()
        return None if rate_action is None else torch.exp(-rate_action), torch.exp(-rate_out)

    @property
    def dtype(self) -> torch.dtype:
        return self.start_trace.dtype

    def extra_repr(self) -> str:
        return f"parameters={self.num_parameters():,}"

    @torch.no_grad()
    def clamp_decay_(self) -> None:
        """Clamp the decay parameters into [0, MAX_DECAY] in place; call after each optimiser step."""
        self.decay_params_out.clamp_(0, MAX_DECAY)
        if self.decay_params_action is not None:
            self.decay_params_action.clamp_(0, MAX_DECAY)

    def attach_decay_clamp(self, optimizer: torch.optim.Optimizer):
        """Clamp the decay parameters after every `optimizer.step()`; returns the hook's handle.

        The forward always uses rates clamped to [0, MAX_DECAY], so this only keeps the stored parameters
        there too (as the seed does), which keeps them from drifting where no gradient would bring them back.
        """
        return optimizer.register_step_post_hook(lambda *_: self.clamp_decay_())



CTM = ContinuousThoughtMachine
