"""How a tick reads its input: one reader per `CTMConfig.input_reader`.

Step 2 of a tick (`ContinuousThoughtMachine.tick`) asks the model's reader for the vector o_t (B, d_input) the
synapses take next to z_t. A reader is a module with

* `start(inputs, dtype)`: before the first tick, what every tick reads (batch first; `.rows(rows)` keeps some
  samples, `.batch` is B);
* `read(s_action, prepared, t)`: o_t (B, d_input) at tick t (0-based) and the attention weights tracking
  records (B, heads, N), from S_action (B, P_action) (None without an action synchronisation);
* `encode(x, features)`: `forward`'s input to what `start` takes (`features` is the model's input encoder,
  `compute_features`), with the token grid; `check_input(x, model)` refuses a wrong input in one line;
  `ticks(inputs)`: how many ticks a forward runs.

The readers:

* `attention` (`AttentionReader`, the default, the paper's): `forward(x)` encodes x (images (B, C, H, W), or
  what the backbone takes) to tokens (B, N, d_input) once; each tick a query q_proj(S_action) attends over them
  (multi-head cross-attention, keys and values projected once). The modules are the model's `q_proj` and
  `attention` (their state-dict names predate readers). The fast engine runs this reader only.
* `direct` (`DirectReader`, the official sort model): `forward(x)` takes vectors x (B, d_input), fed to the
  synapses as they are at every tick: no backbone, no attention, no action synchronisation (the model builds
  none). Tracked attention is empty, (B, 1, 0).
* `schedule` (`ScheduleReader`, the official QAMNIST model): inputs that change over ticks. `forward` takes a
  schedule, a sequence of `Phase(kind, inputs, ticks)` run in order:

  - `Phase("attend", x, ticks)`: for `ticks` ticks, attend as the attention reader does over the tokens of x
    (x as the attention reader's forward takes it: encoded by the backbone, positional embedding and kv_proj);
  - `Phase("direct", v, ticks)`: for `ticks` ticks, feed v (B, d_input) to the synapses as it is;
  - `Phase("token", ids, ticks)`: for `ticks` ticks, feed row ids (B,) of the model's token table
    (`TokenTable`, `CTMConfig.input_tokens` rows of d_input: the first `CTMConfig.fixed_tokens` the sinusoidal
    embeddings of 0, 1, ..., the official QAMNIST index embeddings, the rest learned; the LSTM baseline passes
    the row through its kv_proj, as the official QAMNIST LSTM does);
  - `Phase("blank", x, ticks)`: for `ticks` ticks, feed zeros (nothing to read; x only gives the batch, (B, ...)).

  A forward runs the schedule's total ticks T_s, any number (`CTMConfig.iterations` is what the task trains
  with; a longer schedule, e.g. more operations than trained on, runs as well): predictions are (B, C, T_s).
  The action synchronisation runs at every tick (direct phases too: its decayed sums go on).
  `forward_tokens` takes the same schedule with attend phases already encoded, tokens (B, N, d_input).
  Tracked attention is (B, heads, N_max) per tick, N_max the most tokens of any attend phase: zeros in direct
  phases and past a phase's own N. `think` refuses a schedule (halting is for one input read at every tick).

  QAMNIST (digits shown one at a time, then index and operator embeddings, then ticks to answer):

      schedule = [Phase("attend", digits[:, i], 10) for i in range(n_digits)]      # (B, 1, 28, 28) each
      for index, operator in question:                                             # ids (B,) each
          schedule += [Phase("token", index, 10), Phase("token", fixed_tokens + operator, 10)]
      schedule.append(Phase("blank", targets, 10))                                 # answering: nothing to read
      out = model(schedule)                                                        # predictions (B, C, T_s)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..config import CTMConfig

PHASE_KINDS = ("attend", "direct", "token", "blank")
Grid = tuple[int, int]


class Phase(NamedTuple):
    """One phase of a schedule (`ScheduleReader`): `ticks` ticks reading `inputs` by `kind`."""

    kind: str  # "attend": inputs the backbone takes (forward) or tokens (B, N, d_input) (forward_tokens)
    inputs: Tensor  # "direct": (B, d_input) as it is; "token": ids (B,) of the token table; "blank": (B, ...)
    ticks: int = 1


class AttentionInputs(NamedTuple):
    """Keys and values of the tokens, each (B, heads, N, d_input / heads)."""

    k: Tensor
    v: Tensor

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    def rows(self, rows: Tensor) -> AttentionInputs:
        return AttentionInputs(self.k[rows], self.v[rows])


class DirectInputs(NamedTuple):
    """The vectors (B, d_input) fed to the synapses."""

    x: Tensor

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def rows(self, rows: Tensor) -> DirectInputs:
        return DirectInputs(self.x[rows])


class ScheduleInputs(NamedTuple):
    """Each phase's prepared inputs, the phase of each tick, and N_max (the widest attend phase's tokens)."""

    phases: tuple[AttentionInputs | DirectInputs, ...]
    at: tuple[int, ...]  # at[t]: the phase tick t reads
    width: int  # N_max

    @property
    def batch(self) -> int:
        return self.phases[0].batch

    def rows(self, rows: Tensor) -> ScheduleInputs:
        return self._replace(phases=tuple(p.rows(rows) for p in self.phases))


class AttentionReader(nn.Module):
    """Cross-attention of a query from S_action over tokens fixed for the whole forward."""

    kind = "attention"

    def __init__(self, q_proj: nn.Linear, attention: nn.Module, iterations: int) -> None:
        super().__init__()
        # A tuple: held, not registered. The model registers them as `q_proj` and `attention`, the state-dict
        # names of every checkpoint and of the official weights' conversion.
        self.parts = (q_proj, attention)
        self.iterations = iterations

    def check_input(self, x: Any, model: nn.Module) -> None:
        model.check_backbone_input(x)

    def encode(self, x: Tensor, features: Callable[[Tensor], tuple[Tensor, Grid]]) -> tuple[Tensor, Grid]:
        return features(x)  # tokens (B, N, d_input), grid (H', W')

    def ticks(self, inputs: Any) -> int:
        return self.iterations

    def start(self, tokens: Tensor, dtype: torch.dtype) -> AttentionInputs:
        return AttentionInputs(*self.parts[1].project_kv(tokens.to(dtype)))

    def read(self, s_action: Tensor, inputs: AttentionInputs, t: int) -> tuple[Tensor, Tensor]:
        q_proj, attention = self.parts[:2]
        return attention(q_proj(s_action), inputs.k, inputs.v)  # (B, d_input), (B, heads, N)

    def extra_repr(self) -> str:
        return "query q_proj(S_action), the model's attention"


class DirectReader(nn.Module):
    """The input (B, d_input) goes to the synapses as it is, at every tick."""

    kind = "direct"

    def __init__(self, d_input: int, iterations: int) -> None:
        super().__init__()
        self.d_input, self.iterations = d_input, iterations

    def check_input(self, x: Any, model: nn.Module) -> None:
        check_vectors(x, self.d_input, model.dtype, "input_reader 'direct' takes")

    def encode(self, x: Tensor, features: Callable) -> tuple[Tensor, Grid]:
        return x, (1, 0)

    def ticks(self, inputs: Any) -> int:
        return self.iterations

    def start(self, x: Tensor, dtype: torch.dtype) -> DirectInputs:
        return DirectInputs(x.to(dtype))

    def read(self, s_action: Tensor | None, inputs: DirectInputs, t: int) -> tuple[Tensor, Tensor]:
        x = inputs.x
        return x, x.new_zeros(x.shape[0], 1, 0)  # (B, d_input), no attention

    def extra_repr(self) -> str:
        return "the input (B, d_input) as it is"


class TokenTable(nn.Module):
    """The vectors of input tokens, ids (B,) -> (B, d_input): `n_tokens` rows, the first `fixed` of them the
    sinusoidal embeddings of their index (sin at even, cos at odd features; not trained: the official QAMNIST
    index embeddings), the rest learned (initialised N(0, 1), as nn.Embedding)."""

    def __init__(self, n_tokens: int, fixed: int, d_input: int) -> None:
        super().__init__()
        self.n_tokens, self.n_fixed = n_tokens, fixed
        self.register_buffer("fixed", sinusoids(fixed, d_input), persistent=False)  # (fixed, d_input)
        self.learned = nn.Parameter(torch.randn(n_tokens - fixed, d_input))  # (n_tokens - fixed, d_input)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, torch.cat((self.fixed.to(self.learned.dtype), self.learned)))  # (B, d_input)

    def extra_repr(self) -> str:
        return f"{self.n_tokens} tokens, the first {self.n_fixed} sinusoidal (fixed), d_input {self.fixed.shape[1]}"


def sinusoids(n: int, d: int) -> Tensor:
    """(n, d) float32: row p holds sin(p w_k) at feature 2k and cos(p w_k) at 2k + 1, w_k = 10000^(-2k/d)."""
    position = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # (n, 1)
    w = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))  # (ceil(d/2),)
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(position * w)
    out[:, 1::2] = torch.cos(position * w[:d // 2])
    return out


class ScheduleReader(AttentionReader):
    """A schedule of phases, each attended (as `AttentionReader`), fed directly, looked up in the token table or
    blank for some ticks."""

    kind = "schedule"

    def __init__(self, q_proj: nn.Linear, attention: nn.Module, iterations: int, d_input: int,
                 tokens: TokenTable | None = None, token_projection: nn.Module | None = None) -> None:
        super().__init__(q_proj, attention, iterations)
        self.d_input = d_input
        # held, not registered: the model's `token_table`, and what a token's vector goes through before it is
        # read (None: as it is, the CTM's; the LSTM baseline's kv_proj, as the official QAMNIST LSTM)
        self.parts = (q_proj, attention, tokens, token_projection)

    def check_input(self, x: Any, model: nn.Module) -> None:
        if not isinstance(x, Sequence) or isinstance(x, (str, Tensor)) or not x \
                or not all(isinstance(p, Phase) for p in x):
            raise TypeError(f"input_reader 'schedule' takes a non-empty list of Phase(kind, inputs, ticks), got "
                            f"{type(x).__name__}")
        batch = None
        for i, p in enumerate(x):
            if p.kind not in PHASE_KINDS:
                raise ValueError(f"schedule phase {i}: kind must be one of {', '.join(PHASE_KINDS)}, got {p.kind!r}")
            if isinstance(p.ticks, bool) or not isinstance(p.ticks, int) or p.ticks < 1:
                raise ValueError(f"schedule phase {i}: ticks must be a positive integer, got {p.ticks!r}")
            if p.kind == "attend":
                model.check_backbone_input(p.inputs)
            elif p.kind == "direct":
                check_vectors(p.inputs, self.d_input, model.dtype, f"schedule phase {i} ('direct') takes")
            elif p.kind == "token":
                self._check_tokens(p.inputs, i)
            elif not isinstance(p.inputs, Tensor) or p.inputs.dim() < 1:
                raise ValueError(f"schedule phase {i} ('blank') takes a tensor (B, ...) giving the batch, got "
                                 f"{type(p.inputs).__name__}")
            if batch is not None and p.inputs.shape[0] != batch:
                raise ValueError(f"schedule phase {i} has a batch of {p.inputs.shape[0]}, phase 0 of {batch}")
            batch = p.inputs.shape[0]

    def _check_tokens(self, ids: Any, i: int) -> None:
        table = self.parts[2]
        if table is None:
            raise ValueError(f"schedule phase {i} ('token') reads the token table, and this model has none "
                             f"(CTMConfig.input_tokens is 0)")
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"schedule phase {i} ('token') takes integer ids of shape (B,), got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.n_tokens):
            raise ValueError(f"schedule phase {i} ('token'): ids must lie in [0, {table.n_tokens}) "
                             f"(CTMConfig.input_tokens), got [{int(ids.min())}, {int(ids.max())}]")

    def encode(self, x: Sequence[Phase], features: Callable) -> tuple[list[Phase], Grid | None]:
        """Attend phases' inputs encoded to tokens (B, N, d_input), token and blank phases to direct vectors
        (B, d_input); the attend phases' grid when they all share one."""
        encoded, grids = [], set()
        for p in x:
            if p.kind == "attend":
                tokens, grid = features(p.inputs)
                p = p._replace(inputs=tokens)
                grids.add(grid)
            elif p.kind == "token":
                vector = self.parts[2](p.inputs)  # (B, d_input)
                if self.parts[3] is not None:
                    vector = self.parts[3](vector)
                p = Phase("direct", vector, p.ticks)
            elif p.kind == "blank":
                p = Phase("direct", p.inputs.new_zeros(p.inputs.shape[0], self.d_input, dtype=torch.float32),
                          p.ticks)
            encoded.append(p)
        return encoded, grids.pop() if len(grids) == 1 else None

    def ticks(self, inputs: Sequence[Phase]) -> int:
        return sum(p.ticks for p in inputs)

    def start(self, schedule: Sequence[Phase], dtype: torch.dtype) -> ScheduleInputs:
        phases = tuple(AttentionReader.start(self, p.inputs, dtype) if p.kind == "attend"
                       else DirectInputs(p.inputs.to(dtype)) for p in schedule)
        at = tuple(i for i, p in enumerate(schedule) for _ in range(p.ticks))
        width = max((p.k.shape[2] for p in phases if isinstance(p, AttentionInputs)), default=0)
        return ScheduleInputs(phases, at, width)

    def read(self, s_action: Tensor, inputs: ScheduleInputs, t: int) -> tuple[Tensor, Tensor]:
        phase = inputs.phases[inputs.at[t]]
        if isinstance(phase, DirectInputs):
            x = phase.x
            return x, x.new_zeros(x.shape[0], self.parts[1].heads, inputs.width)
        o, weights = AttentionReader.read(self, s_action, phase, t)  # (B, d_input), (B, heads, N)
        return o, F.pad(weights, (0, inputs.width - weights.shape[-1]))

    def extra_repr(self) -> str:
        return ("attend phases: the query, the model's attention; direct phases as they are; token phases from the "
                "model's token_table" + (" through its projection" if self.parts[3] is not None else "")
                + "; blank phases zeros")


def build_reader(config: CTMConfig, q_proj: nn.Linear | None, attention: nn.Module | None,
                 tokens: TokenTable | None = None) -> nn.Module:
    """The reader `config.input_reader` names; attention and schedule use the model's q_proj and attention, a
    schedule its token table."""
    c = config
    if c.input_reader == "direct":
        return DirectReader(c.d_input, c.iterations)
    if c.input_reader == "schedule":
        return ScheduleReader(q_proj, attention, c.iterations, c.d_input, tokens)
    return AttentionReader(q_proj, attention, c.iterations)


def check_vectors(x: Any, width: int, dtype: torch.dtype, what: str) -> None:
    """ValueError unless x is a floating-point (B, width) batch of `dtype`, B >= 1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} a torch.Tensor of shape (B, {width}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != width or x.shape[0] < 1:
        raise ValueError(f"{what} vectors of shape (B, {width}) (CTMConfig.d_input={width}), got shape "
                         f"{tuple(x.shape)}")
    if x.dtype != dtype:
        raise ValueError(f"{what} {dtype} vectors (the model's parameters are {dtype}), got {x.dtype}")


def device_of(x: Any) -> torch.device:
    """The device of a batch: a tensor's, or a schedule's first phase's."""
    return x.device if isinstance(x, Tensor) else x[0].inputs.device

