// The fast engine's two tick loops (ctm/engine.py: `tick` with slots, and the reversed loop of
// `_tick_backward`) in C++, so that a tick costs its kernels and not also ~40 Python calls: the same ATen
// calls in the same order, except four steps done in one pass per row (the synapses' LayerNorm, its
// backward with the GLU's, the first neuron-level GLU's backward, the softmax backward; see below).
// Built on first use by ctm/native.py; engine.py falls back to its Python loops when it cannot be built.
// tests/test_native.py holds both loops to the Python ones.
//
// Layouts (engine.py's): z (D, B) per tick in Z (T + 1, D, B); the pre-activation sequence seq (D, M + T, B)
// (the start trace, then a_1 .. a_T); per-tick buffers with the tick first. `pairs` is empty for first-last
// action synchronisation (outer product of the last na neurons), else (2, P) the pairs' neurons.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using at::Tensor;

// Rows per parallel chunk: about 32K values, so a tick's few thousand run on one thread (waking the pool
// costs more than they take) and large batches split.
int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_length, 1)); }

// Steps of a tick as one pass over each row instead of several ATen calls (which at these sizes cost more in
// dispatch than in arithmetic). Same formulas as the ATen calls they replace; the sums run in another order,
// so results agree to rounding (float32 ~1e-7), not bit for bit. gamma and beta: contiguous (D,).

// The synapses' LayerNorm of g (B, D) written into pre (B, D, any strides: a column of the trace), with the
// rows' mean and 1/std (B, 1) for the backward.
void layer_norm_into(const Tensor& g, const Tensor& gamma, const Tensor& beta, double eps, const Tensor& pre,
                     const Tensor& mean, const Tensor& rstd) {
  TORCH_CHECK(g.is_contiguous() && mean.is_contiguous() && rstd.is_contiguous() && gamma.is_contiguous() &&
              beta.is_contiguous());
  const int64_t B = g.size(0), D = g.size(1), ps0 = pre.stride(0), ps1 = pre.stride(1);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "layer_norm_into", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *G = g.data_ptr<scalar_t>(), *ga = gamma.data_ptr<scalar_t>(), *be = beta.data_ptr<scalar_t>();
    scalar_t* P = pre.data_ptr<scalar_t>();
    scalar_t *mu_out = mean.data_ptr<scalar_t>(), *rs_out = rstd.data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* gr = G + b * D;
        acc_t sum = 0;
        for (int64_t i = 0; i < D; ++i) sum += gr[i];
        const acc_t mu = sum / D;
        acc_t var = 0;
        for (int64_t i = 0; i < D; ++i) {
          const acc_t d = gr[i] - mu;
          var += d * d;
        }
        const acc_t rs = acc_t(1) / std::sqrt(var / D + acc_t(eps));
        scalar_t* pr = P + b * ps0;
        for (int64_t i = 0; i < D; ++i) pr[i * ps1] = (gr[i] - mu) * rs * ga[i] + be[i];
        mu_out[b] = mu;
        rs_out[b] = rs;
      }
    });
  });
}

// LayerNorm's input gradient (engine._layer_norm_backward) times the synapse GLU's Jacobians jl (B, 2, D):
// dlin (B, 2, D), the gradient of the GLU's input. dy (B, D, any strides): a column of the trace's gradient.
void layer_norm_glu_backward(const Tensor& dy, const Tensor& g, const Tensor& mean, const Tensor& rstd,
                             const Tensor& gamma, const Tensor& jl, const Tensor& dlin) {
  TORCH_CHECK(g.is_contiguous() && jl.is_contiguous() && dlin.is_contiguous() && gamma.is_contiguous());
  const int64_t B = g.size(0), D = g.size(1), ys0 = dy.stride(0), ys1 = dy.stride(1);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "layer_norm_glu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *Y = dy.data_ptr<scalar_t>(), *G = g.data_ptr<scalar_t>(), *J = jl.data_ptr<scalar_t>();
    const scalar_t *mu_in = mean.data_ptr<scalar_t>(), *rs_in = rstd.data_ptr<scalar_t>();
    const scalar_t* ga = gamma.data_ptr<scalar_t>();
    scalar_t* out = dlin.data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t *y = Y + b * ys0, *gr = G + b * D, *j = J + b * 2 * D;
        const acc_t mu = mu_in[b], rs = rs_in[b];
        acc_t m1 = 0, m2 = 0;
        for (int64_t i = 0; i < D; ++i) {
          const acc_t gg = acc_t(y[i * ys1]) * ga[i];
          m1 += gg;
          m2 += gg * (gr[i] - mu) * rs;
        }
        m1 /= D;
        m2 /= D;
        scalar_t* o = out + b * 2 * D;
        for (int64_t i = 0; i < D; ++i) {
          const acc_t dg = rs * (acc_t(y[i * ys1]) * ga[i] - m1 - (gr[i] - mu) * rs * m2);
          o[i] = dg * j[i];
          o[D + i] = dg * j[D + i];
        }
      }
    });
  });
}

// The first neuron-level GLU's input gradient, from its gate's sigmoid s and output u (D, H, B each) and the
// output's gradient du (D, H, B): dh (D, 2H, B) = [du * s, du * u * (1 - s)], and its sum over the rows added
// to db (D, 2H), the bias gradient. Formed a tick at a time into one reused buffer, while the tick's tensors
// are in cache (the sigmoid by ATen, vectorised), instead of Jacobians and gradients for all ticks.
void nlm_glu_backward(const Tensor& du, const Tensor& s, const Tensor& u, const Tensor& dh, const Tensor& db) {
  TORCH_CHECK(du.is_contiguous() && s.is_contiguous() && u.is_contiguous() && dh.is_contiguous() &&
              db.is_contiguous());
  const int64_t D = u.size(0), H = u.size(1), B = u.size(2);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "nlm_glu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *DU = du.data_ptr<scalar_t>(), *S = s.data_ptr<scalar_t>(), *U = u.data_ptr<scalar_t>();
    scalar_t *out = dh.data_ptr<scalar_t>(), *bias = db.data_ptr<scalar_t>();
    at::parallel_for(0, D, row_grain(H * B), [&](int64_t d0, int64_t d1) {
      for (int64_t d = d0; d < d1; ++d) {
        for (int64_t k = 0; k < H; ++k) {
          const int64_t row = (d * H + k) * B;
          const scalar_t* __restrict__ g = DU + row;
          const scalar_t* __restrict__ sg = S + row;
          const scalar_t* __restrict__ y = U + row;
          scalar_t* __restrict__ da = out + (d * 2 * H + k) * B;
          scalar_t* __restrict__ dgate = da + H * B;
          acc_t sum_a = 0, sum_gate = 0;
          for (int64_t b = 0; b < B; ++b) {
            da[b] = g[b] * sg[b];
            dgate[b] = g[b] * y[b] * (scalar_t(1) - sg[b]);
            sum_a += da[b];
            sum_gate += dgate[b];
          }
          bias[d * 2 * H + k] += sum_a;
          bias[d * 2 * H + H + k] += sum_gate;
        }
      }
    });
  });
}

// Softmax's input gradient over the last dim of rows (R, N): ds = w * (dw - <dw, w>).
void softmax_backward(const Tensor& dw, const Tensor& w, const Tensor& ds) {
  TORCH_CHECK(dw.is_contiguous() && w.is_contiguous() && ds.is_contiguous());
  const int64_t N = w.size(-1), R = w.numel() / N;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "softmax_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *DW = dw.data_ptr<scalar_t>(), *W = w.data_ptr<scalar_t>();
    scalar_t* out = ds.data_ptr<scalar_t>();
    at::parallel_for(0, R, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t *x = DW + r * N, *p = W + r * N;
        acc_t dot = 0;
        for (int64_t n = 0; n < N; ++n) dot += acc_t(x[n]) * p[n];
        scalar_t* o = out + r * N;
        for (int64_t n = 0; n < N; ++n) o[n] = p[n] * (x[n] - dot);
      }
    });
  });
}

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

// The forward: T ticks, every intermediate the backward needs written into its per-tick buffer.
// p: kT, v, A, cq, r, Wz, Wo, bs, gamma, beta, W1, b1, W2, b2 (TickParams order, without z0/trace0);
// buf: alpha, q, w, o, g, lin, mean, rstd, u, h1, h2 (TickSlots order), each (T, ...) in training. Tick t
// writes slot t % (a buffer's length), so inference passes one slot each (two for alpha, which the next tick
// reads): the same loop, its buffers staying in cache. gates_only: of h1 only the gate half is kept (all the
// C++ backward reads), the first NLM layer's output computed into one reused buffer.
void tick_loop_train(at::TensorList p, at::TensorList buf, const Tensor& pairs, const Tensor& Z, const Tensor& seq,
                     double eps, bool gates_only) {
  const Tensor &kT = p[0], &v = p[1], &A = p[2], &cq = p[3], &r = p[4], &Wz = p[5], &Wo = p[6], &bs = p[7];
  const Tensor &gamma = p[8], &beta = p[9], &W1 = p[10], &b1 = p[11], &W2 = p[12], &b2 = p[13];
  const int64_t T = A.size(0), K = A.size(2), D = Z.size(1), B = Z.size(2), M = seq.size(1) - T;
  const int64_t dh = kT.size(1);
  const Tensor WzT = Wz.t(), WoT = Wo.t();
  const int64_t H = W1.size(1) / 2;
  Tensor h1_tmp = gates_only ? at::empty({D, 2 * H, B}, Z.options()) : Tensor();
  Tensor alpha_prev = at::zeros({B, K}, Z.options());
  for (int64_t t = 0; t < T; ++t) {
    auto slot = [t](const Tensor& x) { return x[t % x.size(0)]; };
    Tensor alpha = slot(buf[0]), q = slot(buf[1]), w = slot(buf[2]), o = slot(buf[3]), g = slot(buf[4]);
    Tensor lin = slot(buf[5]), mean = slot(buf[6]), rstd = slot(buf[7]), u = slot(buf[8]), h1 = slot(buf[9]);
    Tensor h2 = slot(buf[10]);
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
    layer_norm_into(g, gamma, beta, eps, seq.select(1, M + t).t(), mean, rstd);
    // 4-5. neuron-level models on the window of the last M pre-activations
    if (gates_only) {  // the backward reads only the gate half of h1: the rest stays in a reused buffer
      at::baddbmm_out(h1_tmp, b1.expand_as(h1_tmp), W1, seq.narrow(1, t + 1, M));
      at::glu_out(u, h1_tmp, 1);
      h1.narrow(1, H, H).copy_(h1_tmp.narrow(1, H, H));
    } else {
      at::baddbmm_out(h1, b1.expand_as(h1), W1, seq.narrow(1, t + 1, M));
      at::glu_out(u, h1, 1);
    }
    at::baddbmm_out(h2, b2.expand_as(h2), W2, u);
    Tensor z_out = Z[t + 1].unsqueeze(1);
    at::glu_out(z_out, h2, 1);
    alpha_prev = alpha;
  }
}

// The reversed loop of engine._tick_backward: fills dh2s, dlins, dqs, dss, dos, daccs, dseq, dW1 and db1
// and returns the gradient of z_0 per row (B, D). s: the forward's buffers h2, h1, g, mean, rstd, lin, w, u:
// h2 and lin already replaced by their GLUs' Jacobians (engine._glu_jacobians, all ticks at once), h1 as the
// forward wrote it (its Jacobians are formed here, a tick at a time: `nlm_glu_backward`);
// p: v, kT, A2 (2A for first-last), r, Wz, Wo, gamma, W1t (D, M, 2H), W2t (D, H, 2);
// g: dh2s, dh1 (one tick's (D, 2H, B): its gradient is used within the tick), dlins, dqs, dss, dos, daccs
// (T, ...); dW1 (D, M, 2H), db1 (D, 2H) zeros; dZt (T, B, D); factors as engine's.
Tensor tick_loop_backward(at::TensorList s, at::TensorList p, at::TensorList g, const Tensor& pairs, const Tensor& dZt,
                          const Tensor& factors, const Tensor& seq, const Tensor& dseq, const Tensor& dW1,
                          const Tensor& db1) {
  const Tensor &h2s = s[0], &h1s = s[1], &gs = s[2], &means = s[3], &rstds = s[4], &lins = s[5], &ws = s[6];
  const Tensor& us = s[7];
  const Tensor &v = p[0], &kT = p[1], &A2 = p[2], &r = p[3], &Wz = p[4], &Wo = p[5], &gamma = p[6];
  const Tensor &W1t = p[7], &W2t = p[8];
  const int64_t T = A2.size(0), K = A2.size(2), D = dZt.size(2), B = dZt.size(1), M = seq.size(1) - T;
  const int64_t H = W2t.size(1), dh = v.size(2);
  const bool first_last = pairs.numel() == 0;
  const int64_t na = first_last ? static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(K)))) : 0;
  const Tensor vT = v.transpose(1, 2), kTT = kT.transpose(1, 2);
  const Tensor dh1 = g[1];  // (D, 2H, B), reused by every tick: its consumers are in the tick
  Tensor dacc;
  Tensor dz = dZt[T - 1];
  for (int64_t t = T - 1; t >= 0; --t) {
    Tensor j2 = h2s[t];
    Tensor dh2 = g[0][t], dlin = g[2][t].view({B, 2, D});
    Tensor dq = g[3][t], ds = g[4][t], dout = g[5][t], dacc_t = g[6][t];
    // neuron-level models (explicit expand, as in engine.py); the first GLU's gradient from its input h1
    at::mul_out(dh2, dz.t().unsqueeze(1).expand_as(j2), j2);
    Tensor sig = at::sigmoid(h1s[t].narrow(1, H, H));  // (D, H, B)
    nlm_glu_backward(at::bmm(W2t, dh2), sig, us[t], dh1, db1);
    dW1.baddbmm_(seq.narrow(1, t + 1, M), dh1.transpose(1, 2));
    dseq.narrow(1, t + 1, M).add_(at::bmm(W1t, dh1));
    // synapses
    layer_norm_glu_backward(dseq.select(1, M + t).t(), gs[t], means[t], rstds[t], gamma, lins[t], dlin);
    Tensor dlin2 = dlin.view({B, 2 * D});
    // attention: softmax backward ds = w * (dw - <dw, w>)
    at::mm_out(dout, dlin2, Wo);
    softmax_backward(at::bmm(dout.view({-1, 1, dh}), vT), ws[t], ds);
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
  m.def("tick_loop_train(Tensor[] p, Tensor(a!)[] buf, Tensor pairs, Tensor(b!) Z, Tensor(c!) seq, float eps, bool gates_only) -> ()");
  m.def("tick_loop_backward(Tensor[] s, Tensor[] p, Tensor(a!)[] g, Tensor pairs, Tensor dZt, Tensor factors, "
        "Tensor seq, Tensor(b!) dseq, Tensor(c!) dW1, Tensor(d!) db1) -> Tensor");
}

TORCH_LIBRARY_IMPL(ctm_native, CPU, m) {
  m.impl("tick_loop_train", &tick_loop_train);
  m.impl("tick_loop_backward", &tick_loop_backward);
}
