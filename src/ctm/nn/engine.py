"""The fast engine: the readable CTM of `ctm.model`, laid out for speed on a CPU.

`ContinuousThoughtMachine.forward` enters here through one dispatch (`engine.applies(model)`); everything
else in the package reads `model.py`. The engine covers any backbone and positional embedding (the tick loop
takes their tokens as input; only the tutorial's encoders have a fast twin here, `features`, the others run
`model.compute_features` with plain autograd), every neuron selection, output positions and NLM temperature;
the readable path runs the rest (`covers`). The engine computes the same function (tests/test_engine.py holds it
to the readable path: outputs, every gradient, BatchNorm statistics, float64 gradcheck) but a tick is ~15
larger kernels instead of ~60 small ones. At the seed's sizes (batch 64, 30 ticks) a training step takes
0.35x the readable path's time and an evaluation (batch 500) 0.38x, on a 2-core x86 CPU with 2 threads
(`python benchmarks/engine_tricks.py`, 9 alternating rounds, the machine otherwise idle; two timings of the
same engine differed by up to 3%, which bounds what the figures below can resolve). The tricks:

* **Folding.** Everything that does not change between ticks is folded once per forward (`fold`):
  keys/values, the query projection into the attention's query weights together with 1/sqrt(beta_t) and
  the attention scale (one matrix per tick on the action accumulators), the attention's output
  projection into the synapses, the NLM weights in neuron-major layout.
* **Action synchronisation.** First-last: all n x n products of the last n neurons (one outer product, no
  index gathers) with symmetric weights, so the pairs i <= j of the model carry their full weight. Other
  selections: one accumulator per pair (left, right), alpha = r * alpha + z[left] * z[right], the query
  weights on the accumulators directly, and in the backward dz gets index_add_ of dacc * z[right] at left
  and dacc * z[left] at right (`action_pairs`). Run on the tutorial model (engine_tricks.py row "action
  pairs by index", 9 rounds, 2 threads, load average 1.2-1.3 from other jobs), the general path timed within
  the noise of the outer product in two runs: train step 82.1 and 83.3 ms, the outer product 87.1/84.8
  and 82.8/82.2 (timed twice per run); eval batch 500 167.5 and 143.1 ms, the outer product 173.4/172.8
  and 151.4/144.2. The outer product stays for first-last only because
  tests/test_engine.py's first gradcheck holds its (n, n) layout; the general path could replace it.
* **Neuron-major trace.** The trace is a (D, M + T, B) sequence: tick t reads the window [t + 1, t + M]
  (no concatenation), and every neuron's MLP is one batched matmul over neurons.
* **Readout after the loop.** The output synchronisation, logits and certainties do not feed back into
  the loop, so they are computed once for all ticks (the decay recursion becomes one matmul with a
  (T, T) decay matrix per pair).
* **Hand-written backward** (`_TickFunction`): the forward writes what the backward needs into per-tick
  buffers, the GLU Jacobians are formed for all ticks at once, and weight gradients are batched over ticks.
* **The loops in C++** (`ctm.native`, ctm/csrc/ticks.cpp, built on first use; the Python loops below run where
  it cannot be built, and tests/test_native.py holds the two together): the training forward's and the
  backward's tick loops make their ATen calls from C++, a few steps fused into one pass per row (LayerNorm,
  its backward with the GLU's, the softmax backward; the first NLM GLU's gradient a tick at a time into one
  reused buffer, its bias gradient summed there; of h1 only the gate half saved). Timed in one process,
  alternating (2 threads, the seed's sizes, `CTM_NATIVE=0` against the default): a training step
  13-15% faster than the Python loops.
* **GLU written in place** (`_glu_into`, the private `aten.glu.out`): 6% of a training step, 4% of an
  evaluation against `F.glu` and a copy. The only private aten op left; tests/test_engine.py fails loudly if
  a torch upgrade changes it.
* **Backbone**: channels-last convolutions (about 40% faster than NCHW for the tutorial's backbone, forward
  and backward, 1 thread), BatchNorm folded into the convolution in eval mode, pooling before the ReLU (they
  commute), and in inference 2x2 max-pooling as elementwise maxima and the batch in chunks of 64 images
  whose activations stay in cache: the tutorial's backbone on 500 images takes 27 ms instead of 43 ms (2
  threads, 9 alternating rounds), 14% of a full evaluation and a third of a halted one (`ctm.halting`).

Measured and dropped (within the noise): keeping the backward's buffers between steps in a pool (1%), and
the private LayerNorm and softmax backward kernels (0% and 1%).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..config import CTMConfig
    from .model import ContinuousThoughtMachine

INFERENCE_CHUNK = 64  # images per backbone call in CPU inference (see features)



def applies(model: ContinuousThoughtMachine) -> bool:
    """Whether `model.forward` runs here: the model asks for it (`fast_backward`), the configuration is one
    the engine computes exactly (`covers`), and torch.compile is not tracing (it traces the readable path)."""
    compiling = hasattr(torch, "compiler") and torch.compiler.is_compiling()
    return model.fast_backward and covers(model.config, model.training) and not compiling


def covers(config: CTMConfig, training: bool) -> bool:
    """Whether the engine computes this configuration: any backbone, positional embedding, neuron selection,
    output positions and NLM temperature (folded into the NLM weights), with the tutorial's core (one synapse
    layer, deep neuron-level models without LayerNorm), the attention reader (`ctm.nn.readers`) and no dropout
    while training (it draws masks the engine does not)."""
    c = config
    core = c.synapse_depth == 1 and c.deep_nlms and not c.nlm_layernorm and c.input_reader == "attention"
    no_dropout = not training or (c.dropout == 0 and c.nlm_dropout == 0)
    return core and no_dropout


# --------------------------------------------------------------------------------------------- folding


class TickParams(NamedTuple):
    """The tensors the tick loop reads, built from the parameters once per forward (differentiable)."""

    kT: Tensor  # (B*h, d/h, N) keys, transposed
    v: Tensor  # (B*h, N, d/h) values
    A: Tensor  # (T, d, K) query weights of tick t on the K action accumulators (see `action_pairs`)
    cq: Tensor  # (d,) query bias
    r: Tensor  # (K,) action decay factors
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


class Sizes(NamedTuple):
    T: int
    D: int
    M: int
    H: int
    B: int
    heads: int
    dh: int
    N: int
    K: int  # action accumulators: na*na (first-last) or the P_action pairs

    @classmethod
    def of(cls, p: TickParams, heads: int) -> Sizes:
        T, d, K = p.A.shape
        D, H2, M = p.W1.shape
        Bh, dh, N = p.kT.shape
        return cls(T, D, M, H2 // 2, Bh // heads, heads, dh, N, K)


def _pair_positions(synch: nn.Module) -> tuple[Tensor, Tensor]:
    """Positions of each pair (i, j), i <= j, and of its mirror (j, i) in the flattened n x n products."""
    i, j = synch.left - synch.first, synch.right - synch.first
    return i * synch.n + j, j * synch.n + i


def action_pairs(model: ContinuousThoughtMachine) -> Tensor | None:
    """The layout of the action accumulators. None for first-last: all na x na products of the last na
    neurons (one outer product per tick) with symmetric weights. Otherwise (2, P) the pairs' neurons (left,
    right) of any selection: one accumulator per pair, products gathered by index."""
    synch = model.synch_action
    return None if synch.first is not None else torch.stack((synch.left, synch.right))


def fold(model: ContinuousThoughtMachine, tokens: Tensor, rate_action: Tensor, T: int) -> tuple[TickParams, Tensor]:
    """Fold the parameters into the layout of the tick loop. tokens (B, N, d); rate_action (P_action,) the
    clamped decays (r = exp(-rate)). Returns the tick parameters and 1/sqrt(beta_t) (T, K)."""
    c = model.config
    B, N, d = tokens.shape
    h, na = c.heads, c.n_synch_action
    dh = d // h
    attention = model.attention
    W_in, b_in = attention.in_proj.weight, attention.in_proj.bias
    k, v = F.linear(tokens, W_in[d:], b_in[d:]).split(d, dim=-1)  # (B, N, d) each
    kT = k.reshape(B, N, h, dh).permute(0, 2, 3, 1).reshape(B * h, dh, N)
    v = v.reshape(B, N, h, dh).transpose(1, 2).reshape(B * h, N, dh)

    # Action synchronisation: first-last accumulates all na x na products (symmetric decay factors), other
    # selections one product per pair (`action_pairs`).
    first_last = action_pairs(model) is None
    if first_last:
        upper, lower = _pair_positions(model.synch_action)
        rates = rate_action.new_zeros(na * na).index_copy(0, upper, rate_action).index_copy(0, lower, rate_action)
    else:
        rates = rate_action
    k = torch.arange(T + 1, dtype=rates.dtype, device=rates.device).unsqueeze(1)
    powers = torch.exp(-k * rates)  # (T + 1, na*na): r^k, as exp(-k rate) (pow is slower, and rounds further
    # from the recursion r * beta + 1 of the readable path than this does)
    inv_sqrt_beta = powers[:T].cumsum(0).rsqrt()  # beta_t = sum_{k <= t} r^k
    # Query of tick t = attention scale * in_proj_q(q_proj(alpha_t / sqrt(beta_t))), as one matrix per tick
    # on the accumulators; first-last puts half of each off-diagonal pair's weight on (i, j), half on (j, i).
    scale = dh ** -0.5
    Wq, bq = W_in[:d], b_in[:d]
    if first_last:
        half = (Wq @ model.q_proj.weight) * (0.5 * scale)  # (d, P_action)
        A = half.new_zeros(d, na * na).index_copy(1, upper, half).view(d, na, na)
        A = (A + A.transpose(1, 2)).view(d, na * na)
    else:
        A = (Wq @ model.q_proj.weight) * scale  # (d, P_action)
    A = A.unsqueeze(0) * inv_sqrt_beta.unsqueeze(1)  # (T, d, K)
    cq = (Wq @ model.q_proj.bias + bq) * scale

    # Synapses on [attention output, z]; the attention's output projection folded in.
    W_syn, b_syn = model.synapses[0].weight, model.synapses[0].bias
    W_att = W_syn[:, :d]
    nlm, ln = model.neuron_level_models, model.synapses[2]
    (w1, b1), (w2, b2) = _nlm_weights(nlm.first), _nlm_weights(nlm.second)
    return TickParams(
        kT=kT, v=v, A=A, cq=cq, r=powers[1], Wz=W_syn[:, d:], Wo=W_att @ attention.out_proj.weight,
        bs=b_syn + W_att @ attention.out_proj.bias, gamma=ln.weight, beta=ln.bias,
        W1=w1.permute(2, 1, 0).contiguous(), b1=b1.permute(1, 2, 0).contiguous(),
        W2=w2.permute(2, 1, 0).contiguous(), b2=b2.permute(1, 2, 0).contiguous(),
        z0=model.start_activated_state, trace0=model.start_trace,
    ), inv_sqrt_beta


def _nlm_weights(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """A SuperLinear's weights and bias, its temperature (which divides its output) folded in."""
    if layer.temperature is None:
        return layer.w1, layer.b1
    return layer.w1 / layer.temperature, layer.b1 / layer.temperature


# --------------------------------------------------------------------------------------------- one tick


def _glu_into(x: Tensor, dim: int, out: Tensor) -> None:
    """GLU written into `out`. The private out= variant saves a (B, D)-sized copy per GLU (three per tick)."""
    torch.ops.aten.glu.out(x, dim, out=out)


def _layer_norm_backward(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, gamma: Tensor) -> Tensor:
    """The input gradient of LayerNorm over the last dim, from the forward's statistics:
    rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, xhat = (x - mean) * rstd."""
    xhat = (x - mean) * rstd
    g = dy * gamma
    return rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))


def _softmax_backward_into(dw: Tensor, w: Tensor, out: Tensor) -> None:
    """The gradient of softmax's input, w * (dw - <dw, w>), written into `out`."""
    torch.mul(w, dw - (dw * w).sum(-1, keepdim=True), out=out)


def _glu_jacobians(h: Tensor, y: Tensor, dim: int) -> None:
    """Overwrite the GLU input h = [a, g] (halves along `dim`) with [sigmoid(g), y * (1 - sigmoid(g))]:
    the derivatives of y = a * sigmoid(g) by a and by g."""
    a, g = h.unbind(dim)
    s = torch.sigmoid(g, out=a)
    torch.addcmul(y.squeeze(dim), y.squeeze(dim), s, value=-1, out=g)


class TickSlots(NamedTuple):
    """One tick's buffers in a training forward: what the hand-written backward reads."""

    alpha: Tensor  # (B, K) action accumulators
    q: Tensor  # (B, d) query
    w: Tensor  # (B*h, 1, N) attention weights
    o: Tensor  # (B, d) attention output (before out_proj, which is folded into the synapses)
    g: Tensor  # (B, D) GLU output, LayerNorm input
    lin: Tensor  # (B, 2, D) synapse GLU input (the backward overwrites it with its Jacobians)
    mean: Tensor  # (B, 1) LayerNorm statistics
    rstd: Tensor  # (B, 1)
    u: Tensor  # (D, H, B) first NLM GLU output
    h1: Tensor  # (D, 2H, B) first NLM GLU input (then its Jacobians)
    h2: Tensor  # (D, 2, B) second NLM GLU input (then its Jacobians)


def _action_products(z: Tensor, pairs: Tensor | None, K: int, out: Tensor | None = None) -> Tensor:
    """z (D, b) -> the products the action accumulators add (b, K): the outer product of the last na
    neurons (first-last), or z_left * z_right of each pair."""
    D, b = z.shape
    if pairs is None:
        na = math.isqrt(K)
        zA = z[D - na:].t()  # (b, na)
        out = torch.empty(b, K, dtype=z.dtype, device=z.device) if out is None else out
        torch.mul(zA.unsqueeze(2), zA.unsqueeze(1), out=out.view(b, na, na))
        return out
    zp = z.index_select(0, pairs.view(-1)).view(2, -1, b)  # (2, P, b)
    return torch.mul(zp[0].t(), zp[1].t(), **({} if out is None else {"out": out}))


def tick(p: TickParams, t: int, kT: Tensor, v: Tensor, z: Tensor, alpha: Tensor, window: Tensor,
         pre_out: Tensor, z_out: Tensor, eps: float, slots: TickSlots | None = None,
         pairs: Tensor | None = None) -> Tensor:
    """Tick t in the engine's layout (neurons first, batch last) for b rows.

    z (D, b): post-activations z_t; alpha (b, K): action accumulators of the previous tick (zeros before
    the first), laid out by `pairs` (`action_pairs`); kT, v: the rows' keys and values. Writes the
    pre-activation a_t into pre_out (b, D), a view of the trace whose window (D, M, b) ends with it, and
    z_{t+1} into z_out (D, 1, b); returns alpha_t. With `slots` (a training forward) every intermediate the
    backward needs is written there.
    """
    D, b = z.shape
    dh = kT.shape[1]
    WzT, WoT, A_t = p.Wz.t(), p.Wo.t(), p.A[t].t()
    if slots is None:
        # 1-2. action synchronisation (alpha_t = products(z_t) + r alpha_{t-1}) -> query -> attention
        alpha = torch.addcmul(_action_products(z, pairs, alpha.shape[1]), p.r, alpha)
        w = torch.bmm(torch.addmm(p.cq, alpha, A_t).view(-1, 1, dh), kT).softmax(-1)
        o = torch.bmm(w, v).view(b, -1)
        # 3. synapses: Linear -> GLU -> LayerNorm, written into the trace
        g = F.glu(torch.addmm(torch.addmm(p.bs, z.t(), WzT), o, WoT), -1)
        pre_out.copy_(F.layer_norm(g, (D,), p.gamma, p.beta, eps))
        # 4-5. neuron-level models on the window of the last M pre-activations
        h1 = torch.baddbmm(p.b1, p.W1, window)  # (D, 2H, b)
        _glu_into(torch.baddbmm(p.b2, p.W2, F.glu(h1, 1)), 1, z_out)
        return alpha
    s = slots
    alpha = _action_products(z, pairs, s.alpha.shape[1], out=s.alpha).addcmul_(p.r, alpha)
    torch.addmm(p.cq, alpha, A_t, out=s.q)
    torch.softmax(torch.bmm(s.q.view(-1, 1, dh), kT), -1, out=s.w)
    torch.bmm(s.w, v, out=s.o.view(-1, 1, dh))
    lin = s.lin.view(b, 2 * D)
    torch.addmm(torch.addmm(p.bs, z.t(), WzT), s.o, WoT, out=lin)
    _glu_into(lin, -1, s.g)
    pre, mean, rstd = torch.native_layer_norm(s.g, (D,), p.gamma, p.beta, eps)
    pre_out.copy_(pre)
    s.mean.copy_(mean)
    s.rstd.copy_(rstd)
    torch.baddbmm(p.b1.expand_as(s.h1), p.W1, window, out=s.h1)  # explicit expand: ~30% faster than broadcast
    _glu_into(s.h1, 1, s.u)
    torch.baddbmm(p.b2.expand_as(s.h2), p.W2, s.u, out=s.h2)
    _glu_into(s.h2, 1, z_out)
    return alpha


# --------------------------------------------------------------------------------------------- the loop


def _forward_buffers(s: Sizes, like: Tensor) -> dict[str, Tensor]:
    """What the hand-written backward needs from the forward, one slot per tick (see TickSlots)."""
    T, D, H, B, K, d = s.T, s.D, s.H, s.B, s.K, s.heads * s.dh
    new = like.new_empty
    return {
        "alpha": new(T, B, K), "q": new(T, B, d), "w": new(T, B * s.heads, 1, s.N), "o": new(T, B, d),
        "g": new(T, B, D), "lin": new(T, B, 2, D), "mean": new(T, B, 1), "rstd": new(T, B, 1),
        "u": new(T, D, H, B), "h1": new(T, D, 2 * H, B), "h2": new(T, D, 2, B),
    }


def _backward_buffers(s: Sizes, like: Tensor, native: bool) -> dict[str, Tensor]:
    """The backward's per-tick gradients; the C++ loop uses one tick's dh1 for every tick."""
    T, D, H, B, K, d = s.T, s.D, s.H, s.B, s.K, s.heads * s.dh
    new = like.new_empty
    return {
        "dh1": new(1 if native else T, D, 2 * H, B), "dh2": new(T, D, 2, B), "dlin": new(T, B, 2 * D),
        "dq": new(T, B, d), "ds": new(T, B * s.heads, 1, s.N), "do": new(T, B, d), "dacc": new(T, B, K),
        "dseq": new(D, s.M + T, B),
    }


def _native(p: TickParams):
    """The C++ tick loops (`ctm.native`) when they apply: CPU tensors of float32 or float64."""
    if p.kT.device.type != "cpu" or p.kT.dtype not in (torch.float32, torch.float64):
        return None
    from . import native

    return native.ops()


def _pairs_arg(pairs: Tensor | None, like: Tensor) -> Tensor:
    """The action pairs for the C++ loops: empty for first-last."""
    return like.new_empty(0, dtype=torch.long) if pairs is None else pairs


def _per_tick(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """[(a[t], b[t], ...) for each tick t]: the views of one tick, made once up front."""
    return list(zip(*(x.unbind(0) for x in tensors), strict=True))


def tick_loop(p: TickParams, s: Sizes, eps: float, saved: dict[str, Tensor] | None, pairs: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
    """Run the T ticks. Returns Z (T + 1, D, B): z_0 .. z_T, and the pre-activation sequence seq
    (D, M + T, B): the start trace, then a_1 .. a_T. With `saved`, fills its per-tick buffers."""
    T, D, M, B = s.T, s.D, s.M, s.B
    seq = p.kT.new_empty(D, M + T, B)
    seq[:, :M] = p.trace0.unsqueeze(-1)
    Z = p.kT.new_empty(T + 1, D, B)
    Z[0] = p.z0.unsqueeze(-1)
    native = _native(p)
    if saved is not None:
        saved["native"] = native  # the backward runs the loop the forward ran
    if native is not None:  # the same loop in C++ (ctm/csrc/ticks.cpp)
        # inference: one slot per buffer, reused by every tick (two for alpha: the next tick reads it)
        slots = saved if saved is not None else _forward_buffers(s._replace(T=1), p.kT)
        if saved is None:
            slots["alpha"] = p.kT.new_empty(2, B, s.K)
        native.tick_loop_train(list(p[:14]), [slots[k] for k in TickSlots._fields], _pairs_arg(pairs, p.kT), Z, seq,
                               eps, saved is not None)
        return Z, seq
    pre_out = seq[:, M:].permute(1, 2, 0).unbind(0)  # (B, D) slot of each tick's pre-activation
    z_out = Z[1:].unsqueeze(2).unbind(0)  # (D, 1, B)
    slots = [None] * T if saved is None else [TickSlots(*x) for x in _per_tick(*(saved[k] for k in TickSlots._fields))]
    alpha = p.kT.new_zeros(B, s.K)
    for t in range(T):
        alpha = tick(p, t, p.kT, p.v, Z[t], alpha, seq[:, t + 1:t + 1 + M], pre_out[t], z_out[t], eps, slots[t],
                     pairs)
    return Z, seq


def _tick_backward(dZ: Tensor, p: TickParams, s: Sizes, Z: Tensor, seq: Tensor, saved: dict[str, Tensor],
                   buf: dict[str, Tensor], pairs: Tensor | None = None) -> tuple[Tensor, ...]:
    """Gradients of all `TickParams` fields from dZ (T, D, B), the gradient of z_1 .. z_T."""
    T, D, M, H, B, heads, dh, N, K = s
    d = heads * dh
    native = saved.get("native")  # the C++ loops, if the forward ran them
    if not saved.get("jacobians"):  # the GLUs' Jacobians, for all ticks at once, in place of their inputs
        _glu_jacobians(saved["lin"], saved["g"].unsqueeze(2), 2)
        if native is None:  # (the C++ loop forms the first NLM GLU's a tick at a time, from its input)
            _glu_jacobians(saved["h1"].view(T, D, 2, H, B), saved["u"].unsqueeze(2), 2)
        _glu_jacobians(saved["h2"].view(T, D, 2, 1, B), Z[1:].view(T, D, 1, 1, B), 2)
        saved["jacobians"] = True  # a second backward through the same forward (retain_graph) reuses them
    W1t = p.W1.transpose(1, 2).contiguous()  # (D, M, 2H)
    W2t = p.W2.transpose(1, 2).contiguous()  # (D, H, 2)
    # first-last: the accumulator gradient is symmetric over (i, j); carry twice it (weights 2A) and halve
    # at the end. Pairs: the products' factors, z_left and z_right of each tick (T, B, P).
    if pairs is None:
        na = math.isqrt(K)
        A2, half = 2 * p.A, 0.5
        factors = Z[:T, D - na:].transpose(1, 2).unsqueeze(3)  # (T, B, na, 1)
    else:
        A2, half = p.A, 1.0
        factors = Z[:T].index_select(1, pairs.view(-1)).view(T, 2, -1, B).permute(0, 1, 3, 2)  # (T, 2, B, P)
    dseq = buf["dseq"].zero_()
    dW1 = p.W1.new_zeros(D, M, 2 * H)
    dh1s, dh2s, dlins, dqs, dss, dos, daccs = (buf[k] for k in ("dh1", "dh2", "dlin", "dq", "ds", "do", "dacc"))
    if native is not None:  # the same loop in C++ (ctm/csrc/ticks.cpp); dh1 one tick's, d_b1 summed there
        d_b1 = p.b1.new_zeros(D, 2 * H)
        dz = native.tick_loop_backward(
            [saved[k] for k in ("h2", "h1", "g", "mean", "rstd", "lin", "w", "u")],
            [p.v, p.kT, A2, p.r, p.Wz, p.Wo, p.gamma, W1t, W2t], [dh2s, dh1s[0], dlins, dqs, dss, dos, daccs],
            _pairs_arg(pairs, p.kT), dZ.transpose(1, 2), factors, seq, dseq, dW1, d_b1)
        d_b1 = d_b1.unsqueeze(-1)
    else:
        dz = _tick_backward_loop(p, s, seq, saved, A2, factors, dZ, dseq, dW1, W1t, W2t,
                                 (dh2s, dh1s, dlins, dqs, dss, dos, daccs), pairs)
        d_b1 = dh1s.sum(-1, keepdim=True).sum(0)
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
    d_r = (saved["alpha"][:-1] * daccs[1:]).sum((0, 1)) * half
    d_W2 = torch.bmm(dh2s.view(T * D, 2, B), saved["u"].view(T * D, H, B).transpose(1, 2)).view(T, D, 2, H).sum(0)
    d_b2 = dh2s.sum(-1, keepdim=True).sum(0)
    d_z0 = dz.sum(0)
    d_trace0 = dseq[:, :M].sum(-1)
    return (d_kT, d_v, d_A, d_cq, d_r, d_Wz, d_Wo, d_bs, d_gamma, d_beta, dW1.transpose(1, 2), d_b1, d_W2, d_b2,
            d_z0, d_trace0)


def _tick_backward_loop(p: TickParams, s: Sizes, seq: Tensor, saved: dict[str, Tensor], A2: Tensor, factors: Tensor,
                        dZ: Tensor, dseq: Tensor, dW1: Tensor, W1t: Tensor, W2t: Tensor, grads: tuple[Tensor, ...],
                        pairs: Tensor | None) -> Tensor:
    """The reversed loop of `_tick_backward` (its C++ twin: `tick_loop_backward` in ctm/csrc/ticks.cpp):
    fills the per-tick gradient buffers, dseq and dW1; returns the gradient of z_0 per row (B, D)."""
    T, D, M, H, B, heads, dh, N, K = s
    na = math.isqrt(K)
    dh2s, dh1s, dlins, dqs, dss, dos, daccs = grads
    A2 = A2.unbind(0)
    vT, kTT = p.v.transpose(1, 2), p.kT.transpose(1, 2)
    ticks = _per_tick(saved["h2"], saved["h1"].view(T, D, 2, H, B), saved["g"], saved["mean"], saved["rstd"],
                      saved["lin"], saved["w"], dh2s, dh1s.view(T, D, 2, H, B), dlins.view(T, B, 2, D), dqs, dss,
                      dos, daccs, dZ.transpose(1, 2), factors)
    windows = [seq[:, t + 1:t + 1 + M] for t in range(T)]
    dseq_windows = [dseq[:, t + 1:t + 1 + M] for t in range(T)]
    dpre = dseq[:, M:].permute(1, 2, 0).unbind(0)  # (B, D) gradient of each tick's pre-activation
    dacc = None
    dz = ticks[T - 1][14]  # (B, D): gradient of z_T
    for t in reversed(range(T)):
        j2, j1, g, mean, rstd, jl, w, dh2, dh1, dlin, dq, ds, do, dacc_t, _, zf = ticks[t]
        # neuron-level models
        # (explicit expands: broadcasting over the GLU halves is ~40% slower)
        torch.mul(dz.t().unsqueeze(1).expand_as(j2), j2, out=dh2)
        torch.mul(torch.bmm(W2t, dh2).unsqueeze(1).expand_as(j1), j1, out=dh1)
        dh1 = dh1.view(D, 2 * H, B)
        dW1.baddbmm_(windows[t], dh1.transpose(1, 2))
        dseq_windows[t] += torch.bmm(W1t, dh1)
        # synapses
        dg = _layer_norm_backward(dpre[t], g, mean, rstd, p.gamma)
        torch.mul(dg.unsqueeze(1).expand_as(jl), jl, out=dlin)
        dlin = dlin.view(B, 2 * D)
        # attention: softmax backward ds = w * (dw - <dw, w>)
        torch.mm(dlin, p.Wo, out=do)
        _softmax_backward_into(torch.bmm(do.view(-1, 1, dh), vT), w, ds)
        torch.bmm(ds, kTT, out=dq.view(-1, 1, dh))
        # action synchronisation accumulators: alpha_t = outer(z_t) + r * alpha_{t-1}
        if dacc is None:
            dacc = torch.mm(dq, A2[t], out=dacc_t)
        else:
            dacc = torch.addmm(dacc * p.r, dq, A2[t], out=dacc_t)
        # gradient of z_t: synapses, action synchronisation, and the readout
        dz = torch.addmm(ticks[t - 1][14], dlin, p.Wz) if t > 0 else torch.mm(dlin, p.Wz)
        if pairs is None:
            dz[:, D - na:] += torch.bmm(dacc.view(B, na, na), zf).view(B, na)
        else:
            dz.index_add_(1, pairs[0], dacc * zf[1]).index_add_(1, pairs[1], dacc * zf[0])
    return dz


class _TickFunction(torch.autograd.Function):
    """The tick loop with a hand-written backward: outputs z_1 .. z_T (T, D, B), and for tracking the
    pre-activation sequence, the attention weights and the action accumulators (not differentiable).
    `tensors` are the `TickParams` fields, then the action pairs (`action_pairs`) unless first-last."""

    @staticmethod
    def forward(ctx, eps: float, heads: int, track: bool, *tensors: Tensor):
        n = len(TickParams._fields)
        p, pairs = TickParams(*tensors[:n]), (tensors[n] if len(tensors) > n else None)
        s = Sizes.of(p, heads)
        workspace = {"fwd": _forward_buffers(s, p.kT)}
        workspace["fwd"]["jacobians"] = False
        Z, seq = tick_loop(p, s, eps, workspace["fwd"], pairs)
        ctx.workspace, ctx.sizes, ctx.Z, ctx.seq, ctx.pairs = workspace, s, Z, seq, pairs
        ctx.save_for_backward(*p)
        if not track:
            return Z[1:]
        extras = (seq, workspace["fwd"]["w"].clone(), workspace["fwd"]["alpha"].clone())
        ctx.mark_non_differentiable(*extras)
        return (Z[1:], *extras)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dZ: Tensor, *_unused):
        p = TickParams(*ctx.saved_tensors)
        workspace = ctx.workspace
        if "bwd" not in workspace:
            workspace["bwd"] = _backward_buffers(ctx.sizes, p.kT, workspace["fwd"]["native"] is not None)
        grads = _tick_backward(dZ.contiguous(), p, ctx.sizes, ctx.Z, ctx.seq, workspace["fwd"], workspace["bwd"],
                               ctx.pairs)
        return (None, None, None, *grads) + ((None,) if ctx.pairs is not None else ())


def run_ticks(p: TickParams, heads: int, eps: float, track: bool, pairs: Tensor | None = None
              ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """z_1 .. z_T (T, D, B); with track also the sequence, attention weights and action accumulators."""
    s = Sizes.of(p, heads)
    if torch.is_grad_enabled() and any(t.requires_grad for t in p):
        out = _TickFunction.apply(eps, heads, track, *p, *(() if pairs is None else (pairs,)))
        return (out, None, None, None) if not track else out
    saved = _forward_buffers(s, p.kT) if track else None
    Z, seq = tick_loop(p, s, eps, saved, pairs)
    return (Z[1:], None, None, None) if not track else (Z[1:], seq, saved["w"], saved["alpha"])


def readout(model: ContinuousThoughtMachine, Zs: Tensor, rate_out: Tensor) -> tuple[Tensor, Tensor]:
    """Output synchronisation and logits of every tick at once, after the loop.

    With r = exp(-decay) per pair: alpha_t = r^(t+1) alpha_start + sum_{s <= t} r^(t-s) z_s,i z_s,j over the
    ticks' post-activations, beta_t = sum_{k <= t+1} r^k, S_t = alpha_t / sqrt(beta_t): the recursion of
    `Synchronisation` unrolled. Zs (T, D, B) -> logits (B, C, T) and the synchronisation (P_out, T, B).
    """
    synch = model.synch_out
    T, _, B = Zs.shape
    ticks = torch.arange(T + 1, dtype=Zs.dtype, device=Zs.device)
    powers = torch.exp(-ticks.unsqueeze(1) * rate_out)  # (T + 1, P): r^k
    inv_sqrt_beta = powers.cumsum(0)[1:].t().rsqrt()  # (P, T)
    lag = ticks[:T].unsqueeze(1) - ticks[:T].unsqueeze(0)  # t - s
    decay = torch.exp(-lag.clamp(min=0) * rate_out.view(-1, 1, 1)) * (lag >= 0)  # (P, T, T)
    if synch.first is not None:  # first-last: all n x n products of the block, then the pairs i <= j
        z = Zs[:, synch.first:synch.first + synch.n].permute(1, 0, 2)  # (n, T, B)
        upper, _ = _pair_positions(synch)
        products = (z.unsqueeze(1) * z.unsqueeze(0)).reshape(-1, T, B).index_select(0, upper)  # (P, T, B)
    else:
        products = (Zs.index_select(1, synch.left) * Zs.index_select(1, synch.right)).transpose(0, 1)  # (P, T, B)
    z0 = model.start_activated_state
    start = z0[synch.left] * z0[synch.right]  # (P,)
    alpha = torch.baddbmm((powers[1:].t() * start.unsqueeze(1)).unsqueeze(2), decay, products)
    S = alpha * inv_sqrt_beta.unsqueeze(2)  # (P, T, B)
    proj = model.output_projector
    logits = torch.addmm(proj.bias.unsqueeze(1), proj.weight, S.reshape(S.shape[0], T * B))  # (C, T * B)
    return logits.view(-1, T, B).permute(2, 0, 1).contiguous(), S


# --------------------------------------------------------------------------------------------- backbone


def input_tokens(model: ContinuousThoughtMachine, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The key/value tokens (B, N, d_input) and their grid: the fast tutorial backbone (`features`) for the
    tutorial's backbone, else the model's own input encoder with plain autograd (`compute_features`)."""
    if model.config.backbone in ("tutorial", "tutorial-s2d"):
        return features(model, x)
    return model.compute_features(x)



def features(model: ContinuousThoughtMachine, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """`model.compute_features` for the tutorial's backbones, fast: (B, C, H, W) images -> (B, N, d_input)
    tokens and the grid (H', W')."""
    bb = model.backbone
    s2d = model.config.backbone == "tutorial-s2d"
    if s2d:
        x = F.pixel_unshuffle(x, 2)
    h = x.to(memory_format=torch.channels_last)
    run = _backbone_s2d if s2d else _backbone
    independent = not any(bn.training or bn.running_mean is None for bn in _batch_norms(bb))
    if torch.is_grad_enabled() or not independent or h.device.type != "cpu":
        feats = run(bb, h, F.max_pool2d)
    else:
        # CPU inference with BatchNorm on running statistics: every image is independent, so the backbone
        # runs in chunks whose activations stay in cache, pooling by elementwise maxima of strided views
        # (max_pool2d also computes the indices only its backward needs).
        feats = torch.cat([run(bb, c, _max_pool_2x2) for c in h.split(INFERENCE_CHUNK)])
    if model.positional_embedding is not None:
        feats = feats + model.positional_embedding(feats)
    grid = (feats.shape[-2], feats.shape[-1])
    return model.kv_proj(feats.flatten(2).transpose(1, 2)), grid


def _batch_norms(bb: nn.Sequential) -> list[nn.BatchNorm2d]:
    return [m for m in bb if isinstance(m, nn.BatchNorm2d)]


def _backbone(bb: nn.Sequential, h: Tensor, pool) -> Tensor:
    """(B, C, H, W) channels-last images -> (B, d_input, H', W') features: conv -> BN -> ReLU -> pool, twice,
    pooled before the ReLU (the two commute, and the ReLU then touches a quarter of the values)."""
    h = F.relu(pool(_conv_bn(bb[0], bb[1], h), 2))
    return F.relu(pool(_conv_bn(bb[4], bb[5], h), 2))


def _backbone_s2d(bb: nn.Sequential, h: Tensor, pool) -> Tensor:
    """tutorial-s2d after its space-to-depth: (B, 4C, H/2, W/2) channels-last -> (B, d_input, H/4, W/4)."""
    h = F.relu(_conv_bn(bb[1], bb[2], h))
    return F.relu(pool(_conv_bn(bb[4], bb[5], h), 2))


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """BatchNorm(conv(x)), channels-last; in eval mode BatchNorm is folded into the convolution."""
    weight, bias = conv.weight, conv.bias
    if bn.training or bn.running_mean is None:
        return bn(conv._conv_forward(x, weight.to(memory_format=torch.channels_last), bias))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale if bias is None else (bias - bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    w = (weight * scale.view(-1, 1, 1, 1)).to(memory_format=torch.channels_last)
    return conv._conv_forward(x, w, shift)


def _max_pool_2x2(x: Tensor, _kernel: int = 2) -> Tensor:
    """max_pool2d(x, 2, 2) (odd last rows/columns dropped) as elementwise maxima: forward only."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


# --------------------------------------------------------------------------------------------- entry points


def forward(model: ContinuousThoughtMachine, x: Tensor, track: bool):
    """`model.forward(x, track)` on the engine; returns the same `CTMOutput` as the readable path."""
    from .outputs import CTMOutput, Tracking, certainty

    c = model.config
    B, T, M = x.shape[0], c.iterations, c.memory_length
    tokens, grid = input_tokens(model, x)  # (B, N, d_input)
    pairs = action_pairs(model)
    with model.full_precision(x):  # under autocast only the backbone runs in low precision
        rate_action, rate_out = model.decay_rates()
        p, inv_sqrt_beta = fold(model, tokens.to(model.start_trace.dtype), rate_action, T)
        Zs, seq, attn, alpha = run_ticks(p, c.heads, model.synapses[2].eps, track, pairs)  # (T, D, B)
        logits, S_out = readout(model, Zs, rate_out)  # (B, C, T), (P_out, T, B)
        if c.out_positions == 1:
            certainties = certainty(logits, dim=1)  # (B, 2, T)
        else:
            certainties = model.certainty(logits.transpose(1, 2)).transpose(1, 2)
    tracking = None
    if track:
        if pairs is None:
            upper, _ = _pair_positions(model.synch_action)
            alpha, inv_sqrt_beta = alpha[:, :, upper], inv_sqrt_beta[:, upper]
        tracking = Tracking(
            pre_activations=seq.detach()[:, M:].permute(1, 2, 0).contiguous(),
            post_activations=Zs.detach().transpose(1, 2).contiguous(),
            attention=attn.detach().reshape(T, B, c.heads, -1),
            synchronisation_out=S_out.detach().permute(1, 2, 0).contiguous(),
            synchronisation_action=alpha.detach() * inv_sqrt_beta.detach().unsqueeze(1),
            token_grid=grid,
        )
    return CTMOutput(logits, certainties, S_out[:, -1].t().contiguous(), tracking)


class Stepper:
    """The engine's ticks one at a time, for adaptive computation (`ctm.halting`): `step()` runs the next
    tick for the rows still in the batch and returns their logits (b, C); `keep(rows)` drops the others."""

    def __init__(self, model: ContinuousThoughtMachine, x: Tensor, T: int) -> None:
        c = model.config
        self.model, self.t = model, 0
        self.pairs = action_pairs(model)
        tokens, _ = input_tokens(model, x)
        with model.full_precision(x):
            rate_action, rate_out = model.decay_rates()
            self.r_out = torch.exp(-rate_out)
            self.p, _ = fold(model, tokens.to(model.start_trace.dtype), rate_action, T)
            self.eps, self.heads, D, M, B = model.synapses[2].eps, c.heads, c.d_model, c.memory_length, x.shape[0]
            self.kT, self.v = self.p.kT, self.p.v
            self.seq = self.p.kT.new_empty(D, M + T, B)  # start trace, then a_1 .. a_T; column j is column off + j
            self.seq[:, :M] = self.p.trace0.unsqueeze(-1)
            self.off = 0
            self.z = self.p.z0.unsqueeze(-1).expand(D, B)  # (D, b)
            self.alpha = self.p.kT.new_zeros(B, self.p.A.shape[-1])
            self.synch_out = model.synch_out(self.z.t(), None, self.r_out)[1]

    def step(self) -> Tensor:
        t, M, D = self.t, self.model.config.memory_length, self.z.shape[0]
        col = M + t - self.off
        z_next = self.z.new_empty(D, 1, self.z.shape[1])
        self.alpha = tick(self.p, t, self.kT, self.v, self.z, self.alpha, self.seq[:, col - M + 1:col + 1],
                          self.seq[:, col].t(), z_next, self.eps, pairs=self.pairs)
        self.z = z_next.view(D, -1)
        S, self.synch_out = self.model.synch_out(self.z.t(), self.synch_out, self.r_out)
        self.t += 1
        return self.model.output_projector(S)

    def keep(self, rows: Tensor) -> None:
        # Only the trace columns later ticks read are kept.
        self.seq, self.off = self.seq[:, self.t - self.off:].index_select(2, rows), self.t
        self.z, self.alpha = self.z[:, rows], self.alpha[rows]
        self.synch_out = type(self.synch_out)(*(s[rows] for s in self.synch_out))
        rows_h = (rows.unsqueeze(1) * self.heads + torch.arange(self.heads, device=rows.device)).view(-1)
        self.kT, self.v = self.kT.index_select(0, rows_h), self.v.index_select(0, rows_h)
