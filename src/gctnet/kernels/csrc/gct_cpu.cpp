// GCT on the CPU: fused per-sample kernels (built on first use by gctnet/kernels/cpu_ops.py).
//
// The math is that of gctnet/functional.py (official semantics, see REFERENCE.md).  Per sample n the
// (C, L) slab of x (L = product of the spatial dims) is reduced, the per-sample gate math runs, and the
// slab is scaled while it is still in the cache: one DRAM read and one write of x in the forward
// instead of two reads and a write; in the backward one read of (grad_y, x) for the dot product and a
// cached re-read for grad_x.  When there are fewer samples than threads, "contiguous" inputs are
// processed in phases parallel over the (n, c) rows instead (batch-1 inference on many cores).
//
// Layouts: contiguous (N, C, *spatial) ("rows": each channel's L values are contiguous) and
// channels_last / channels_last_3d / (N, L, C)-strided 1-D ("cl": the C channels of one position are
// contiguous).  Anything else is copied to contiguous first.  dtypes: float64 (statistics in float64),
// float32, float16, bfloat16 (statistics in float32).  Outputs keep the input's dtype and layout.
//
// Ops (namespace gctnet_cpu, CPU dispatch key; eager use only, gctnet never calls them while compiling):
//   forward(x, alpha, gamma, beta, eps, mode, after_relu) -> (y, t, s, e, norm_inv)
//   forward_into(x, alpha, gamma, beta, eps, mode, after_relu, out!) -> (t, s, e, norm_inv)
//                                                 (y written into out, which has x's layout)
//   scale(x, t) -> y = x * (1 + t)                (the checkpointed GCT+conv path's recomputation)
//   scale_into(x, t, out!)                        (the same, written into out)
//   backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, grad_x!)
//       -> (grad_alpha, grad_gamma, grad_beta)    (grad_x is written in place; numel 0: not wanted)

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

enum class Layout { Rows, ChannelsLast };

struct Geometry {
  int64_t N, C, L;
  Layout layout;
};

// The layout of a dense x, or nullopt when it is neither of the two the kernels address.
c10::optional<Layout> layout_of(const Tensor& x) {
  if (x.is_contiguous()) return Layout::Rows;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::ChannelsLast;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return Layout::ChannelsLast;
  if (x.dim() == 3) {  // (N, C, L) with strides (L*C, 1, C): a transposed (N, L, C) tensor
    const int64_t C = x.size(1), L = x.size(2);
    if (x.stride(1) == 1 && x.stride(2) == C && x.stride(0) == C * L) return Layout::ChannelsLast;
  }
  return c10::nullopt;
}

// x in an addressable layout (a contiguous copy where needed) and its geometry.
std::pair<Tensor, Geometry> addressable(const Tensor& x) {
  auto layout = layout_of(x);
  Tensor xa = layout ? x : x.contiguous();
  Geometry g{xa.size(0), xa.size(1), xa.numel() / std::max<int64_t>(1, xa.size(0) * xa.size(1)),
             layout ? *layout : Layout::Rows};
  return {xa, g};
}

// Is t laid out exactly like the (addressable) reference tensor?
bool same_layout(const Tensor& t, const Tensor& ref) {
  return t.sizes() == ref.sizes() && t.strides() == ref.strides();
}

// kind: 0 = sum x^2, 1 = sum |x|, 2 = sum x
template <typename T, typename A>
void reduce_row(const T* r, int64_t L, int kind, A* out) {
  A acc = 0;
  if (kind == 0) {
#pragma omp simd reduction(+ : acc)
    for (int64_t l = 0; l < L; ++l) {
      const A v = static_cast<A>(r[l]);
      acc += v * v;
    }
  } else if (kind == 1) {
#pragma omp simd reduction(+ : acc)
    for (int64_t l = 0; l < L; ++l) acc += std::abs(static_cast<A>(r[l]));
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t l = 0; l < L; ++l) acc += static_cast<A>(r[l]);
  }
  *out = acc;
}

// Per-channel sums of one sample in the channels-last layout (x points at the sample).
template <typename T, typename A>
void reduce_sample_cl(const T* x, int64_t C, int64_t L, int kind, A* S) {
  std::fill(S, S + C, A(0));
  for (int64_t l = 0; l < L; ++l) {
    const T* r = x + l * C;
    if (kind == 0) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const A v = static_cast<A>(r[c]);
        S[c] += v * v;
      }
    } else if (kind == 1) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) S[c] += std::abs(static_cast<A>(r[c]));
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) S[c] += static_cast<A>(r[c]);
    }
  }
}

template <typename T, typename A>
void dot_row(const T* a, const T* b, int64_t L, A* out) {
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t l = 0; l < L; ++l) acc += static_cast<A>(a[l]) * static_cast<A>(b[l]);
  *out = acc;
}

template <typename T, typename A>
void dot_sample_cl(const T* a, const T* b, int64_t C, int64_t L, A* P) {
  std::fill(P, P + C, A(0));
  for (int64_t l = 0; l < L; ++l) {
    const T* ra = a + l * C;
    const T* rb = b + l * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) P[c] += static_cast<A>(ra[c]) * static_cast<A>(rb[c]);
  }
}

// The gate multiplier in the input's dtype, read back in the accumulation dtype (y = T(x * gate)
// with the gate rounded to T first, exactly as the PyTorch path's x * gate.to(x.dtype)).
template <typename T, typename A>
A gate_of(A t) {
  return static_cast<A>(static_cast<T>(A(1) + t));
}

// y = x * gate[c] for one contiguous row / one channels-last sample.
template <typename T, typename A>
void scale_row(const T* x, T* y, int64_t L, A gate) {
#pragma omp simd
  for (int64_t l = 0; l < L; ++l) y[l] = static_cast<T>(static_cast<A>(x[l]) * gate);
}

template <typename T, typename A>
void scale_sample_cl(const T* x, T* y, int64_t C, int64_t L, const A* gate) {
  for (int64_t l = 0; l < L; ++l) {
    const T* r = x + l * C;
    T* o = y + l * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = static_cast<T>(static_cast<A>(r[c]) * gate[c]);
  }
}

// grad_x = grad_y * gate + coef * f(x); f = x (l2), sign(x) (l1), 1 (l1 after ReLU).  gx may alias gy.
// gate and coef are already rounded to T (as the PyTorch path's .to(x.dtype)).
template <typename T, typename A>
void grad_row(const T* gy, const T* x, T* gx, int64_t L, A gate, A coef, int fkind) {
  if (fkind == 0) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const T prod = static_cast<T>(static_cast<A>(gy[l]) * gate);
      gx[l] = static_cast<T>(static_cast<A>(prod) + coef * static_cast<A>(x[l]));
    }
  } else if (fkind == 1) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const A v = static_cast<A>(x[l]);
      const A sgn = static_cast<A>((v > A(0)) - (v < A(0)));
      const T prod = static_cast<T>(static_cast<A>(gy[l]) * gate);
      gx[l] = static_cast<T>(static_cast<A>(prod) + coef * sgn);
    }
  } else {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const T prod = static_cast<T>(static_cast<A>(gy[l]) * gate);
      gx[l] = static_cast<T>(static_cast<A>(prod) + coef);
    }
  }
}

template <typename T, typename A>
void grad_sample_cl(const T* gy, const T* x, T* gx, int64_t C, int64_t L, const A* gate, const A* coef, int fkind) {
  for (int64_t l = 0; l < L; ++l) {
    const int64_t o = l * C;
    const T* rg = gy + o;
    const T* rx = x + o;
    T* rgx = gx + o;
    if (fkind == 0) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T prod = static_cast<T>(static_cast<A>(rg[c]) * gate[c]);
        rgx[c] = static_cast<T>(static_cast<A>(prod) + coef[c] * static_cast<A>(rx[c]));
      }
    } else if (fkind == 1) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const A v = static_cast<A>(rx[c]);
        const A sgn = static_cast<A>((v > A(0)) - (v < A(0)));
        const T prod = static_cast<T>(static_cast<A>(rg[c]) * gate[c]);
        rgx[c] = static_cast<T>(static_cast<A>(prod) + coef[c] * sgn);
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T prod = static_cast<T>(static_cast<A>(rg[c]) * gate[c]);
        rgx[c] = static_cast<T>(static_cast<A>(prod) + coef[c]);
      }
    }
  }
}

// The per-sample gate math (functional._stats_from_sums) for one sample: S -> t, s, e, norm_inv.
template <typename A>
void sample_stats(const A* S, const A* a, const A* g, const A* b, int64_t C, A eps, bool l2, A* t, A* s, A* e,
                  A* norm_inv) {
  A m = 0;
  for (int64_t c = 0; c < C; ++c) {
    e[c] = l2 ? std::sqrt(S[c] + eps) : S[c];
    s[c] = a[c] * e[c];
    m += l2 ? s[c] * s[c] : std::abs(s[c]);
  }
  m /= static_cast<A>(C);
  const A ni = l2 ? A(1) / std::sqrt(m + eps) : A(1) / (m + eps);
  *norm_inv = ni;
  for (int64_t c = 0; c < C; ++c) t[c] = std::tanh(g[c] * s[c] * ni + b[c]);
}

// The per-sample backward math (functional._grads_from_dot) for one sample: p -> coef and the
// sample's contributions to the parameter gradients.
template <typename A>
void sample_grads(const A* p, const A* a, const A* g, const A* t, const A* s, const A* e, A ni, int64_t C,
                  bool l2, A* coef, A* ga, A* gg, A* gb) {
  A gsum = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A dz = p[c] * (A(1) - t[c] * t[c]);
    gb[c] = dz;
    gsum += dz * g[c] * s[c];
  }
  const A inv_c = A(1) / static_cast<A>(C);
  for (int64_t c = 0; c < C; ++c) {
    const A dz = gb[c];
    A ds;
    if (l2) {
      ds = dz * g[c] * ni - s[c] * (ni * ni * ni) * gsum * inv_c;
      coef[c] = ds * a[c] / e[c];
    } else {
      const A sgn = static_cast<A>((s[c] > A(0)) - (s[c] < A(0)));
      ds = dz * g[c] * ni - sgn * (ni * ni) * gsum * inv_c;
      coef[c] = ds * a[c];
    }
    ga[c] = ds * e[c];
    gg[c] = dz * s[c] * ni;
  }
}

int reduce_kind(c10::string_view mode, bool after_relu) {
  return mode == "l2" ? 0 : (after_relu ? 2 : 1);
}

void check_mode(c10::string_view mode) {
  TORCH_CHECK(mode == "l2" || mode == "l1", "gctnet_cpu: mode must be 'l2' or 'l1', got '", std::string(mode), "'");
}

at::ScalarType acc_type(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

void check_input(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "gctnet_cpu: ", name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 3, "gctnet_cpu: ", name, " must be (N, C, *spatial), got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "gctnet_cpu: ", name, " must be floating point, got ",
              x.scalar_type());
}

// Parallel over samples when there are enough of them; else the phased variant (contiguous only).
bool per_sample(const Geometry& g) {
  return g.layout == Layout::ChannelsLast || g.N >= at::get_num_threads();
}

// ---------------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------------
// The output buffer for x (addressable): `out` when given (checked), else a fresh tensor like x.
Tensor output_for(const Tensor& x, const c10::optional<Tensor>& out, const char* op) {
  if (!out) return at::empty_like(x);
  TORCH_CHECK(out->scalar_type() == x.scalar_type(), "gctnet_cpu::", op, ": out has dtype ", out->scalar_type(),
              " but x has ", x.scalar_type());
  TORCH_CHECK(same_layout(*out, x), "gctnet_cpu::", op, ": out must have x's shape ", x.sizes(), " and strides ",
              x.strides(), ", got shape ", out->sizes(), " and strides ", out->strides());
  TORCH_CHECK(!out->is_alias_of(x), "gctnet_cpu::", op, ": out must not share memory with x");
  return *out;
}

// y and the statistics (t, s, e, norm_inv); y is written into `out` when given.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> forward_impl(const Tensor& x_in, const Tensor& alpha,
                                                                const Tensor& gamma, const Tensor& beta, double eps,
                                                                c10::string_view mode, bool after_relu,
                                                                const c10::optional<Tensor>& out) {
  check_input(x_in, "x");
  check_mode(mode);
  Tensor x;
  Geometry g{};
  std::tie(x, g) = addressable(x_in);
  const auto acc = acc_type(x.scalar_type());
  auto opts = x.options().dtype(acc);
  Tensor a = alpha.to(acc).contiguous(), gm = gamma.to(acc).contiguous(), b = beta.to(acc).contiguous();
  TORCH_CHECK(a.numel() == g.C && gm.numel() == g.C && b.numel() == g.C,
              "gctnet_cpu: alpha, gamma, beta must have ", g.C, " elements");
  Tensor y = output_for(x, out, "forward_into");
  TORCH_INTERNAL_ASSERT(same_layout(y, x));
  Tensor S = at::empty({g.N, g.C}, opts), t = at::empty({g.N, g.C}, opts), s = at::empty({g.N, g.C}, opts),
         e = at::empty({g.N, g.C}, opts), ni = at::empty({g.N, 1}, opts);
  const int kind = reduce_kind(mode, after_relu);
  const bool l2 = mode == "l2";
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gctnet_cpu::forward", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    A* Sp = S.mutable_data_ptr<A>();
    A* tp = t.mutable_data_ptr<A>();
    A* sp = s.mutable_data_ptr<A>();
    A* ep = e.mutable_data_ptr<A>();
    A* nip = ni.mutable_data_ptr<A>();
    const A* ap = a.const_data_ptr<A>();
    const A* gp = gm.const_data_ptr<A>();
    const A* bp = b.const_data_ptr<A>();
    const int64_t C = g.C, L = g.L, CL = g.C * g.L;
    const A epsA = static_cast<A>(eps);
    auto stats = [&](int64_t n) {
      sample_stats<A>(Sp + n * C, ap, gp, bp, C, epsA, l2, tp + n * C, sp + n * C, ep + n * C, nip + n);
    };
    if (g.N == 0 || C == 0) return;
    if (per_sample(g)) {
      at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
        std::vector<A> gate(C);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* xn = xp + n * CL;
          scalar_t* yn = yp + n * CL;
          if (g.layout == Layout::Rows) {
            for (int64_t c = 0; c < C; ++c) reduce_row<scalar_t, A>(xn + c * L, L, kind, Sp + n * C + c);
          } else {
            reduce_sample_cl<scalar_t, A>(xn, C, L, kind, Sp + n * C);
          }
          stats(n);
          for (int64_t c = 0; c < C; ++c) gate[c] = gate_of<scalar_t, A>(tp[n * C + c]);
          if (g.layout == Layout::Rows) {
            for (int64_t c = 0; c < C; ++c) scale_row<scalar_t, A>(xn + c * L, yn + c * L, L, gate[c]);
          } else {
            scale_sample_cl<scalar_t, A>(xn, yn, C, L, gate.data());
          }
        }
      });
    } else {  // few samples, contiguous rows: phases parallel over the N*C rows
      const int64_t rows = g.N * C;
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L));
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) reduce_row<scalar_t, A>(xp + r * L, L, kind, Sp + r);
      });
      for (int64_t n = 0; n < g.N; ++n) stats(n);
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) scale_row<scalar_t, A>(xp + r * L, yp + r * L, L, gate_of<scalar_t, A>(tp[r]));
      });
    }
  });
  return {y, t, s, e, ni};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gct_forward(const Tensor& x, const Tensor& alpha,
                                                               const Tensor& gamma, const Tensor& beta, double eps,
                                                               c10::string_view mode, bool after_relu) {
  return forward_impl(x, alpha, gamma, beta, eps, mode, after_relu, c10::nullopt);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gct_forward_into(const Tensor& x, const Tensor& alpha, const Tensor& gamma,
                                                            const Tensor& beta, double eps, c10::string_view mode,
                                                            bool after_relu, const Tensor& out) {
  auto r = forward_impl(x, alpha, gamma, beta, eps, mode, after_relu, out);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

// ---------------------------------------------------------------------------------------------------
// scale: y = x * (1 + t), the recomputation of the forward output from its saved statistics
// ---------------------------------------------------------------------------------------------------
Tensor scale_impl(const Tensor& x_in, const Tensor& t_in, const c10::optional<Tensor>& out) {
  check_input(x_in, "x");
  Tensor x;
  Geometry g{};
  std::tie(x, g) = addressable(x_in);
  Tensor t = t_in.to(acc_type(x.scalar_type())).contiguous();
  TORCH_CHECK(t.numel() == g.N * g.C, "gctnet_cpu: t must have N*C = ", g.N * g.C, " elements, got ", t.numel());
  Tensor y = output_for(x, out, "scale_into");
  TORCH_INTERNAL_ASSERT(same_layout(y, x));
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gctnet_cpu::scale", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const A* tp = t.const_data_ptr<A>();
    const int64_t C = g.C, L = g.L, CL = g.C * g.L;
    if (g.layout == Layout::Rows) {
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L));
      at::parallel_for(0, g.N * C, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) scale_row<scalar_t, A>(xp + r * L, yp + r * L, L, gate_of<scalar_t, A>(tp[r]));
      });
    } else {
      at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
        std::vector<A> gate(C);
        for (int64_t n = begin; n < end; ++n) {
          for (int64_t c = 0; c < C; ++c) gate[c] = gate_of<scalar_t, A>(tp[n * C + c]);
          scale_sample_cl<scalar_t, A>(xp + n * CL, yp + n * CL, C, L, gate.data());
        }
      });
    }
  });
  return y;
}

Tensor gct_scale(const Tensor& x, const Tensor& t) { return scale_impl(x, t, c10::nullopt); }

void gct_scale_into(const Tensor& x, const Tensor& t, const Tensor& out) { scale_impl(x, t, out); }

// ---------------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor, Tensor> gct_backward(const Tensor& grad_y_in, const Tensor& x_in, const Tensor& alpha,
                                                const Tensor& gamma, const Tensor& t_in, const Tensor& s_in,
                                                const Tensor& e_in, const Tensor& ni_in, c10::string_view mode,
                                                bool after_relu, const Tensor& grad_x_out) {
  check_input(x_in, "x");
  check_input(grad_y_in, "grad_y");
  check_mode(mode);
  TORCH_CHECK(grad_y_in.sizes() == x_in.sizes(), "gctnet_cpu: grad_y has shape ", grad_y_in.sizes(),
              " but x has shape ", x_in.sizes());
  Tensor x;
  Geometry g{};
  std::tie(x, g) = addressable(x_in);
  const auto acc = acc_type(x.scalar_type());
  // grad_y in x's layout and dtype (a copy only when the autograd engine hands over another layout)
  Tensor gy = grad_y_in;
  if (gy.scalar_type() != x.scalar_type() || !same_layout(gy, x)) gy = at::empty_like(x).copy_(grad_y_in);
  const bool want_gx = grad_x_out.numel() > 0;
  if (want_gx) {
    TORCH_CHECK(grad_x_out.sizes() == x.sizes() && grad_x_out.scalar_type() == x.scalar_type(),
                "gctnet_cpu: grad_x must have x's shape and dtype");
  }
  // write grad_x directly when grad_x_out has x's layout (it may be grad_y itself), else via a buffer
  Tensor gx = (!want_gx || same_layout(grad_x_out, x)) ? grad_x_out : at::empty_like(x);
  if (want_gx && !gx.is_same(gy) && gx.is_alias_of(gy)) {
    gx = at::empty_like(x);  // in place only through the very tensor that is read (same elements)
  }
  Tensor a = alpha.to(acc).contiguous(), gm = gamma.to(acc).contiguous();
  Tensor t = t_in.to(acc).contiguous(), s = s_in.to(acc).contiguous(), e = e_in.to(acc).contiguous(),
         ni = ni_in.to(acc).contiguous();
  auto opts = x.options().dtype(acc);
  Tensor P = at::empty({g.N, g.C}, opts), coef = at::empty({g.N, g.C}, opts);
  Tensor ga = at::empty({g.N, g.C}, opts), gg = at::empty({g.N, g.C}, opts), gb = at::empty({g.N, g.C}, opts);
  const bool l2 = mode == "l2";
  const int fkind = l2 ? 0 : (after_relu ? 2 : 1);
  if (g.N > 0 && g.C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gctnet_cpu::backward", [&] {
      using A = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
      scalar_t* gxp = want_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr;
      A* Pp = P.mutable_data_ptr<A>();
      A* cp = coef.mutable_data_ptr<A>();
      A* gap = ga.mutable_data_ptr<A>();
      A* ggp = gg.mutable_data_ptr<A>();
      A* gbp = gb.mutable_data_ptr<A>();
      const A* ap = a.const_data_ptr<A>();
      const A* gmp = gm.const_data_ptr<A>();
      const A* tp = t.const_data_ptr<A>();
      const A* sp = s.const_data_ptr<A>();
      const A* ep = e.const_data_ptr<A>();
      const A* nip = ni.const_data_ptr<A>();
      const int64_t C = g.C, L = g.L, CL = g.C * g.L;
      auto math = [&](int64_t n) {
        const int64_t o = n * C;
        sample_grads<A>(Pp + o, ap, gmp, tp + o, sp + o, ep + o, nip[n], C, l2, cp + o, gap + o, ggp + o, gbp + o);
      };
      auto round = [](A v) { return static_cast<A>(static_cast<scalar_t>(v)); };
      if (g.L == 0) {
        P.zero_();
        for (int64_t n = 0; n < g.N; ++n) math(n);
        return;
      }
      if (per_sample(g)) {
        at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
          std::vector<A> gate(C), cf(C);
          for (int64_t n = begin; n < end; ++n) {
            const scalar_t* xn = xp + n * CL;
            const scalar_t* gn = gyp + n * CL;
            if (g.layout == Layout::Rows) {
              for (int64_t c = 0; c < C; ++c) dot_row<scalar_t, A>(gn + c * L, xn + c * L, L, Pp + n * C + c);
            } else {
              dot_sample_cl<scalar_t, A>(gn, xn, C, L, Pp + n * C);
            }
            math(n);
            if (!want_gx) continue;
            for (int64_t c = 0; c < C; ++c) {
              gate[c] = gate_of<scalar_t, A>(tp[n * C + c]);
              cf[c] = round(cp[n * C + c]);
            }
            scalar_t* gxn = gxp + n * CL;
            if (g.layout == Layout::Rows) {
              for (int64_t c = 0; c < C; ++c)
                grad_row<scalar_t, A>(gn + c * L, xn + c * L, gxn + c * L, L, gate[c], cf[c], fkind);
            } else {
              grad_sample_cl<scalar_t, A>(gn, xn, gxn, C, L, gate.data(), cf.data(), fkind);
            }
          }
        });
      } else {
        const int64_t rows = g.N * C;
        const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L));
        at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) dot_row<scalar_t, A>(gyp + r * L, xp + r * L, L, Pp + r);
        });
        for (int64_t n = 0; n < g.N; ++n) math(n);
        if (want_gx) {
          at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
            for (int64_t r = begin; r < end; ++r)
              grad_row<scalar_t, A>(gyp + r * L, xp + r * L, gxp + r * L, L, gate_of<scalar_t, A>(tp[r]),
                                    round(cp[r]), fkind);
          });
        }
      }
    });
  }
  if (want_gx && !gx.is_same(grad_x_out)) grad_x_out.copy_(gx);
  // parameter gradients: sums over the batch in a fixed order (deterministic)
  return {ga.sum(0), gg.sum(0), gb.sum(0)};
}

}  // namespace

TORCH_LIBRARY(gctnet_cpu, m) {
  m.def("forward(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, str gct_mode, bool after_relu)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("forward_into(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, str gct_mode, bool after_relu,"
        " Tensor(a!) out) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("scale(Tensor x, Tensor t) -> Tensor");
  m.def("scale_into(Tensor x, Tensor t, Tensor(a!) out) -> ()");
  m.def("backward(Tensor grad_y, Tensor x, Tensor alpha, Tensor gamma, Tensor t, Tensor s, Tensor e, "
        "Tensor norm_inv, str gct_mode, bool after_relu, Tensor(a!) grad_x) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gctnet_cpu, CPU, m) {
  m.impl("forward", &gct_forward);
  m.impl("forward_into", &gct_forward_into);
  m.impl("scale", &gct_scale);
  m.impl("scale_into", &gct_scale_into);
  m.impl("backward", &gct_backward);
}
