// The fast engine's two tick loops (ctm/engine.py: `tick` with slots, and the reversed loop of
// `_tick_backward`), the same ATen calls in the same order, written in C++ so that a tick costs its kernels
// and not also ~40 Python calls. Built on first use by ctm/native.py; engine.py falls back to its Python
// loops when it cannot be built. tests/test_engine.py holds both loops to the Python ones.
//
// Layouts (engine.py's): z (D, B) per tick in Z (T + 1, D, B); the pre-activation sequence seq (D, M + T, B)
// (the start trace, then a_1 .. a_T); per-tick buffers with the tick first. `pairs` is empty for first-last
// action synchronisation (outer product of the last na neurons), else (2, P) the pairs' neurons.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

using at::Tensor;

// The products the action accumulators add, written into out (B, K): see engine._action_products.
void action_products(const Tensor& z, const Tensor& pairs, int64_t K, Tensor& out) {
  const int64_t D = z.size(0), b = z.size(1);
  if (pairs.numel() == 0) {
    const int64_t na = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(K))));
    Tensor zA = z.narrow(0, D - na, na).t();  // (b, na)
    Tensor view = out.view({b, na, na});
    at::mul_out(view, zA.unsqueeze(2), zA.unsqueeze(1));
  } else {
    Tensor zp = z.index_select(0, pairs.view(-1)).view({2, -1, b});  // (2, P, b)
    at::mul_out(out, zp[0].t(), zp[1].t());
  }
}

// The training forward: T ticks, every intermediate the backward needs written into its per-tick buffer.
// p: kT, v, A, cq, r, Wz, Wo, bs, gamma, beta, W1, b1, W2, b2 (TickParams order, without z0/trace0);
// buf: alpha, q, w, o, g, lin, mean, rstd, u, h1, h2 (TickSlots order), each (T, ...).
void tick_loop_train(at::TensorList p, at::TensorList buf, const Tensor& pairs, const Tensor& Z, const Tensor& seq,
                     double eps) {
  const Tensor &kT = p[0], &v = p[1], &A = p[2], &cq = p[3], &r = p[4], &Wz = p[5], &Wo = p[6], &bs = p[7];
  const Tensor &gamma = p[8], &beta = p[9], &W1 = p[10], &b1 = p[11], &W2 = p[12], &b2 = p[13];
  const int64_t T = A.size(0), K = A.size(2), D = Z.size(1), B = Z.size(2), M = seq.size(1) - T;
  const int64_t dh = kT.size(1);
  const Tensor WzT = Wz.t(), WoT = Wo.t();
  Tensor alpha_prev = at::zeros({B, K}, Z.options());
  for (int64_t t = 0; t < T; ++t) {
    Tensor alpha = buf[0][t], q = buf[1][t], w = buf[2][t], o = buf[3][t], g = buf[4][t], lin = buf[5][t];
    Tensor mean = buf[6][t], rstd = buf[7][t], u = buf[8][t], h1 = buf[9][t], h2 = buf[10][t];
    Tensor z = Z[t];
    // 1-2. action synchronisation -> query -> attention
    action_products(z, pairs, K, alpha);
    alpha.addcmul_(r, alpha_prev);
    at::addmm_out(q, cq, alpha, A[t].t());
    at::softmax_out(w, at::bmm(q.view({-1, 1, dh}), kT), -1);
    Tensor o_view = o.view({-1, 1, dh});
    at::bmm_out(o_view, w, v);
    // 3. synapses: Linear -> GLU -> LayerNorm, written into the trace
    Tensor lin2 = lin.view({B, 2 * D});
    at::addmm_out(lin2, at::addmm(bs, z.t(), WzT), o, WoT);
    at::glu_out(g, lin2, -1);
    auto [pre, mu, rs] = at::native_layer_norm(g, {D}, gamma, beta, eps);
    seq.select(1, M + t).t().copy_(pre);
    mean.copy_(mu);
    rstd.copy_(rs);
    // 4-5. neuron-level models on the window of the last M pre-activations
    at::baddbmm_out(h1, b1.expand_as(h1), W1, seq.narrow(1, t + 1, M));
    at::glu_out(u, h1, 1);
    at::baddbmm_out(h2, b2.expand_as(h2), W2, u);
    Tensor z_out = Z[t + 1].unsqueeze(1);
    at::glu_out(z_out, h2, 1);
    alpha_prev = alpha;
  }
}

// dy -> the input gradient of LayerNorm over the last dim, as engine._layer_norm_backward.
Tensor layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                           const Tensor& gamma) {
  Tensor xhat = (x - mean) * rstd;
  Tensor g = dy * gamma;
  return rstd * (g - g.mean(-1, true) - xhat * (g * xhat).mean(-1, true));
}

// The reversed loop of engine._tick_backward: fills dh2s, dh1s, dlins, dqs, dss, dos, daccs, dseq and dW1
// and returns the gradient of z_0 per row (B, D). s: the forward's buffers, the GLU inputs already replaced
// by their Jacobians; p: v, kT, A2 (2A for first-last), r, Wz, Wo, gamma, W1t (D, M, 2H), W2t (D, H, 2);
// g: dh2s, dh1s, dlins, dqs, dss, dos, daccs (T, ...); dZt (T, B, D); factors as engine's.
Tensor tick_loop_backward(at::TensorList s, at::TensorList p, at::TensorList g, const Tensor& pairs, const Tensor& dZt,
                          const Tensor& factors, const Tensor& seq, const Tensor& dseq, const Tensor& dW1) {
  const Tensor &h2s = s[0], &h1s = s[1], &gs = s[2], &means = s[3], &rstds = s[4], &lins = s[5], &ws = s[6];
  const Tensor &v = p[0], &kT = p[1], &A2 = p[2], &r = p[3], &Wz = p[4], &Wo = p[5], &gamma = p[6];
  const Tensor &W1t = p[7], &W2t = p[8];
  const int64_t T = A2.size(0), K = A2.size(2), D = dZt.size(2), B = dZt.size(1), M = seq.size(1) - T;
  const int64_t H = W2t.size(1), dh = v.size(2);
  const bool first_last = pairs.numel() == 0;
  const int64_t na = first_last ? static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(K)))) : 0;
  const Tensor vT = v.transpose(1, 2), kTT = kT.transpose(1, 2);
  Tensor dacc;
  Tensor dz = dZt[T - 1];
  for (int64_t t = T - 1; t >= 0; --t) {
    Tensor j2 = h2s[t], j1 = h1s[t].view({D, 2, H, B}), jl = lins[t];
    Tensor dh2 = g[0][t], dh1 = g[1][t].view({D, 2, H, B}), dlin = g[2][t].view({B, 2, D});
    Tensor dq = g[3][t], ds = g[4][t], dout = g[5][t], dacc_t = g[6][t];
    // neuron-level models (explicit expands, as in engine.py)
    at::mul_out(dh2, dz.t().unsqueeze(1).expand_as(j2), j2);
    at::mul_out(dh1, at::bmm(W2t, dh2).unsqueeze(1).expand_as(j1), j1);
    Tensor dh1v = dh1.view({D, 2 * H, B});
    dW1.baddbmm_(seq.narrow(1, t + 1, M), dh1v.transpose(1, 2));
    dseq.narrow(1, t + 1, M).add_(at::bmm(W1t, dh1v));
    // synapses
    Tensor dg = layer_norm_backward(dseq.select(1, M + t).t(), gs[t], means[t], rstds[t], gamma);
    at::mul_out(dlin, dg.unsqueeze(1).expand_as(jl), jl);
    Tensor dlin2 = dlin.view({B, 2 * D});
    // attention: softmax backward ds = w * (dw - <dw, w>)
    at::mm_out(dout, dlin2, Wo);
    Tensor dw = at::bmm(dout.view({-1, 1, dh}), vT);
    const Tensor& w = ws[t];
    at::mul_out(ds, w, dw - (dw * w).sum(-1, true));
    Tensor dq_view = dq.view({-1, 1, dh});
    at::bmm_out(dq_view, ds, kTT);
    // action synchronisation accumulators
    if (t == T - 1) {
      dacc = at::mm_out(dacc_t, dq, A2[t]);
    } else {
      dacc = at::addmm_out(dacc_t, dacc * r, dq, A2[t]);
    }
    // gradient of z_t: synapses, action synchronisation, and the readout
    dz = t > 0 ? at::addmm(dZt[t - 1], dlin2, Wz) : at::mm(dlin2, Wz);
    if (first_last) {
      dz.narrow(1, D - na, na).add_(at::bmm(dacc.view({B, na, na}), factors[t]).view({B, na}));
    } else {
      Tensor zf = factors[t];
      dz.index_add_(1, pairs[0], dacc * zf[1]).index_add_(1, pairs[1], dacc * zf[0]);
    }
  }
  return dz;
}

}  // namespace

TORCH_LIBRARY(ctm_native, m) {
  m.def("tick_loop_train(Tensor[] p, Tensor(a!)[] buf, Tensor pairs, Tensor(b!) Z, Tensor(c!) seq, float eps) -> ()");
  m.def("tick_loop_backward(Tensor[] s, Tensor[] p, Tensor(a!)[] g, Tensor pairs, Tensor dZt, Tensor factors, "
        "Tensor seq, Tensor(b!) dseq, Tensor(c!) dW1) -> Tensor");
}

TORCH_LIBRARY_IMPL(ctm_native, CPU, m) {
  m.impl("tick_loop_train", &tick_loop_train);
  m.impl("tick_loop_backward", &tick_loop_backward);
}
