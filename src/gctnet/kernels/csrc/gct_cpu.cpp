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
// Ops (namespace gctnet_cpu, CPU dispatch key): the raw CPU kernels of the gctnet::gct* operators
// (gctnet/kernels/ops.py registers them for the CPU key after a one-time self-check).
//   forward(x, alpha, gamma, beta, eps, mode, after_relu) -> (y, t, s, e, norm_inv)
//   scale(x, t) -> y = x * (1 + t)                (the checkpointed GCT+conv path's recomputation)
//   backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, grad_x!)
//       -> (grad_alpha, grad_gamma, grad_beta)    (grad_x is written in place; numel 0: not wanted)
//   isa() -> str                                  (the kernels' instruction set: "baseline" or "avx2")
//   parallel_threads() -> int                     (threads the parallel loops use: torch.get_num_threads())
//
// Threads: at::parallel_for on torch's OpenMP pool (the library is built with -fopenmp).
// Instruction sets: the loops (gct_cpu_kernels.h) are compiled twice on x86-64 with GCC, for the
// baseline (SSE2) and with AVX2+FMA; the AVX2 copy runs where the CPU has it (checked once at load).

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

// GCTNET_USE_LIBMVEC (set by cpu_ops.py with -lmvec on x86-64 glibc >= 2.35): declare tanhf's vector
// variants (_ZGVbN4v_tanhf, _ZGVdN8v_tanhf, ... in libmvec) so `omp simd` loops call them.
#ifndef GCTNET_USE_LIBMVEC
#define GCTNET_USE_LIBMVEC 0
#endif
#if GCTNET_USE_LIBMVEC
extern "C" {
#pragma omp declare simd notinbranch
float tanhf(float) noexcept;
}
#endif

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

// Pointers and geometry of one forward / backward call (the kernels in gct_cpu_kernels.h take these).
template <typename T, typename A>
struct ForwardArgs {
  const T* x;
  T* y;
  A *S, *t, *s, *e, *ni;     // (N, C) sums and statistics, (N,) norm_inv: written
  const A *a, *g, *b;        // (C,) alpha, gamma, beta
  Geometry geo;
  int kind;                  // 0 = sum x^2, 1 = sum |x|, 2 = sum x
  bool l2;
  A eps;
};

template <typename T, typename A>
struct BackwardArgs {
  const T *x, *gy;
  T* gx;                     // nullptr: grad_x not wanted (may equal gy: in place)
  A *P, *coef, *ga, *gg, *gb;  // (N, C): written
  const A *a, *g, *t, *s, *e, *ni;
  Geometry geo;
  bool l2;
  int fkind;                 // grad_x's f(x): 0 = x (l2), 1 = sign(x) (l1), 2 = 1 (l1 after ReLU)
};

// The kernel loops, once per instruction set (namespaces isa_baseline and isa_avx2).
#define GCTNET_ISA isa_baseline
#include "gct_cpu_kernels.h"
#undef GCTNET_ISA

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GCTNET_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define GCTNET_ISA isa_avx2
#include "gct_cpu_kernels.h"
#undef GCTNET_ISA
#pragma GCC pop_options
#else
#define GCTNET_HAVE_AVX2 0
#endif

// ---------------------------------------------------------------------------------------------------
// instruction set: AVX2+FMA where the CPU has it
// ---------------------------------------------------------------------------------------------------
bool cpu_has_avx2() {
#if GCTNET_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool use_avx2() {
  static const bool avx2 = cpu_has_avx2();
  return avx2;
}

std::string gct_isa() { return use_avx2() ? "avx2" : "baseline"; }

// How many threads the kernels' parallel loops use (a check that they run on torch's pool).
int64_t parallel_threads() {
  std::vector<int> seen(static_cast<size_t>(std::max(1, at::get_num_threads())), 0);
  at::parallel_for(0, 4096, 1, [&](int64_t begin, int64_t end) {
    volatile double sink = 0;
    for (int64_t i = begin; i < end; ++i) sink = sink + std::sqrt(static_cast<double>(i));
    const int tid = at::get_thread_num();
    if (tid >= 0 && tid < static_cast<int>(seen.size())) seen[tid] = 1;
  });
  return std::count(seen.begin(), seen.end(), 1);
}

#if GCTNET_HAVE_AVX2
#define GCTNET_RUN(fn, ...) \
  (use_avx2() ? isa_avx2::fn(__VA_ARGS__) : isa_baseline::fn(__VA_ARGS__))
#else
#define GCTNET_RUN(fn, ...) isa_baseline::fn(__VA_ARGS__)
#endif

// ---------------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------------
// y (in x's layout) and the statistics (t, s, e, norm_inv).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gct_forward(const Tensor& x_in, const Tensor& alpha,
                                                               const Tensor& gamma, const Tensor& beta, double eps,
                                                               c10::string_view mode, bool after_relu) {
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
  Tensor y = at::empty_like(x);
  TORCH_INTERNAL_ASSERT(same_layout(y, x));
  Tensor S = at::empty({g.N, g.C}, opts), t = at::empty({g.N, g.C}, opts), s = at::empty({g.N, g.C}, opts),
         e = at::empty({g.N, g.C}, opts), ni = at::empty({g.N, 1}, opts);
  const int kind = reduce_kind(mode, after_relu);
  const bool l2 = mode == "l2";
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gctnet_cpu::forward", [&] {
    using A = at::opmath_type<scalar_t>;
    ForwardArgs<scalar_t, A> p{x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), S.mutable_data_ptr<A>(),
                               t.mutable_data_ptr<A>(),      s.mutable_data_ptr<A>(),       e.mutable_data_ptr<A>(),
                               ni.mutable_data_ptr<A>(),     a.const_data_ptr<A>(),         gm.const_data_ptr<A>(),
                               b.const_data_ptr<A>(),        g,                             kind,
                               l2,                           static_cast<A>(eps)};
    GCTNET_RUN(forward_kernel, p);
  });
  return {y, t, s, e, ni};
}

// ---------------------------------------------------------------------------------------------------
// scale: y = x * (1 + t), the recomputation of the forward output from its saved statistics
// ---------------------------------------------------------------------------------------------------
Tensor gct_scale(const Tensor& x_in, const Tensor& t_in) {
  check_input(x_in, "x");
  Tensor x;
  Geometry g{};
  std::tie(x, g) = addressable(x_in);
  Tensor t = t_in.to(acc_type(x.scalar_type())).contiguous();
  TORCH_CHECK(t.numel() == g.N * g.C, "gctnet_cpu: t must have N*C = ", g.N * g.C, " elements, got ", t.numel());
  Tensor y = at::empty_like(x);
  TORCH_INTERNAL_ASSERT(same_layout(y, x));
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gctnet_cpu::scale", [&] {
    using A = at::opmath_type<scalar_t>;
    GCTNET_RUN(scale_kernel, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), t.const_data_ptr<A>(), g);
  });
  return y;
}

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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gctnet_cpu::backward", [&] {
    using A = at::opmath_type<scalar_t>;
    BackwardArgs<scalar_t, A> p{x.const_data_ptr<scalar_t>(),
                                gy.const_data_ptr<scalar_t>(),
                                want_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                                P.mutable_data_ptr<A>(),
                                coef.mutable_data_ptr<A>(),
                                ga.mutable_data_ptr<A>(),
                                gg.mutable_data_ptr<A>(),
                                gb.mutable_data_ptr<A>(),
                                a.const_data_ptr<A>(),
                                gm.const_data_ptr<A>(),
                                t.const_data_ptr<A>(),
                                s.const_data_ptr<A>(),
                                e.const_data_ptr<A>(),
                                ni.const_data_ptr<A>(),
                                g,
                                l2,
                                fkind};
    GCTNET_RUN(backward_kernel, p);
  });
  if (want_gx && !gx.is_same(grad_x_out)) grad_x_out.copy_(gx);
  // parameter gradients: sums over the batch in a fixed order (deterministic)
  return {ga.sum(0), gg.sum(0), gb.sum(0)};
}

}  // namespace

TORCH_LIBRARY(gctnet_cpu, m) {
  m.def("forward(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, str gct_mode, bool after_relu)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("scale(Tensor x, Tensor t) -> Tensor");
  m.def("isa() -> str", &gct_isa);  // no tensor arguments: one kernel for every dispatch key
  m.def("parallel_threads() -> int", &parallel_threads);
  m.def("backward(Tensor grad_y, Tensor x, Tensor alpha, Tensor gamma, Tensor t, Tensor s, Tensor e, "
        "Tensor norm_inv, str gct_mode, bool after_relu, Tensor(a!) grad_x) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gctnet_cpu, CPU, m) {
  m.impl("forward", &gct_forward);
  m.impl("scale", &gct_scale);
  m.impl("backward", &gct_backward);
}
