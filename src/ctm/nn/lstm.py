"""The paper's LSTM baseline: the CTM's input encoder and tick loop with an LSTM cell as the core.

The CTM paper compares CTMs against LSTMs that run the same T internal ticks over the same tokens, with a
width chosen so both have about the same number of parameters. Per tick t (`LSTMBaseline.tick`):
  1. a query from the LSTM's hidden state h_t attends over the key/value tokens (the CTM's `CrossAttention`),
  2. the attention output is the LSTM cell's input: (h_t, c_t) -> (h_{t+1}, c_{t+1}),
  3. a linear head reads h_{t+1} -> logits (out_dims: positions x classes),
  4. certainty = 1 - normalised entropy, per output position and averaged, as the CTM computes it.
The tokens are the CTM's: the same backbone, positional embedding and key/value projection (`ctm.backbones`,
`ctm.positional`), built from the same `CTMConfig`; the start states h_0 and c_0 are learned.

With input_reader "direct" (the sort task's: no backbone, no attention) step 1 reads nothing from h_t: the
input vector (B, d_input) itself is the cell's input at every tick, as the CTM's direct reader feeds it to the
synapses; the model has no q_proj, attention or kv_proj, and tracked attention is empty, (B, 1, 0).

With input_reader "schedule" (the QAMNIST task's) it reads the CTM's schedule (`ctm.nn.readers.ScheduleReader`):
in an attend phase a query q_proj(h_t) attends over that phase's tokens (a digit's); a token phase's row of the
model's own `token_table` (the CTM's: sinusoidal index rows fixed, operator rows learned) goes through kv_proj
(Linear + LayerNorm) into the cell; direct vectors and blank zeros go in as they are. That is the official
QAMNIST LSTM baseline's function (`models/lstm_qamnist.py` `LSTMBaseline`: the index and operator embeddings
through kv_proj, the answer ticks' zeros not), which tests/test_qamnist_lstm.py checks with its weights.

What cannot apply: there is no synchronisation (no neuron pairs, no decays). The tick reports, in the CTM's
`TickOutput` fields, the vectors that play its roles: `synchronisation_action` is h_t (what the query is
read from), `synchronisation_out` is h_{t+1} (what the output head reads), `pre_activations` the cell state
c_{t+1} and `post_activations` h_{t+1}; so `CTMOutput.synchronisation_out` is the last hidden state h_T and
`Tracking` has the CTM's layout with D = H. `attach_decay_clamp` and `clamp_decay_` do nothing. The fast
engine does not apply (`fast_backward` is False): every forward is plain autograd.

`lstm_width_for(config)` finds the width H whose parameter count is closest to the CTM's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config import MAX_PART_SIZE, CTMConfig, check_fields, option
from .backbones import build_backbone
from .model import ContinuousThoughtMachine, CrossAttention, TickModel, TickOutput
from .positional import build_positional_embedding
from .readers import (
    AttentionInputs,
    AttentionReader,
    DirectInputs,
    DirectReader,
    ScheduleInputs,
    ScheduleReader,
    TokenTable,
)


@dataclass(frozen=True)
class LSTMConfig:
    """The LSTM baseline's own size, recorded next to the `CTMConfig` it shares its encoder and ticks with."""

    hidden: int = option(0, "LSTM width H (hidden and cell state); 0 picks the width whose parameter count "
                         "matches the CTM's (`lstm_width_for`)", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if 4 * self.hidden**2 > MAX_PART_SIZE:  # the cell's recurrent weights (4H, H)
            raise ValueError(f"LSTMConfig.hidden={self.hidden} makes the LSTM cell too large to build "
                             f"({4 * self.hidden**2:.3g} values; ctm builds at most 2^40 = {MAX_PART_SIZE:.3g}, "
                             f"4 TiB of float32, beyond any machine's memory); choose a smaller width")

    def resolved(self, config: CTMConfig) -> LSTMConfig:
        """This config with hidden 0 replaced by the width that matches the CTM of `config`."""
        return self if self.hidden else LSTMConfig(lstm_width_for(config))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LSTMConfig:
        """Rebuild from `to_dict()` output; unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"LSTMConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LSTMConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)


class LSTMState(NamedTuple):
    """What one tick hands to the next."""

    h: Tensor  # (B, H) hidden state
    c: Tensor  # (B, H) cell state


class LSTMBaseline(TickModel):
    """An LSTM that thinks for `config.iterations` ticks over the CTM's tokens (module docstring).

    `forward(x, track=False)` returns a `CTMOutput` like `ContinuousThoughtMachine.forward`: predictions
    (B, C, T), certainties (B, 2, T); `think(x, halt_certainty)` halts adaptively (`ctm.halting.think`).
    """

    #: The fast engine is the CTM's; the LSTM always runs this module's plain autograd path.
    fast_backward: bool = False

    def __init__(self, config: CTMConfig | None = None, hidden: int | None = None) -> None:
        super().__init__()
        config = CTMConfig() if config is None else config
        if not isinstance(config, CTMConfig):
            raise TypeError(f"config must be a CTMConfig, got {type(config).__name__}")
        self.config = c = config
        self.lstm_config = LSTMConfig(0 if hidden is None else hidden).resolved(c)
        H = self.hidden = self.lstm_config.hidden
        attends = c.input_reader != "direct"
        # The input encoder, as the CTM builds it: backbone -> positional embedding -> tokens (B, N, d_input)
        # (direct: backbone 'none', the input goes to the cell as it is).
        self.backbone = build_backbone(c)
        self.positional_embedding = build_positional_embedding(c.positional_embedding, c.d_backbone)
        self.kv_proj = nn.Sequential(nn.Linear(c.d_backbone, c.d_input), nn.LayerNorm(c.d_input)) if attends else None
        # The core.
        self.q_proj = nn.Linear(H, c.d_input) if attends else None
        self.attention = CrossAttention(c.d_input, c.heads, c.dropout) if attends else None
        # A schedule's token phases read rows of the token table (QAMNIST's indices and operators), through kv_proj.
        self.token_table = TokenTable(c.input_tokens, c.fixed_tokens, c.d_input) if c.input_tokens else None
        # attention: the query from h_t; direct: the input vector at every tick; schedule: phase by phase
        if c.input_reader == "schedule":
            self.reader = ScheduleReader(self.q_proj, self.attention, c.iterations, c.d_input, self.token_table,
                                         token_projection=self.kv_proj)
        elif attends:
            self.reader = AttentionReader(self.q_proj, self.attention, c.iterations)
        else:
            self.reader = DirectReader(c.d_input, c.iterations)
        self.cell = nn.LSTMCell(c.d_input, H)
        self.output_projector = nn.Linear(H, c.out_dims)
        bound = math.sqrt(1 / H)
        self.start_hidden = nn.Parameter(torch.empty(H).uniform_(-bound, bound))  # h_0
        self.start_cell = nn.Parameter(torch.empty(H).uniform_(-bound, bound))  # c_0

    # ------------------------------------------------------------------------------------------ the tick

    def tick(self, state: LSTMState, inputs: AttentionInputs | DirectInputs | ScheduleInputs, t: int
             ) -> tuple[LSTMState, TickOutput]:
        """Internal tick t (from 0): the four steps of the module docstring."""
        o, attention = self.reader.read(state.h, inputs, t)  # (B, d_input), (B, heads, N) (direct: (B, 1, 0))
        h, c = self.cell(o, (state.h, state.c))  # (B, H) each
        logits = self.output_projector(h)  # (B, C)
        return LSTMState(h, c), TickOutput(logits, self.certainty(logits), c, h, attention, state.h, h)

    def start(self, tokens: Any) -> tuple[LSTMState, AttentionInputs | DirectInputs | ScheduleInputs]:
        """Before the first tick: keys/values of the tokens (B, N, d_input) (direct: the input (B, d_input);
        schedule: each phase's, encoded) and the learned start state."""
        inputs = self.reader.start(tokens, self.start_hidden.dtype)
        B = inputs.batch
        return LSTMState(self.start_hidden.expand(B, -1), self.start_cell.expand(B, -1)), inputs

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the parameters (what inputs must match)."""
        return self.start_hidden.dtype

    def clamp_decay_(self) -> None:
        """Nothing to clamp: the LSTM has no synchronisation decays (kept so training treats both alike)."""

    def attach_decay_clamp(self, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to attach: no decays (see `clamp_decay_`); returns None where the CTM returns a handle."""
        return None

    def model_options(self) -> dict[str, Any]:
        """What a run directory records to rebuild this model (`ctm.models`): the width."""
        return self.lstm_config.to_dict()

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, parameters={self.num_parameters():,}"


# -------------------------------------------------------------------------------------- parameter matching


def _count(build) -> int:
    """Parameters of the module `build()` makes, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def ctm_parameters(config: CTMConfig) -> int:
    """`ContinuousThoughtMachine(config).num_parameters()`, without allocating the model."""
    return _count(lambda: ContinuousThoughtMachine(config))


def lstm_parameters(config: CTMConfig, hidden: int) -> int:
    """`LSTMBaseline(config, hidden).num_parameters()`, without allocating the model."""
    return _count(lambda: LSTMBaseline(config, hidden))


def lstm_width_for(config: CTMConfig, target: int | None = None) -> int:
    """The width H whose LSTMBaseline has the parameter count closest to `target` (default: the CTM's).

    The count grows with H, so a bisection finds the first H at or above the target; the answer is it or the
    width below it, whichever is closer (the smaller one on a tie).
    """
    target = ctm_parameters(config) if target is None else target
    lo, hi = 1, 2
    while lstm_parameters(config, hi) < target:
        lo, hi = hi, 2 * hi
    while lo < hi:  # the first H in [lo, hi] with count >= target
        mid = (lo + hi) // 2
        if lstm_parameters(config, mid) < target:
            lo = mid + 1
        else:
            hi = mid
    if lo > 1 and target - lstm_parameters(config, lo - 1) <= lstm_parameters(config, lo) - target:
        return lo - 1
    return lo


def matching_summary(config: CTMConfig, hidden: int) -> str:
    """One line: the LSTM's width and parameters against the CTM's, e.g. for a training run's start."""
    n_lstm, n_ctm = lstm_parameters(config, hidden), ctm_parameters(config)
    return (f"LSTM baseline: {n_lstm:,} parameters (hidden {hidden}), the CTM of this config {n_ctm:,} "
            f"({100 * (n_lstm - n_ctm) / n_ctm:+.2f}%); {config.iterations} ticks")
