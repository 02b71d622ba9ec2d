// GCT CPU kernel loops, included by gct_cpu.cpp once per instruction set (no include guard on purpose).
//
// gct_cpu.cpp defines GCTNET_ISA (the namespace: isa_baseline, isa_avx2) and, for the AVX2+FMA copy,
// wraps the include in `#pragma GCC target("avx2,fma")`, so every function here (lambdas included) is
// compiled once for the baseline x86-64 (SSE2) and once for AVX2+FMA; the library picks one at load time
// (see gct_cpu.cpp: use_avx2).  Everything this file needs is included by gct_cpu.cpp before it: it
// must include nothing itself, or those headers' inline functions would be compiled for AVX2 too.
//
// Shared types from gct_cpu.cpp: Layout, Geometry, per_sample, ForwardArgs, BackwardArgs.

namespace GCTNET_ISA {

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

// t[c] = tanh(z[c]) for one sample's channels: the vector tanhf of glibc's libmvec where the build
// enables it (gct_cpu.cpp: GCTNET_USE_LIBMVEC; float only), else the scalar std::tanh.
inline void tanh_channels(const float* z, float* t, int64_t C) {
#if GCTNET_USE_LIBMVEC
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) t[c] = tanhf(z[c]);
#else
  for (int64_t c = 0; c < C; ++c) t[c] = std::tanh(z[c]);
#endif
}

inline void tanh_channels(const double* z, double* t, int64_t C) {
  for (int64_t c = 0; c < C; ++c) t[c] = std::tanh(z[c]);
}

// The per-sample gate math (functional._stats_from_sums) for one sample: S -> t, s, e, norm_inv.
template <typename A>
void sample_stats(const A* S, const A* a, const A* g, const A* b, int64_t C, A eps, bool l2, A* t, A* s, A* e,
                  A* norm_inv) {
  A m = 0;
  if (l2) {
#pragma omp simd reduction(+ : m)
    for (int64_t c = 0; c < C; ++c) {
      e[c] = std::sqrt(S[c] + eps);
      s[c] = a[c] * e[c];
      m += s[c] * s[c];
    }
  } else {
#pragma omp simd reduction(+ : m)
    for (int64_t c = 0; c < C; ++c) {
      e[c] = S[c];
      s[c] = a[c] * e[c];
      m += std::abs(s[c]);
    }
  }
  m /= static_cast<A>(C);
  const A ni = l2 ? A(1) / std::sqrt(m + eps) : A(1) / (m + eps);
  *norm_inv = ni;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) t[c] = g[c] * s[c] * ni + b[c];  // z, then tanh in place
  tanh_channels(t, t, C);
}

// The per-sample backward math (functional._grads_from_dot) for one sample: p -> coef and the
// sample's contributions to the parameter gradients.
template <typename A>
void sample_grads(const A* p, const A* a, const A* g, const A* t, const A* s, const A* e, A ni, int64_t C,
                  bool l2, A* coef, A* ga, A* gg, A* gb) {
  A gsum = 0;
#pragma omp simd reduction(+ : gsum)
  for (int64_t c = 0; c < C; ++c) {
    const A dz = p[c] * (A(1) - t[c] * t[c]);
    gb[c] = dz;
    gsum += dz * g[c] * s[c];
  }
  const A inv_c = A(1) / static_cast<A>(C);
  if (l2) {
    const A k = (ni * ni * ni) * gsum * inv_c;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A dz = gb[c];
      const A ds = dz * g[c] * ni - s[c] * k;
      coef[c] = ds * a[c] / e[c];
      ga[c] = ds * e[c];
      gg[c] = dz * s[c] * ni;
    }
  } else {
    const A k = (ni * ni) * gsum * inv_c;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A dz = gb[c];
      const A sgn = static_cast<A>((s[c] > A(0)) - (s[c] < A(0)));
      const A ds = dz * g[c] * ni - sgn * k;
      coef[c] = ds * a[c];
      ga[c] = ds * e[c];
      gg[c] = dz * s[c] * ni;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// drivers: the parallel loops of the three ops
// ---------------------------------------------------------------------------------------------------
template <typename T, typename A>
void forward_kernel(const ForwardArgs<T, A>& p) {
  const Geometry& g = p.geo;
  const int64_t C = g.C, L = g.L, CL = g.C * g.L;
  auto stats = [&](int64_t n) {
    sample_stats<A>(p.S + n * C, p.a, p.g, p.b, C, p.eps, p.l2, p.t + n * C, p.s + n * C, p.e + n * C, p.ni + n);
  };
  if (g.N == 0 || C == 0) return;
  if (per_sample(g)) {
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> gate(C);
      for (int64_t n = begin; n < end; ++n) {
        const T* xn = p.x + n * CL;
        T* yn = p.y + n * CL;
        if (g.layout == Layout::Rows) {
          for (int64_t c = 0; c < C; ++c) reduce_row<T, A>(xn + c * L, L, p.kind, p.S + n * C + c);
        } else {
          reduce_sample_cl<T, A>(xn, C, L, p.kind, p.S + n * C);
        }
        stats(n);
        for (int64_t c = 0; c < C; ++c) gate[c] = gate_of<T, A>(p.t[n * C + c]);
        if (g.layout == Layout::Rows) {
          for (int64_t c = 0; c < C; ++c) scale_row<T, A>(xn + c * L, yn + c * L, L, gate[c]);
        } else {
          scale_sample_cl<T, A>(xn, yn, C, L, gate.data());
        }
      }
    });
  } else {  // few samples, contiguous rows: phases parallel over the N*C rows
    const int64_t rows = g.N * C;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) reduce_row<T, A>(p.x + r * L, L, p.kind, p.S + r);
    });
    for (int64_t n = 0; n < g.N; ++n) stats(n);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) scale_row<T, A>(p.x + r * L, p.y + r * L, L, gate_of<T, A>(p.t[r]));
    });
  }
}

template <typename T, typename A>
void scale_kernel(const T* x, T* y, const A* t, const Geometry& g) {
  const int64_t C = g.C, L = g.L, CL = g.C * g.L;
  if (g.layout == Layout::Rows) {
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L));
    at::parallel_for(0, g.N * C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) scale_row<T, A>(x + r * L, y + r * L, L, gate_of<T, A>(t[r]));
    });
  } else {
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> gate(C);
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t c = 0; c < C; ++c) gate[c] = gate_of<T, A>(t[n * C + c]);
        scale_sample_cl<T, A>(x + n * CL, y + n * CL, C, L, gate.data());
      }
    });
  }
}

template <typename T, typename A>
void backward_kernel(const BackwardArgs<T, A>& p) {
  const Geometry& g = p.geo;
  const int64_t C = g.C, L = g.L, CL = g.C * g.L;
  if (g.N == 0 || C == 0) return;
  auto math = [&](int64_t n) {
    const int64_t o = n * C;
    sample_grads<A>(p.P + o, p.a, p.g, p.t + o, p.s + o, p.e + o, p.ni[n], C, p.l2, p.coef + o, p.ga + o, p.gg + o,
                    p.gb + o);
  };
  auto round = [](A v) { return static_cast<A>(static_cast<T>(v)); };
  if (L == 0) {
    std::fill(p.P, p.P + g.N * C, A(0));
    for (int64_t n = 0; n < g.N; ++n) math(n);
    return;
  }
  if (per_sample(g)) {
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> gate(C), cf(C);
      for (int64_t n = begin; n < end; ++n) {
        const T* xn = p.x + n * CL;
        const T* gn = p.gy + n * CL;
        if (g.layout == Layout::Rows) {
          for (int64_t c = 0; c < C; ++c) dot_row<T, A>(gn + c * L, xn + c * L, L, p.P + n * C + c);
        } else {
          dot_sample_cl<T, A>(gn, xn, C, L, p.P + n * C);
        }
        math(n);
        if (p.gx == nullptr) continue;
        for (int64_t c = 0; c < C; ++c) {
          gate[c] = gate_of<T, A>(p.t[n * C + c]);
          cf[c] = round(p.coef[n * C + c]);
        }
        T* gxn = p.gx + n * CL;
        if (g.layout == Layout::Rows) {
          for (int64_t c = 0; c < C; ++c)
            grad_row<T, A>(gn + c * L, xn + c * L, gxn + c * L, L, gate[c], cf[c], p.fkind);
        } else {
          grad_sample_cl<T, A>(gn, xn, gxn, C, L, gate.data(), cf.data(), p.fkind);
        }
      }
    });
  } else {
    const int64_t rows = g.N * C;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) dot_row<T, A>(p.gy + r * L, p.x + r * L, L, p.P + r);
    });
    for (int64_t n = 0; n < g.N; ++n) math(n);
    if (p.gx != nullptr) {
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
          grad_row<T, A>(p.gy + r * L, p.x + r * L, p.gx + r * L, L, gate_of<T, A>(p.t[r]), round(p.coef[r]), p.fkind);
      });
    }
  }
}

}  // namespace GCTNET_ISA
