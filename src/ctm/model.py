"""The Continuous Thought Machine.

Symbols as in the paper: T internal ticks, D neurons (d_model), M memory length (each neuron's trace of
pre-activations), B batch, N attention tokens (the backbone's H' x W' grid), C classes.

Per tick t the model
  1. reads the action synchronisation S_action of the last n_synch_action neurons,
  2. turns it into a query and attends over the image tokens (keys/values fixed for the whole forward),
  3. runs the synapses on [attention output, post-activations z_t] to get pre-activations a_t,
  4. pushes a_t into each neuron's FIFO trace of the last M pre-activations,
  5. runs every neuron's private MLP (the neuron-level models) on its trace to get z_{t+1},
  6. reads the output synchronisation S_out of the first n_synch_out neurons and projects it to logits,
  7. reports certainty = 1 - normalised entropy of those logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CTMConfig

MAX_DECAY = 15.0  # decay rates are clamped to [0, MAX_DECAY]


class Tracking(NamedTuple):
    """Per-tick internals for visualisation; tensors on the model's device, ticks first."""

    pre_activations: Tensor  # (T, B, D) the newest trace entry a_t
    post_activations: Tensor  # (T, B, D) z_{t+1}
    attention: Tensor  # (T, B, heads, N) attention weights per head
    synchronisation_out: Tensor  # (T, B, synch_size_out)
    synchronisation_action: Tensor  # (T, B, synch_size_action)
    token_grid: tuple[int, int]  # (H', W'): attention[..., n] is token (n // W', n % W')


class _CTMOutputBase(NamedTuple):
    predictions: Tensor  # (B, C, T) logits per tick
    certainties: Tensor  # (B, 2, T) [normalised entropy, 1 - normalised entropy]
    synchronisation_out: Tensor  # (B, synch_size_out) at the last tick


class CTMOutput(_CTMOutputBase):
    """`(predictions, certainties, synchronisation_out)`, unpackable like the seed's 3-tuple.

    `.tracking` holds a `Tracking` when the forward ran with `track=True`, else None.
    """

    tracking: Tracking | None

    def __new__(cls, predictions: Tensor, certainties: Tensor, synchronisation_out: Tensor,
                tracking: Tracking | None = None) -> CTMOutput:
        self = super().__new__(cls, predictions, certainties, synchronisation_out)
        self.tracking = tracking
        return self


def normalised_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim, divided by log(C): 0 is one-hot, 1 is uniform."""
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return entropy / math.log(logits.shape[-1])


class SuperLinear(nn.Module):
    """D private linear maps, one per neuron: (B, D, in_dims) -> (B, D, out_dims).

    Weights are stored as (in_dims, out_dims, D) and biases as (1, D, out_dims), the seed's layout.
    """

    def __init__(self, in_dims: int, out_dims: int, n_neurons: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dims + out_dims)
        self.w1 = nn.Parameter(torch.empty(in_dims, out_dims, n_neurons).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(1, n_neurons, out_dims))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bdm,mhd->bdh", x, self.w1) + self.b1

    def extra_repr(self) -> str:
        m, h, d = self.w1.shape
        return f"in_dims={m}, out_dims={h}, neurons={d}"


class NeuronLevelModels(nn.Module):
    """Each neuron's private two-layer MLP over its trace: (B, D, M) -> (B, D).

    SuperLinear -> GLU -> SuperLinear -> GLU, with memory_hidden_dims hidden units per neuron.
    """

    def __init__(self, memory_length: int, hidden: int, n_neurons: int) -> None:
        super().__init__()
        self.first = SuperLinear(memory_length, 2 * hidden, n_neurons)
        self.second = SuperLinear(hidden, 2, n_neurons)

    def forward(self, trace: Tensor) -> Tensor:
        h = F.glu(self.first(trace), dim=-1)  # (B, D, hidden)
        return F.glu(self.second(h), dim=-1).squeeze(-1)  # (B, D)


class CrossAttention(nn.Module):
    """Multi-head attention of one query per sample over fixed image tokens.

    Same parameters and function as `nn.MultiheadAttention(d, heads, batch_first=True)` with a single
    query, split so that keys and values are projected once per forward instead of once per tick.
    """

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        # nn.MultiheadAttention's initialisation: xavier on the packed projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def project_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, d) tokens -> keys and values, each (B, heads, N, d / heads)."""
        d = tokens.shape[-1]
        w_k, w_v = self.in_proj.weight[d:2 * d], self.in_proj.weight[2 * d:]
        b_k, b_v = self.in_proj.bias[d:2 * d], self.in_proj.bias[2 * d:]
        b, n, _ = tokens.shape
        k = F.linear(tokens, w_k, b_k).view(b, n, self.heads, -1).transpose(1, 2)
        v = F.linear(tokens, w_v, b_v).view(b, n, self.heads, -1).transpose(1, 2)
        return k, v

    def forward(self, query: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(B, d) query against projected keys/values -> output (B, d) and weights (B, heads, N)."""
        b, d = query.shape
        q = F.linear(query, self.in_proj.weight[:d], self.in_proj.bias[:d])
        q = q.view(b, self.heads, 1, -1)  # (B, h, 1, d/h)
        scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2)  # (B, h, 1, N)
        weights = scores.softmax(dim=-1)
        out = (weights @ v).view(b, d)  # (B, d)
        return self.out_proj(out), weights.squeeze(2)


class ContinuousThoughtMachine(nn.Module):
    """A CTM image classifier: conv backbone -> tokens, then T ticks of attention, synapses,
    neuron-level models and synchronisation. `forward(x)` returns a `CTMOutput`.
    """

    def __init__(self, config: CTMConfig | None = None) -> None:
        super().__init__()
        config = CTMConfig() if config is None else config
        if not isinstance(config, CTMConfig):
            raise TypeError(f"config must be a CTMConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.backbone = nn.Sequential(
            nn.Conv2d(c.in_channels, c.d_input, kernel_size=3, padding=1),
            nn.BatchNorm2d(c.d_input),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c.d_input, c.d_input, kernel_size=3, padding=1),
            nn.BatchNorm2d(c.d_input),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.kv_proj = nn.Sequential(nn.Linear(c.d_input, c.d_input), nn.LayerNorm(c.d_input))
        self.q_proj = nn.Linear(c.synch_size_action, c.d_input)
        self.attention = CrossAttention(c.d_input, c.heads)
        self.synapses = nn.Sequential(
            nn.Linear(c.d_input + c.d_model, 2 * c.d_model), nn.GLU(), nn.LayerNorm(c.d_model)
        )
        self.neuron_level_models = NeuronLevelModels(c.memory_length, c.memory_hidden_dims, c.d_model)

        self.start_activated_state = nn.Parameter(
            torch.empty(c.d_model).uniform_(-math.sqrt(1 / c.d_model), math.sqrt(1 / c.d_model))
        )
        bound = math.sqrt(1 / (c.d_model + c.memory_length))
        self.start_trace = nn.Parameter(torch.empty(c.d_model, c.memory_length).uniform_(-bound, bound))

        # Synchronisation: all pairs i <= j of the first n_synch_out (output) and the last
        # n_synch_action (action) neurons, with one learnable decay rate per pair.
        self.decay_params_out = nn.Parameter(torch.zeros(c.synch_size_out))
        self.decay_params_action = nn.Parameter(torch.zeros(c.synch_size_action))
        for kind, n, offset in (("out", c.n_synch_out, 0), ("action", c.n_synch_action, c.d_model - c.n_synch_action)):
            left, right = torch.triu_indices(n, n)
            self.register_buffer(f"synch_{kind}_left", left + offset, persistent=False)
            self.register_buffer(f"synch_{kind}_right", right + offset, persistent=False)

        self.output_projector = nn.Linear(c.synch_size_out, c.out_dims)

    # ---------------------------------------------------------------- helpers

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"parameters={self.num_parameters():,}"

    @torch.no_grad()
    def clamp_decay_(self) -> None:
        """Clamp the decay parameters into [0, MAX_DECAY] in place; call after each optimiser step."""
        self.decay_params_out.clamp_(0, MAX_DECAY)
        self.decay_params_action.clamp_(0, MAX_DECAY)

    def attach_decay_clamp(self, optimizer: torch.optim.Optimizer):
        """Clamp the decay parameters after every `optimizer.step()`; returns the hook's handle.

        The forward always uses rates clamped to [0, MAX_DECAY], so this only keeps the stored
        parameters there too (as the seed does), which keeps them from drifting where no gradient
        would bring them back.
        """
        return optimizer.register_step_post_hook(lambda *_: self.clamp_decay_())

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming what is wrong with an input batch, before any torch op sees it."""
        c = self.config.in_channels
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, {c}, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
            raise ValueError(f"expected input of shape (B, {c}, H, W), got shape {tuple(x.shape)}{hint}")
        b, ch, h, w = x.shape
        if ch != c:
            raise ValueError(
                f"expected {c} input channel(s) (CTMConfig.in_channels), got {ch} in shape {tuple(x.shape)}"
            )
        if b < 1:
            raise ValueError("expected a batch of at least one image, got an empty batch")
        if h < 4 or w < 4:
            raise ValueError(f"images must be at least 4x4 (two 2x2 poolings), got {h}x{w}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image tensor, got {x.dtype} (use x.float() / 255)")

    def _decay_rates(self) -> tuple[Tensor, Tensor]:
        # Straight-through clamp: the forward sees the clamped rate, the gradient flows as if unclamped
        # (the seed clamps the parameters in place before using them). No writes to parameters here.
        def rate(p: Tensor) -> Tensor:
            clamped = p + (p.clamp(0, MAX_DECAY) - p).detach()
            return torch.exp(-clamped)

        return rate(self.decay_params_out), rate(self.decay_params_action)

    def compute_features(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, H, W) images -> (B, N, d_input) key/value tokens and the token grid (H', W')."""
        features = self.backbone(x)  # (B, d_input, H', W')
        grid = (features.shape[-2], features.shape[-1])
        return self.kv_proj(features.flatten(2).transpose(1, 2)), grid

    def certainty(self, logits: Tensor) -> Tensor:
        """(B, C) logits -> (B, 2): [normalised entropy, 1 - normalised entropy]."""
        ne = normalised_entropy(logits)
        return torch.stack((ne, 1 - ne), dim=-1)

    # ---------------------------------------------------------------- forward

    def forward(self, x: Tensor, track: bool = False) -> CTMOutput:
        """Run T ticks on a batch of images (B, C, H, W)."""
        self.check_input(x)
        c = self.config
        B = x.shape[0]
        tokens, grid = self.compute_features(x)  # (B, N, d_input)
        k, v = self.attention.project_kv(tokens)  # (B, h, N, d_input / h) each
        r_out, r_action = self._decay_rates()  # (P_out,), (P_action,)

        z = self.start_activated_state.unsqueeze(0).expand(B, -1)  # (B, D) post-activations
        trace = self.start_trace.unsqueeze(0).expand(B, -1, -1)  # (B, D, M) pre-activations
        # Recursive synchronisation: alpha_t = r * alpha_{t-1} + z_i z_j, beta_t = r * beta_{t-1} + 1,
        # S_t = alpha_t / sqrt(beta_t). beta does not depend on the data, so it is kept per pair only.
        # The output accumulators start from the start state (as in the seed); the action ones start
        # empty, so their first tick gives alpha = z_i z_j, beta = 1.
        alpha_out = z[:, self.synch_out_left] * z[:, self.synch_out_right]  # (B, P_out)
        beta_out = torch.ones_like(r_out)
        alpha_action = z.new_zeros(B, c.synch_size_action)
        beta_action = torch.zeros_like(r_action)

        predictions, certainties = [], []
        track_lists: tuple[list[Tensor], ...] = ([], [], [], [], [])
        for _ in range(c.iterations):
            alpha_action = r_action * alpha_action + z[:, self.synch_action_left] * z[:, self.synch_action_right]
            beta_action = r_action * beta_action + 1
            synch_action = alpha_action / beta_action.sqrt()  # (B, P_action)

            attn_out, attn_weights = self.attention(self.q_proj(synch_action), k, v)  # (B, d_in), (B, h, N)
            pre = self.synapses(torch.cat((attn_out, z), dim=-1))  # (B, D)
            trace = torch.cat((trace[:, :, 1:], pre.unsqueeze(-1)), dim=-1)  # (B, D, M)
            z = self.neuron_level_models(trace)  # (B, D)

            alpha_out = r_out * alpha_out + z[:, self.synch_out_left] * z[:, self.synch_out_right]
            beta_out = r_out * beta_out + 1
            synch_out = alpha_out / beta_out.sqrt()  # (B, P_out)

            logits = self.output_projector(synch_out)  # (B, C)
            predictions.append(logits)
            certainties.append(self.certainty(logits))
            if track:
                for store, value in zip(track_lists, (pre, z, attn_weights, synch_out, synch_action), strict=True):
                    store.append(value.detach())

        tracking = None
        if track:
            tracking = Tracking(*(torch.stack(s) for s in track_lists), token_grid=grid)
        return CTMOutput(torch.stack(predictions, -1), torch.stack(certainties, -1), synch_out, tracking)


CTM = ContinuousThoughtMachine
