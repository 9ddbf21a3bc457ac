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

import contextlib
import math
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CTMConfig

MAX_DECAY = 15.0  # decay rates are clamped to [0, MAX_DECAY]
_INFERENCE_CHUNK = 64  # images per backbone call in inference (see compute_features)


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


class ThinkOutput(NamedTuple):
    """What `ContinuousThoughtMachine.think` returns, one entry per sample."""

    prediction: Tensor  # (B,) predicted class at the halting tick
    ticks: Tensor  # (B,) ticks used, 1 .. max_ticks: the answer is forward's output at tick index ticks - 1
    certainty: Tensor  # (B,) certainty (1 - normalised entropy) at the halting tick
    logits: Tensor  # (B, C) logits at the halting tick


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


# ---------------------------------------------------------------------------------------------------------
# The tick loop, laid out for speed.
#
# `ContinuousThoughtMachine.forward` computes the seed's function, but organised so that a tick is ~15
# large-ish kernels instead of ~60 small ones:
#   * everything that does not change between ticks is folded once per forward: keys/values, the query
#     projection into the attention's query weights (with 1/sqrt(beta_t) and the attention scale), the
#     attention's output projection into the synapses, the NLM weights in neuron-major layout;
#   * the action synchronisation keeps all n x n products (one outer product, no index gathers) with
#     symmetric weights, so the pairs i <= j of the seed carry their full weight;
#   * the trace is a (D, M + T, B) sequence: tick t reads the window [t + 1, t + M] (no cat), and each
#     neuron's MLP is a contiguous batched matmul over neurons;
#   * the output synchronisation, logits and certainties do not feed back into the loop, so they are
#     computed once after it for all ticks (the decay recursion becomes one matmul with a (T, T) decay
#     matrix per pair);
#   * training runs a hand-written backward (`_TickFunction`), which saves what it needs in buffers
#     that are reused across steps and batches the weight gradients over ticks. `fast_backward = False`
#     selects plain autograd through the same math (also used under torch.compile).
# ---------------------------------------------------------------------------------------------------------


class _TickParams(NamedTuple):
    """The tensors the tick loop reads, built from the parameters once per forward."""

    kT: Tensor  # (B*h, d/h, N) keys, transposed
    v: Tensor  # (B*h, N, d/h) values
    A: Tensor  # (T, d, na*na) query weights of tick t on the action accumulators (symmetric over pairs)
    cq: Tensor  # (d,) query bias
    r: Tensor  # (na*na,) action decay rates, symmetric
    Wz: Tensor  # (2D, D) synapse weights on z
    Wo: Tensor  # (2D, d) synapse weights on the attention output (out_proj folded in)
    bs: Tensor  # (2D,) synapse bias (out_proj bias folded in)
    gamma: Tensor  # (D,) synapse LayerNorm weight
    beta: Tensor  # (D,) synapse LayerNorm bias
    W1: Tensor  # (D, 2H, M) first NLM layer, neuron-major
    b1: Tensor  # (D, 2H, 1)
    W2: Tensor  # (D, 2, H) second NLM layer
    b2: Tensor  # (D, 2, 1)
    z0: Tensor  # (D,) start post-activations
    trace0: Tensor  # (D, M) start trace


class _Sizes(NamedTuple):
    T: int
    D: int
    M: int
    H: int
    B: int
    heads: int
    dh: int
    N: int
    na: int

    @classmethod
    def of(cls, p: _TickParams, heads: int) -> _Sizes:
        T, d, na2 = p.A.shape
        D, H2, M = p.W1.shape
        Bh, dh, N = p.kT.shape
        return cls(T, D, M, H2 // 2, Bh // heads, heads, dh, N, math.isqrt(na2))


def _forward_buffers(s: _Sizes, like: Tensor) -> dict[str, Tensor]:
    """What the hand-written backward needs from the forward, one slot per tick."""
    T, D, H, B, na, d = s.T, s.D, s.H, s.B, s.na, s.heads * s.dh
    new = like.new_empty
    return {
        "alpha": new(T, B, na * na), "q": new(T, B, d), "w": new(T, B * s.heads, 1, s.N), "o": new(T, B, d),
        # GLU inputs [a, g] during the loop, then (in place) their derivatives [sigmoid(g), y (1 - sigmoid(g))]
        # for y = a * sigmoid(g): see _glu_jacobians
        "JL": new(T, B, 2, D), "g": new(T, B, D), "mean": new(T, B, 1), "rstd": new(T, B, 1),
        "J1": new(T, D, 2 * H, B), "u": new(T, D, H, B), "J2": new(T, D, 2, B),
    }


def _backward_buffers(s: _Sizes, like: Tensor) -> dict[str, Tensor]:
    T, D, H, B, na, d = s.T, s.D, s.H, s.B, s.na, s.heads * s.dh
    new = like.new_empty
    return {
        "dh1": new(T, D, 2 * H, B), "dh2": new(T, D, 2, B), "dlin": new(T, B, 2 * D), "dq": new(T, B, d),
        "ds": new(T, B * s.heads, 1, s.N), "do": new(T, B, d), "dacc": new(T, B, na * na),
        "dseq": new(D, s.M + T, B),
    }


class _WorkspacePool:
    """Keeps the hand-written backward's buffers between training steps (~55 MB at the seed's sizes and
    batch 64, growing linearly with the batch).

    Allocating them fresh each step costs page faults and cache misses on first touch: reusing them made
    a batch-64 training step 5-10% faster on a 2-core VM. A workspace is taken by a forward and given
    back at the end of its backward; a forward whose graph is dropped without a backward lets its
    workspace be garbage-collected. At most `keep` workspaces (one per shape) are held.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._free: dict[tuple, dict[str, Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple) -> dict[str, Tensor] | None:
        with self._lock:
            return self._free.pop(key, None)

    def give(self, key: tuple, workspace: dict[str, Tensor]) -> None:
        with self._lock:
            self._free.pop(key, None)
            self._free[key] = workspace
            while len(self._free) > self.keep:
                self._free.pop(next(iter(self._free)))

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    # Copies and pickles of a model start with an empty pool.
    def __deepcopy__(self, memo) -> _WorkspacePool:
        return _WorkspacePool(self.keep)

    def __getstate__(self) -> dict:
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["keep"])


def _per_tick(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """[(a[t], b[t], ...) for each tick t]: the views of one tick, made once up front."""
    return list(zip(*(x.unbind(0) for x in tensors), strict=True))


def _tick_loop(p: _TickParams, s: _Sizes, eps: float, saved: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Run the T ticks without autograd. Returns Z (T + 1, D, B): z_0 .. z_T, and the pre-activation
    sequence seq (D, M + T, B): the start trace, then a_1 .. a_T. With `saved`, fills its buffers."""
    T, D, M, H, B, heads, dh, N, na = s
    d, na2 = heads * dh, na * na
    new = p.kT.new_empty
    seq = new(D, M + T, B)
    seq[:, :M] = p.trace0.unsqueeze(-1)
    Z = new(T + 1, D, B)
    Z[0] = p.z0.unsqueeze(-1)
    # Per tick: z_t, its action neurons (B, na), the slot for z_{t+1}, the trace window, the slot for
    # the new pre-activation (B, D view of seq), the query weights.
    z_in = Z[:T].unbind(0)
    zA_in = Z[:T, D - na:].transpose(1, 2).unsqueeze(3).unbind(0)  # (B, na, 1)
    z_out = Z[1:].unsqueeze(2).unbind(0)  # (D, 1, B)
    windows = [seq[:, t + 1:t + 1 + M] for t in range(T)]
    pre_out = seq[:, M:].permute(1, 2, 0).unbind(0)  # (B, D)
    A_t = p.A.transpose(1, 2).unbind(0)  # (na*na, d)
    WzT, WoT = p.Wz.t(), p.Wo.t()
    outer = new(B, na, na)
    outer_flat = outer.view(B, na2)
    if saved is None:
        mean, rstd = new(B, 1), new(B, 1)
        scratch = (new(B, d), new(B * heads, 1, N), new(B, d))
    else:
        ticks = _per_tick(saved["alpha"], saved["q"], saved["w"], saved["o"], saved["g"], saved["JL"],
                          saved["mean"], saved["rstd"], saved["u"], saved["J1"], saved["J2"])
    alpha = p.kT.new_zeros(B, na2)
    for t in range(T):
        z, zA = z_in[t], zA_in[t]
        torch.mul(zA, zA.transpose(1, 2), out=outer)
        if saved is None:
            alpha = torch.addcmul(outer_flat, p.r, alpha)
            q, w, o = scratch
        else:
            alpha_t, q, w, o, g, lin, mean, rstd, u, h1, h2 = ticks[t]
            alpha = torch.addcmul(outer_flat, p.r, alpha, out=alpha_t)
        # attention of the query on the fixed keys/values
        torch.addmm(p.cq, alpha, A_t[t], out=q)
        torch.ops.aten._softmax.out(torch.bmm(q.view(-1, 1, dh), p.kT), -1, False, out=w)
        torch.bmm(w, p.v, out=o.view(-1, 1, dh))
        # synapses: Linear -> GLU -> LayerNorm, written into the sequence
        if saved is None:
            g = F.glu(torch.addmm(torch.addmm(p.bs, z.t(), WzT), o, WoT), -1)
        else:
            torch.addmm(torch.addmm(p.bs, z.t(), WzT), o, WoT, out=lin.view(B, 2 * D))
            torch.ops.aten.glu.out(lin.view(B, 2 * D), -1, out=g)
            _glu_jacobians(lin, g.unsqueeze(1), 1)
        torch.ops.aten.native_layer_norm.out(g, (D,), p.gamma, p.beta, eps, out0=pre_out[t], out1=mean, out2=rstd)
        # neuron-level models on the window of the last M pre-activations
        if saved is None:
            h1 = torch.baddbmm(p.b1, p.W1, windows[t])  # (D, 2H, B)
            torch.ops.aten.glu.out(torch.baddbmm(p.b2, p.W2, F.glu(h1, 1)), 1, out=z_out[t])
        else:
            torch.baddbmm(p.b1, p.W1, windows[t], out=h1)
            torch.ops.aten.glu.out(h1, 1, out=u)
            torch.baddbmm(p.b2, p.W2, u, out=h2)
            _glu_jacobians(h1.view(D, 2, H, B), u.unsqueeze(1), 1)
            torch.ops.aten.glu.out(h2, 1, out=z_out[t])
            _glu_jacobians(h2.view(D, 2, 1, B), z_out[t].view(D, 1, 1, B), 1)
    return Z, seq


def _glu_jacobians(h: Tensor, y: Tensor, dim: int) -> None:
    """Overwrite the GLU input h = [a, g] (halves along `dim`) with [sigmoid(g), y * (1 - sigmoid(g))]:
    the derivatives of y = a * sigmoid(g) by a and by g."""
    a, g = h.unbind(dim)
    s = torch.sigmoid(g, out=a)
    torch.addcmul(y.squeeze(dim), y.squeeze(dim), s, value=-1, out=g)


def _tick_backward(dZ: Tensor, p: _TickParams, s: _Sizes, Z: Tensor, seq: Tensor, saved: dict[str, Tensor],
                   buf: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """Gradients of all `_TickParams` fields from dZ (T, D, B), the gradient of z_1 .. z_T."""
    T, D, M, H, B, heads, dh, N, na = s
    d = heads * dh
    W1t = p.W1.transpose(1, 2).contiguous()  # (D, M, 2H)
    W2t = p.W2.transpose(1, 2).contiguous()  # (D, H, 2)
    # The accumulator gradient is symmetric over (i, j); carry twice it (weights 2A) and halve at the end.
    A2 = (2 * p.A).unbind(0)
    vT, kTT = p.v.transpose(1, 2), p.kT.transpose(1, 2)
    dseq = buf["dseq"].zero_()
    dW1 = p.W1.new_zeros(D, M, 2 * H)
    dh1s, dh2s, dlins, dqs, dss, dos, daccs = (buf[k] for k in ("dh1", "dh2", "dlin", "dq", "ds", "do", "dacc"))
    ticks = _per_tick(saved["J2"], saved["J1"].view(T, D, 2, H, B), saved["g"], saved["mean"], saved["rstd"],
                      saved["JL"], saved["w"], dh2s, dh1s.view(T, D, 2, H, B), dlins.view(T, B, 2, D), dqs, dss,
                      dos, daccs, dZ.transpose(1, 2), Z[:T, D - na:].transpose(1, 2).unsqueeze(3))
    windows = [seq[:, t + 1:t + 1 + M] for t in range(T)]
    dseq_windows = [dseq[:, t + 1:t + 1 + M] for t in range(T)]
    dpre = dseq[:, M:].permute(1, 2, 0).unbind(0)  # (B, D) gradient of each tick's pre-activation
    dacc = None
    dz = ticks[T - 1][14]  # (B, D): gradient of z_T
    for t in reversed(range(T)):
        j2, j1, g, mean, rstd, jl, w, dh2, dh1, dlin, dq, ds, do, dacc_t, _, zA = ticks[t]
        # neuron-level models
        torch.mul(dz.t().unsqueeze(1), j2, out=dh2)
        torch.mul(torch.bmm(W2t, dh2).unsqueeze(1), j1, out=dh1)
        dh1 = dh1.view(D, 2 * H, B)
        dW1.baddbmm_(windows[t], dh1.transpose(1, 2))
        dseq_windows[t] += torch.bmm(W1t, dh1)
        # synapses
        dg = torch.ops.aten.native_layer_norm_backward(dpre[t], g, (D,), mean, rstd, p.gamma, p.beta,
                                                       (True, False, False))[0]
        torch.mul(dg.unsqueeze(1), jl, out=dlin)
        dlin = dlin.view(B, 2 * D)
        # attention
        torch.mm(dlin, p.Wo, out=do)
        torch.ops.aten._softmax_backward_data.out(torch.bmm(do.view(-1, 1, dh), vT), w, -1, do.dtype,
                                                  grad_input=ds)
        torch.bmm(ds, kTT, out=dq.view(-1, 1, dh))
        # action synchronisation accumulators: alpha_t = outer(z_t) + r * alpha_{t-1}
        if dacc is None:
            dacc = torch.mm(dq, A2[t], out=dacc_t)
        else:
            dacc = torch.addmm(dacc * p.r, dq, A2[t], out=dacc_t)
        # gradient of z_t: synapses, action synchronisation, and the readout
        dz = torch.addmm(ticks[t - 1][14], dlin, p.Wz) if t > 0 else torch.mm(dlin, p.Wz)
        dz[:, D - na:] += torch.bmm(dacc.view(B, na, na), zA).view(B, na)

    dlin_all = dlins.view(T * B, 2 * D)
    d_Wz = dlin_all.t() @ Z[:T].transpose(1, 2).reshape(T * B, D)
    d_Wo = dlin_all.t() @ saved["o"].view(T * B, d)
    d_bs = dlin_all.sum(0)
    dpre_all = dseq[:, M:].permute(1, 2, 0)  # (T, B, D)
    xhat = (saved["g"] - saved["mean"]) * saved["rstd"]
    d_gamma, d_beta = (dpre_all * xhat).sum((0, 1)), dpre_all.sum((0, 1))
    Bh = B * heads
    d_kT = torch.bmm(saved["q"].view(T, Bh, dh).permute(1, 2, 0), dss.view(T, Bh, N).transpose(0, 1))
    d_v = torch.bmm(saved["w"].view(T, Bh, N).permute(1, 2, 0), dos.view(T, Bh, dh).transpose(0, 1))
    d_A = torch.bmm(dqs.transpose(1, 2), saved["alpha"])
    d_cq = dqs.sum((0, 1))
    d_r = (saved["alpha"][:-1] * daccs[1:]).sum((0, 1)) * 0.5
    d_b1 = dh1s.sum(-1, keepdim=True).sum(0)
    d_W2 = torch.bmm(dh2s.view(T * D, 2, B), saved["u"].view(T * D, H, B).transpose(1, 2)).view(T, D, 2, H).sum(0)
    d_b2 = dh2s.sum(-1, keepdim=True).sum(0)
    d_z0 = dz.sum(0)
    d_trace0 = dseq[:, :M].sum(-1)
    return (d_kT, d_v, d_A, d_cq, d_r, d_Wz, d_Wo, d_bs, d_gamma, d_beta, dW1.transpose(1, 2), d_b1, d_W2, d_b2,
            d_z0, d_trace0)


class _TickFunction(torch.autograd.Function):
    """The tick loop with a hand-written backward: outputs z_1 .. z_T (T, D, B), and for tracking the
    pre-activation sequence, the attention weights and the action accumulators (not differentiable)."""

    @staticmethod
    def forward(ctx, pool: _WorkspacePool, eps: float, heads: int, track: bool, *tensors: Tensor):
        p = _TickParams(*tensors)
        s = _Sizes.of(p, heads)
        key = (tuple(s), p.kT.dtype, p.kT.device)
        workspace = pool.take(key) or {"fwd": _forward_buffers(s, p.kT)}
        Z, seq = _tick_loop(p, s, eps, workspace["fwd"])
        ctx.pool, ctx.key, ctx.workspace, ctx.sizes, ctx.Z, ctx.seq = pool, key, workspace, s, Z, seq
        ctx.save_for_backward(*tensors)
        if not track:
            return Z[1:]
        extras = (seq, workspace["fwd"]["w"].clone(), workspace["fwd"]["alpha"].clone())
        ctx.mark_non_differentiable(*extras)
        return (Z[1:], *extras)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dZ: Tensor, *_unused):
        if ctx.workspace is None:
            raise RuntimeError(
                "backward through the same CTM forward twice (retain_graph=True) is not supported by the "
                "hand-written backward; set model.fast_backward = False to use autograd")
        p = _TickParams(*ctx.saved_tensors)
        workspace = ctx.workspace
        if "bwd" not in workspace:
            workspace["bwd"] = _backward_buffers(ctx.sizes, p.kT)
        grads = _tick_backward(dZ.contiguous(), p, ctx.sizes, ctx.Z, ctx.seq, workspace["fwd"], workspace["bwd"])
        ctx.workspace = ctx.Z = ctx.seq = None
        ctx.pool.give(ctx.key, workspace)
        return (None, None, None, None, *grads)


def _tick_loop_autograd(p: _TickParams, s: _Sizes, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same ticks as `_tick_loop`, in plain differentiable ops (double backward, torch.compile).

    Returns z_1 .. z_T (T, D, B), the pre-activation sequence (D, M + T, B), the attention weights
    (T, B*h, 1, N) and the action accumulators (T, B, na*na)."""
    T, D, M, H, B, heads, dh, N, na = s
    z = p.z0.unsqueeze(-1).expand(D, B)
    trace = p.trace0.unsqueeze(-1).expand(D, M, B)
    alpha = p.kT.new_zeros(B, na * na)
    zs, pres, ws, alphas = [], [], [], []
    for t in range(T):
        zA = z[D - na:].t()
        alpha = torch.addcmul((zA.unsqueeze(2) * zA.unsqueeze(1)).reshape(B, na * na), p.r, alpha)
        q = torch.addmm(p.cq, alpha, p.A[t].t())
        w = torch.bmm(q.view(-1, 1, dh), p.kT).softmax(-1)
        o = torch.bmm(w, p.v).view(B, -1)
        lin = torch.addmm(torch.addmm(p.bs, z.t(), p.Wz.t()), o, p.Wo.t())
        pre = F.layer_norm(F.glu(lin, -1), (D,), p.gamma, p.beta, eps)
        trace = torch.cat((trace[:, 1:], pre.t().unsqueeze(1)), 1)
        z = F.glu(torch.baddbmm(p.b2, p.W2, F.glu(torch.baddbmm(p.b1, p.W1, trace), 1)), 1).view(D, B)
        zs.append(z)
        pres.append(pre.t())
        ws.append(w)
        alphas.append(alpha)
    seq = torch.cat((p.trace0.unsqueeze(-1).expand(D, M, B), torch.stack(pres, 1)), 1)
    return torch.stack(zs), seq, torch.stack(ws), torch.stack(alphas)


def _straight_through_clamp(p: Tensor) -> Tensor:
    # The forward sees the clamped rate, the gradient flows as if unclamped (the seed clamps the
    # parameters in place before using them). No writes to parameters here.
    return p + (p.clamp(0, MAX_DECAY) - p).detach()


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """BatchNorm(conv(x)), channels-last; in eval mode BatchNorm is folded into the convolution."""
    weight, bias = conv.weight, conv.bias
    if bn.training or bn.running_mean is None:
        w = weight.to(memory_format=torch.channels_last)
        return bn(conv._conv_forward(x, w, bias))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale if bias is None else (bias - bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    w = (weight * scale.view(-1, 1, 1, 1)).to(memory_format=torch.channels_last)
    return conv._conv_forward(x, w, shift)


def _max_pool_2x2(x: Tensor) -> Tensor:
    """max_pool2d(x, 2, 2) (odd last rows/columns dropped) as elementwise maxima: forward only."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class ContinuousThoughtMachine(nn.Module):
    """A CTM image classifier: conv backbone -> tokens, then T ticks of attention, synapses,
    neuron-level models and synchronisation. `forward(x)` returns a `CTMOutput`.
    """

    #: Train with the hand-written backward of the tick loop (fewer kernels, weight gradients batched over
    #: ticks, buffers reused across steps). Set False on an instance for plain autograd through the same
    #: math: needed for double backward, backward twice through one forward (retain_graph), forward-mode
    #: AD or torch.func transforms. torch.compile always uses the autograd formulation.
    fast_backward: bool = True

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
            # Positions of pair (i, j) and of (j, i) in the flattened n x n products.
            self.register_buffer(f"_synch_{kind}_upper", left * n + right, persistent=False)
            self.register_buffer(f"_synch_{kind}_lower", right * n + left, persistent=False)

        self.output_projector = nn.Linear(c.synch_size_out, c.out_dims)
        self._workspaces = _WorkspacePool()

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

    def release_workspaces(self) -> None:
        """Free the training buffers kept between steps (they are rebuilt by the next training step)."""
        self._workspaces.clear()

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

    def compute_features(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, H, W) images -> (B, N, d_input) key/value tokens and the token grid (H', W')."""
        bb = self.backbone
        h = x.to(memory_format=torch.channels_last)
        independent = not any(bn.training or bn.running_mean is None for bn in (bb[1], bb[5]))
        if torch.is_grad_enabled() or not independent or h.device.type != "cpu":
            features = self._backbone(h, bb[3])
        else:
            # CPU inference with BatchNorm on running statistics: every image is independent, so run the
            # backbone in chunks whose activations stay in cache (about 2x faster at batch 500), pooling
            # with elementwise maxima of strided views (max_pool2d also computes indices).
            features = torch.cat([self._backbone(c, _max_pool_2x2) for c in h.split(_INFERENCE_CHUNK)])
        grid = (features.shape[-2], features.shape[-1])
        return self.kv_proj(features.flatten(2).transpose(1, 2)), grid

    def _backbone(self, h: Tensor, pool) -> Tensor:
        """(B, C, H, W) channels-last images -> (B, d_input, H', W') features."""
        bb = self.backbone
        # conv -> BN -> ReLU -> max-pool, pooled before the ReLU: the two commute, and the ReLU then
        # touches a quarter of the values.
        h = F.relu(pool(_conv_bn(bb[0], bb[1], h)))
        return F.relu(pool(_conv_bn(bb[4], bb[5], h)))

    def certainty(self, logits: Tensor) -> Tensor:
        """(B, C) logits -> (B, 2): [normalised entropy, 1 - normalised entropy]."""
        ne = normalised_entropy(logits)
        return torch.stack((ne, 1 - ne), dim=-1)

    def _tick_params(self, tokens: Tensor, dec_action: Tensor) -> tuple[_TickParams, Tensor]:
        """Fold the parameters into the layout of the tick loop (once per forward, differentiable)."""
        c = self.config
        B, N, d = tokens.shape
        h, T, na = c.heads, c.iterations, c.n_synch_action
        dh = d // h
        W_in, b_in = self.attention.in_proj.weight, self.attention.in_proj.bias
        k, v = F.linear(tokens, W_in[d:], b_in[d:]).split(d, dim=-1)  # (B, N, d) each
        kT = k.reshape(B, N, h, dh).permute(0, 2, 3, 1).reshape(B * h, dh, N)
        v = v.reshape(B, N, h, dh).transpose(1, 2).reshape(B * h, N, dh)

        # Action synchronisation: accumulators over all na x na products, symmetric decay rates.
        upper, lower = self._synch_action_upper, self._synch_action_lower
        rates = dec_action.new_zeros(na * na).index_copy(0, upper, dec_action).index_copy(0, lower, dec_action)
        decay = torch.exp(-torch.arange(T + 1, dtype=rates.dtype, device=rates.device).unsqueeze(1) * rates)
        inv_sqrt_beta = decay[:T].cumsum(0).rsqrt()  # (T, na*na): beta_t = sum_{k <= t} r^k
        # Query of tick t = attention scale * in_proj_q(q_proj(alpha_t / sqrt(beta_t))), as one matrix per
        # tick on the accumulators, half of each off-diagonal pair's weight on (i, j) and half on (j, i).
        scale = dh ** -0.5
        Wq, bq = W_in[:d], b_in[:d]
        half = (Wq @ self.q_proj.weight) * (0.5 * scale)  # (d, P_action)
        A = half.new_zeros(d, na * na).index_copy(1, upper, half).view(d, na, na)
        A = (A + A.transpose(1, 2)).view(d, na * na)
        A = A.unsqueeze(0) * inv_sqrt_beta.unsqueeze(1)  # (T, d, na*na)
        cq = (Wq @ self.q_proj.bias + bq) * scale

        # Synapses on [attention output, z]; the attention's output projection folded in.
        W_syn, b_syn = self.synapses[0].weight, self.synapses[0].bias
        W_att = W_syn[:, :d]
        Wo = W_att @ self.attention.out_proj.weight
        bs = b_syn + W_att @ self.attention.out_proj.bias
        nlm = self.neuron_level_models
        ln = self.synapses[2]
        return _TickParams(
            kT=kT, v=v, A=A, cq=cq, r=decay[1], Wz=W_syn[:, d:], Wo=Wo, bs=bs,
            gamma=ln.weight, beta=ln.bias,
            W1=nlm.first.w1.permute(2, 1, 0).contiguous(), b1=nlm.first.b1.permute(1, 2, 0).contiguous(),
            W2=nlm.second.w1.permute(2, 1, 0).contiguous(), b2=nlm.second.b1.permute(1, 2, 0).contiguous(),
            z0=self.start_activated_state, trace0=self.start_trace,
        ), inv_sqrt_beta

    def _run_ticks(self, p: _TickParams, track: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """z_1 .. z_T (T, D, B); with track also the sequence, attention weights and action accumulators."""
        c = self.config
        s = _Sizes.of(p, c.heads)
        eps = self.synapses[2].eps
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in p)
        compiling = hasattr(torch, "compiler") and torch.compiler.is_compiling()
        if compiling or (needs_grad and not self.fast_backward):  # torch.compile traces functional ops best
            return _tick_loop_autograd(p, s, eps)
        if needs_grad:
            out = _TickFunction.apply(self._workspaces, eps, c.heads, track, *p)
            return (out, None, None, None) if not track else out
        saved = _forward_buffers(s, p.kT) if track else None
        Z, seq = _tick_loop(p, s, eps, saved)
        if not track:
            return Z[1:], None, None, None
        return Z[1:], seq, saved["w"], saved["alpha"]

    # ---------------------------------------------------------------- forward

    def forward(self, x: Tensor, track: bool = False) -> CTMOutput:
        """Run T ticks on a batch of images (B, C, H, W)."""
        self.check_input(x)
        c = self.config
        B, T, M = x.shape[0], c.iterations, c.memory_length
        tokens, grid = self.compute_features(x)  # (B, N, d_input)
        dtype = self.start_trace.dtype
        autocast_off = (torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda")
                        else contextlib.nullcontext())
        with autocast_off:  # under autocast, only the backbone runs in low precision
            dec_out = _straight_through_clamp(self.decay_params_out)
            dec_action = _straight_through_clamp(self.decay_params_action)
            p, inv_sqrt_beta = self._tick_params(tokens.to(dtype), dec_action)
            Zs, seq, attn, alpha = self._run_ticks(p, track)  # Zs: (T, D, B)
            logits, synch = self._readout(Zs, dec_out)  # (B, C, T), (P_out, T, B)
            logp = torch.log_softmax(logits, 1)
            ne = -(logp.exp() * logp).sum(1) / math.log(c.out_dims)  # (B, T)
            certainties = torch.stack((ne, 1 - ne), 1)
        tracking = None
        if track:
            upper = self._synch_action_upper
            synch_action = alpha.detach()[:, :, upper] * inv_sqrt_beta.detach()[:, upper].unsqueeze(1)
            tracking = Tracking(
                pre_activations=seq.detach()[:, M:].permute(1, 2, 0).contiguous(),
                post_activations=Zs.detach().transpose(1, 2).contiguous(),
                attention=attn.detach().reshape(T, B, c.heads, -1),
                synchronisation_out=synch.detach().permute(1, 2, 0).contiguous(),
                synchronisation_action=synch_action,
                token_grid=grid,
            )
        return CTMOutput(logits, certainties, synch[:, -1].t().contiguous(), tracking)

    @torch.no_grad()
    def think(self, x: Tensor, halt_certainty: float, max_ticks: int | None = None) -> ThinkOutput:
        """Adaptive computation: each sample thinks until its certainty reaches `halt_certainty`.

        A sample stops at its first tick t with certainty >= halt_certainty (or at `max_ticks`, default T)
        and answers with its prediction there. Halted samples leave the batch (once they are an eighth
        of it, the still-thinking rows are gathered into smaller tensors), so later ticks cost less. The
        result for each sample is the full forward's output at its halting tick: samples never see each
        other. In training mode the backbone's BatchNorm uses (and updates) batch statistics exactly as
        forward does, so call `model.eval()` first for per-sample answers and untouched running statistics.
        `halt_certainty` > 1 runs every tick; 0 stops every sample after the first.
        """
        self.check_input(x)
        c = self.config
        if isinstance(halt_certainty, bool) or not isinstance(halt_certainty, (int, float)) \
                or math.isnan(halt_certainty):
            raise ValueError(f"halt_certainty must be a number (a certainty in [0, 1]), got {halt_certainty!r}")
        T = c.iterations if max_ticks is None else max_ticks
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= c.iterations:
            raise ValueError(f"max_ticks must be an integer in [1, {c.iterations}] (CTMConfig.iterations), "
                             f"got {max_ticks!r}")
        tokens, _ = self.compute_features(x)
        B, D, M, na, n, heads = x.shape[0], c.d_model, c.memory_length, c.n_synch_action, c.n_synch_out, c.heads
        dtype = self.start_trace.dtype
        autocast_off = (torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda")
                        else contextlib.nullcontext())
        with autocast_off:
            p, _ = self._tick_params(tokens.to(dtype), _straight_through_clamp(self.decay_params_action))
            dh = p.kT.shape[1]
            eps = self.synapses[2].eps
            # Output synchronisation as a running sum: alpha_t = r * alpha_{t-1} + z_i z_j, alpha_{-1} from the
            # start state, S_t = alpha_t / sqrt(beta_t) with beta_t = sum_{k <= t+1} r^k (as in _readout).
            upper = self._synch_out_upper
            dec_out = _straight_through_clamp(self.decay_params_out)
            r_out = torch.exp(-dec_out).unsqueeze(1)  # (P, 1)
            ticks = torch.arange(T + 1, dtype=dtype, device=x.device)
            inv_sqrt_beta = torch.exp(-ticks.unsqueeze(1) * dec_out).cumsum(0)[1:].rsqrt()  # (T, P)
            z0 = self.start_activated_state[:n]
            alpha_out = (z0.unsqueeze(1) * z0.unsqueeze(0)).reshape(-1).index_select(0, upper)
            alpha_out = alpha_out.unsqueeze(1).expand(-1, B).contiguous()  # (P, b)
            W_out, b_out = self.output_projector.weight, self.output_projector.bias.unsqueeze(1)

            # State of the active samples, batch last as in the tick loop.
            kT, v = p.kT, p.v  # (b*h, dh, N), (b*h, N, dh)
            seq = p.kT.new_empty(D, M + T, B)  # start trace, then a_1 .. a_T; column j holds step off + j
            seq[:, :M] = p.trace0.unsqueeze(-1)
            off = 0
            z = p.z0.unsqueeze(-1).expand(D, B)  # (D, b)
            alpha = p.kT.new_zeros(B, na * na)
            rows = torch.arange(B, device=x.device)  # original index of each row of the state
            thinking = torch.ones(B, dtype=torch.bool, device=x.device)  # rows still without an answer
            n_thinking = B

            prediction = torch.empty(B, dtype=torch.long, device=x.device)
            used = torch.empty(B, dtype=torch.long, device=x.device)
            certainty = p.kT.new_empty(B)
            logits_at = p.kT.new_empty(B, c.out_dims)
            for t in range(T):
                b = rows.shape[0]
                zA = z[D - na:].t()
                alpha = torch.addcmul((zA.unsqueeze(2) * zA.unsqueeze(1)).view(b, na * na), p.r, alpha)
                q = torch.addmm(p.cq, alpha, p.A[t].t())
                w = torch.bmm(q.view(-1, 1, dh), kT).softmax(-1)
                o = torch.bmm(w, v).view(b, -1)
                lin = torch.addmm(torch.addmm(p.bs, z.t(), p.Wz.t()), o, p.Wo.t())
                pre = F.layer_norm(F.glu(lin, -1), (D,), p.gamma, p.beta, eps)  # (b, D)
                seq[:, M + t - off] = pre.t()
                h1 = torch.baddbmm(p.b1, p.W1, seq[:, t + 1 - off:t + 1 - off + M])  # (D, 2H, b)
                z = F.glu(torch.baddbmm(p.b2, p.W2, F.glu(h1, 1)), 1).view(D, b)
                zo = z[:n]
                products = (zo.unsqueeze(1) * zo.unsqueeze(0)).view(n * n, b).index_select(0, upper)
                alpha_out = torch.addcmul(products, r_out, alpha_out)
                logits = torch.addmm(b_out, W_out, alpha_out * inv_sqrt_beta[t].unsqueeze(1)).t()  # (b, C)
                cert = 1 - normalised_entropy(logits)
                if t < T - 1 and halt_certainty > 0:
                    halt = (cert >= halt_certainty) & thinking
                else:  # last tick, or tau <= 0 (rounding can put a certainty a hair below 0)
                    halt = thinking
                n_halt = int(halt.sum())
                if not n_halt:
                    continue
                done = rows[halt]
                prediction[done] = logits[halt].argmax(-1)
                used[done] = t + 1
                certainty[done] = cert[halt]
                logits_at[done] = logits[halt]
                n_thinking -= n_halt
                if n_thinking == 0:
                    break
                thinking = thinking & ~halt
                # Halted rows ride along (their results are taken, later ticks never read them) until
                # they are 1/8 of the batch: gathering every tick costs more than it saves.
                if 8 * (b - n_thinking) >= b:
                    keep = thinking.nonzero().squeeze(1)  # gather the still-thinking samples
                    rows, z, alpha, alpha_out = rows[keep], z[:, keep], alpha[keep], alpha_out[:, keep]
                    seq, off = seq[:, t + 1 - off:].index_select(2, keep), t + 1  # only what later ticks read
                    keep_h = (keep.unsqueeze(1) * heads + torch.arange(heads, device=x.device)).view(-1)
                    kT, v = kT.index_select(0, keep_h), v.index_select(0, keep_h)
                    thinking = torch.ones(n_thinking, dtype=torch.bool, device=x.device)
        return ThinkOutput(prediction, used, certainty, logits_at)

    def _readout(self, Zs: Tensor, dec_out: Tensor) -> tuple[Tensor, Tensor]:
        """Output synchronisation and logits of every tick, after the loop.

        alpha_t = r^(t+1) alpha_start + sum_{s <= t} r^(t-s) z_s,i z_s,j over the ticks' post-activations,
        beta_t = sum_{k <= t+1} r^k, S_t = alpha_t / sqrt(beta_t). Returns logits (B, C, T) and the
        synchronisation of the pairs (P_out, T, B).
        """
        c = self.config
        T, _, B = Zs.shape
        n = c.n_synch_out
        upper = self._synch_out_upper
        ticks = torch.arange(T + 1, dtype=Zs.dtype, device=Zs.device)
        powers = torch.exp(-ticks.unsqueeze(1) * dec_out)  # (T + 1, P): r^k
        inv_sqrt_beta = powers.cumsum(0)[1:].t().rsqrt()  # (P, T)
        lag = ticks[:T].unsqueeze(1) - ticks[:T].unsqueeze(0)  # t - s
        decay = torch.exp(-lag.clamp(min=0) * dec_out.view(-1, 1, 1)) * (lag >= 0)  # (P, T, T)
        z = Zs[:, :n].permute(1, 0, 2)  # (n, T, B)
        products = (z.unsqueeze(1) * z.unsqueeze(0)).reshape(n * n, T, B).index_select(0, upper)  # (P, T, B)
        z0 = self.start_activated_state[:n]
        start = (z0.unsqueeze(1) * z0.unsqueeze(0)).reshape(-1).index_select(0, upper)  # (P,)
        alpha = torch.baddbmm((powers[1:].t() * start.unsqueeze(1)).unsqueeze(2), decay, products)
        synch = alpha * inv_sqrt_beta.unsqueeze(2)  # (P, T, B)
        logits = torch.addmm(self.output_projector.bias.unsqueeze(1), self.output_projector.weight,
                             synch.reshape(synch.shape[0], T * B))  # (C, T * B)
        return logits.view(-1, T, B).permute(2, 0, 1).contiguous(), synch


CTM = ContinuousThoughtMachine
