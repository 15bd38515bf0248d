// Fused CPU kernels for folded HEAT (heat/attention/folded.py has the plain PyTorch version).
//
// Per channel c of a (batch x head) row n, with t = a / R in [-1, 1], V(t) = (1, t, ..., t^(P-1))
// and the P x P kernel matrix K = C C^T:
//   numerator_i   = V(tq_i) K M,   M_p = sum_j valid_j tk_j^p v_j
//   normaliser_i  = V(tq_i) K Z,   Z_p = sum_j valid_j tk_j^p
//   out_i = numerator_i / max(normaliser_i, floor_i)
// Causal: M and Z are prefix sums over the keys a query sees (the n queries are the last n of
// the m keys, so keys before offset = m - n are visible to every query).
//
// Every channel is independent, so work is split into tasks (row n, block of W channels); a task
// keeps its P x W state in registers / L1 and reads q, k, v, writes the output exactly once per
// pass. The inner loops run over the W contiguous channels and vectorise. The caller
// (heat/attention/cpu_kernels.py) runs task ranges on several threads; this file has no
// dependency on PyTorch so it compiles in about a second.
//
// Layouts (all contiguous): tq (N, Lq, D), tk and v (N, Lk, D), valid (B, Lk) or null (all keys
// valid), floor (B, Lq), K (P, P), A and Bz (N, P, D): K M and K Z of the non-causal forward,
// saved for its backward. N = B * H.
//
// Key shift (non-causal only, `shift` not null): per (row n, channel c) the forward finds
// u = (max + min) / 2 of tk over the valid keys (0 if none), writes it to shift (N, D), and
// uses tk - u in place of tk. Its tasks are then rows n (all channel blocks of a row, after one
// contiguous pass over the row's keys for u), not (row, block). Exact hadamard is unchanged by it (softmax over j of a (b_j - R u)
// is softmax of a b_j), while the polynomial kernel is evaluated where it is fitted: |tk - u| <= 1
// with half the keys' range on each side, not all keys at one end. The backward reads u back;
// dtk's chain factor (1 - tk^2) / R is of the unshifted tk (u is a constant, like softmax's max).

#include <algorithm>
#include <cstdint>

namespace {

constexpr int W = 16;     // channels per task: one AVX-512 register of floats
constexpr int PMAX = 24;  // largest polynomial length (rank 20 + 4)

struct Shape {
  int64_t N, H, Lq, Lk, D, P;
  double inv_bound;  // > 0: t = tanh(x / R) and gradients are returned for x, not t
};

// dt/dx for t = tanh(x / R) is (1 - t^2) / R; with inv_bound == 0 the kernels return d/dt.
template <typename T>
inline T chain(T t, const Shape& s) {
  return s.inv_bound > 0 ? (T(1) - t * t) * T(s.inv_bound) : T(1);
}

struct Block {
  int64_t n, b, c0;
  int w;
};

Block block_of(const Shape& s, int64_t task) {
  const int64_t blocks = (s.D + W - 1) / W;
  Block blk;
  blk.n = task / blocks;
  blk.b = blk.n / s.H;
  blk.c0 = (task % blocks) * W;
  blk.w = static_cast<int>(std::min<int64_t>(W, s.D - blk.c0));
  return blk;
}

// y[p][c] = sum_q K[p][q] x[q][c]
template <typename T>
inline void mix(const T* K, int P, const T (*x)[W], T (*y)[W], int w) {
  for (int p = 0; p < P; ++p) {
    T acc[W] = {};
    for (int q = 0; q < P; ++q) {
      const T k = K[p * P + q];
#pragma omp simd
      for (int c = 0; c < w; ++c) acc[c] += k * x[q][c];
    }
    for (int c = 0; c < w; ++c) y[p][c] = acc[c];
  }
}

// pw[p][c] = t[c]^p and, if dpw, dpw[p][c] = p t[c]^(p-1)
template <typename T>
inline void powers(const T* t, int P, T (*pw)[W], T (*dpw)[W], int w) {
  for (int c = 0; c < w; ++c) pw[0][c] = T(1);
  for (int p = 1; p < P; ++p) {
#pragma omp simd
    for (int c = 0; c < w; ++c) pw[p][c] = pw[p - 1][c] * t[c];
  }
  if (dpw) {
    for (int c = 0; c < w; ++c) dpw[0][c] = T(0);
    for (int p = 1; p < P; ++p) {
#pragma omp simd
      for (int c = 0; c < w; ++c) dpw[p][c] = T(p) * pw[p - 1][c];
    }
  }
}

// val[c] = sum_p a[p][c] t^p and der[c] = its t-derivative (Horner); der may be null.
template <typename T>
inline void horner(const T (*a)[W], int P, const T* t, T* val, T* der, int w) {
  for (int c = 0; c < w; ++c) {
    val[c] = a[P - 1][c];
    if (der) der[c] = T(0);
  }
  for (int p = P - 2; p >= 0; --p) {
    if (der) {
#pragma omp simd
      for (int c = 0; c < w; ++c) der[c] = der[c] * t[c] + val[c];
    }
#pragma omp simd
    for (int c = 0; c < w; ++c) val[c] = val[c] * t[c] + a[p][c];
  }
}

// acc[p][c] += weight[c] * t[c]^p for p < P
template <typename T>
inline void add_moments(T (*acc)[W], const T* t, const T* weight, int P, int w) {
  T pw[W];
  for (int c = 0; c < w; ++c) pw[c] = weight[c];
  for (int p = 0; p < P; ++p) {
#pragma omp simd
    for (int c = 0; c < w; ++c) {
      acc[p][c] += pw[c];
      pw[c] *= t[c];
    }
  }
}

// Key j's contribution to both moments: M_p += keep t^p v, Z_p += keep t^p (nothing if padded).
template <typename T>
inline void add_key(T (*M)[W], T (*Z)[W], const T* t, const T* v, T keep, int P, int w) {
  if (keep == T(0)) return;
  T weighted[W], ones[W];
  for (int c = 0; c < w; ++c) {
    weighted[c] = keep * v[c];
    ones[c] = keep;
  }
  add_moments(M, t, weighted, P, w);
  add_moments(Z, t, ones, P, w);
}

template <typename T>
inline T valid_at(const T* valid, const Shape& s, int64_t b, int64_t j) {
  return valid ? valid[b * s.Lk + j] : T(1);
}

// u[c] = (max + min) / 2 of tk over row n's valid keys for every channel c (0 where no key is
// valid), written to u (D). One pass that reads each key's D channels contiguously: per channel
// block it would be a strided pass per block, which costs more than the moments' pass beside it.
template <typename T>
void row_midrange(const Shape& s, int64_t n, const T* tk, const T* valid, T* u) {
  constexpr int CH = 256;
  const int64_t b = n / s.H;
  for (int64_t c0 = 0; c0 < s.D; c0 += CH) {
    const int w = static_cast<int>(std::min<int64_t>(CH, s.D - c0));
    T hi[CH], lo[CH];
    bool any = false;
    for (int c = 0; c < w; ++c) hi[c] = lo[c] = T(0);
    for (int64_t j = 0; j < s.Lk; ++j) {
      if (valid_at(valid, s, b, j) == T(0)) continue;
      const T* t = tk + (n * s.Lk + j) * s.D + c0;
      if (!any) {
        for (int c = 0; c < w; ++c) hi[c] = lo[c] = t[c];
        any = true;
        continue;
      }
#pragma omp simd
      for (int c = 0; c < w; ++c) {
        hi[c] = std::max(hi[c], t[c]);
        lo[c] = std::min(lo[c], t[c]);
      }
    }
    for (int c = 0; c < w; ++c) u[c0 + c] = (hi[c] + lo[c]) * T(0.5);
  }
}

// tk of one key row, shifted by u if there is a shift (else tk itself, no copy).
template <typename T>
inline const T* shifted(const T* t, const T* u, T* buffer, bool shift, int w) {
  if (!shift) return t;
#pragma omp simd
  for (int c = 0; c < w; ++c) buffer[c] = t[c] - u[c];
  return buffer;
}

// ---------------------------------------------------------------- non-causal forward
template <typename T, int WC>
void noncausal_fwd_impl(const Shape& s, int64_t begin, int64_t end, const T* tq, const T* tk,
                        const T* v, const T* valid, const T* floor, const T* K, T* out, T* A,
                        T* Bz, const T* shift) {
  const int P = static_cast<int>(s.P);
  for (int64_t task = begin; task < end; ++task) {
    const auto blk = block_of(s, task);
    const int w = WC > 0 ? WC : blk.w;
    T M[PMAX][W] = {}, Z[PMAX][W] = {}, KM[PMAX][W], KZ[PMAX][W], u[W] = {}, ts[W];
    if (shift)
      for (int c = 0; c < w; ++c) u[c] = shift[blk.n * s.D + blk.c0 + c];
    for (int64_t j = 0; j < s.Lk; ++j) {
      const int64_t row = (blk.n * s.Lk + j) * s.D + blk.c0;
      add_key(M, Z, shifted(tk + row, u, ts, shift != nullptr, w), v + row,
              valid_at(valid, s, blk.b, j), P, w);
    }
    mix(K, P, M, KM, w);
    mix(K, P, Z, KZ, w);
    for (int p = 0; p < P; ++p)
      for (int c = 0; c < w; ++c) {
        A[(blk.n * s.P + p) * s.D + blk.c0 + c] = KM[p][c];
        Bz[(blk.n * s.P + p) * s.D + blk.c0 + c] = KZ[p][c];
      }
    for (int64_t i = 0; i < s.Lq; ++i) {
      const int64_t row = (blk.n * s.Lq + i) * s.D + blk.c0;
      const T fl = floor[blk.b * s.Lq + i];
      T num[W], den[W];
      horner<T>(KM, P, tq + row, num, nullptr, w);
      horner<T>(KZ, P, tq + row, den, nullptr, w);
#pragma omp simd
      for (int c = 0; c < w; ++c) out[row + c] = num[c] / std::max(den[c], fl);
    }
  }
}

// ---------------------------------------------------------------- non-causal backward
template <typename T, int WC>
void noncausal_bwd_impl(const Shape& s, int64_t begin, int64_t end, const T* tq, const T* tk,
                        const T* v, const T* valid, const T* floor, const T* K, const T* A,
                        const T* Bz, const T* shift, const T* grad, T* dtq, T* dtk, T* dv) {
  const int P = static_cast<int>(s.P);
  for (int64_t task = begin; task < end; ++task) {
    const auto blk = block_of(s, task);
    const int w = WC > 0 ? WC : blk.w;
    T KM[PMAX][W], KZ[PMAX][W], dA[PMAX][W] = {}, dB[PMAX][W] = {}, dM[PMAX][W], dZ[PMAX][W];
    T u[W] = {}, ts[W];
    if (shift)
      for (int c = 0; c < w; ++c) u[c] = shift[blk.n * s.D + blk.c0 + c];
    for (int p = 0; p < P; ++p)
      for (int c = 0; c < w; ++c) {
        KM[p][c] = A[(blk.n * s.P + p) * s.D + blk.c0 + c];
        KZ[p][c] = Bz[(blk.n * s.P + p) * s.D + blk.c0 + c];
      }
    // queries: d out / d tq, and the gradients of the mixed moments K M and K Z
    for (int64_t i = 0; i < s.Lq; ++i) {
      const int64_t row = (blk.n * s.Lq + i) * s.D + blk.c0;
      const T fl = floor[blk.b * s.Lq + i];
      T num[W], dnum_dt[W], den[W], dden_dt[W], gnum[W], gden[W];
      horner<T>(KM, P, tq + row, num, dnum_dt, w);
      horner<T>(KZ, P, tq + row, den, dden_dt, w);
#pragma omp simd
      for (int c = 0; c < w; ++c) {
        const bool floored = !(den[c] > fl);
        const T d = floored ? fl : den[c];
        gnum[c] = grad[row + c] / d;
        gden[c] = floored ? T(0) : -gnum[c] * num[c] / d;
        dtq[row + c] = (gnum[c] * dnum_dt[c] + gden[c] * dden_dt[c]) * chain(tq[row + c], s);
      }
      add_moments(dA, tq + row, gnum, P, w);
      add_moments(dB, tq + row, gden, P, w);
    }
    mix(K, P, dA, dM, w);  // K is symmetric: d(K M)/dM^T = K
    mix(K, P, dB, dZ, w);
    // keys: M_p = sum_j valid_j tk_j^p v_j,  Z_p = sum_j valid_j tk_j^p
    for (int64_t j = 0; j < s.Lk; ++j) {
      const T keep = valid_at(valid, s, blk.b, j);
      const int64_t row = (blk.n * s.Lk + j) * s.D + blk.c0;
      T val[W], der[W], zval[W], zder[W];
      const T* t = shifted(tk + row, u, ts, shift != nullptr, w);
      horner<T>(dM, P, t, val, der, w);
      horner<T>(dZ, P, t, zval, zder, w);
#pragma omp simd
      for (int c = 0; c < w; ++c) {
        dv[row + c] = keep * val[c];
        dtk[row + c] = keep * (v[row + c] * der[c] + zder[c]) * chain(tk[row + c], s);
      }
    }
  }
}

// ---------------------------------------------------------------- causal forward
template <typename T, int WC>
void causal_fwd_impl(const Shape& s, int64_t begin, int64_t end, const T* tq, const T* tk,
                     const T* v, const T* valid, const T* floor, const T* K, T* out) {
  const int P = static_cast<int>(s.P);
  const int64_t offset = s.Lk - s.Lq;
  for (int64_t task = begin; task < end; ++task) {
    const auto blk = block_of(s, task);
    const int w = WC > 0 ? WC : blk.w;
    T M[PMAX][W] = {}, Z[PMAX][W] = {}, pw[PMAX][W], kq[PMAX][W];
    for (int64_t j = 0; j < s.Lk; ++j) {
      const int64_t krow = (blk.n * s.Lk + j) * s.D + blk.c0;
      add_key(M, Z, tk + krow, v + krow, valid_at(valid, s, blk.b, j), P, w);
      const int64_t i = j - offset;
      if (i < 0) continue;
      const int64_t row = (blk.n * s.Lq + i) * s.D + blk.c0;
      powers<T>(tq + row, P, pw, nullptr, w);
      mix(K, P, pw, kq, w);  // K V(tq)^T, shared by numerator and normaliser
      T num[W] = {}, den[W] = {};
      for (int p = 0; p < P; ++p) {
#pragma omp simd
        for (int c = 0; c < w; ++c) {
          num[c] += kq[p][c] * M[p][c];
          den[c] += kq[p][c] * Z[p][c];
        }
      }
      const T fl = floor[blk.b * s.Lq + i];
#pragma omp simd
      for (int c = 0; c < w; ++c) out[row + c] = num[c] / std::max(den[c], fl);
    }
  }
}

// ---------------------------------------------------------------- causal backward
// Pass 1 (forward scan) recomputes the prefix moments, gives d/dtq and the per-query gradients
// of numerator and normaliser (saved in gnum_buf, gden_buf). Pass 2 (reverse scan) accumulates
// the suffix sums G = sum_{queries that see key j} g * K V(tq) and gives d/dtk, d/dv.
template <typename T, int WC>
void causal_bwd_impl(const Shape& s, int64_t begin, int64_t end, const T* tq, const T* tk,
                     const T* v, const T* valid, const T* floor, const T* K, const T* grad,
                     T* dtq, T* dtk, T* dv, T* gnum_buf, T* gden_buf) {
  const int P = static_cast<int>(s.P);
  const int64_t offset = s.Lk - s.Lq;
  for (int64_t task = begin; task < end; ++task) {
    const auto blk = block_of(s, task);
    const int w = WC > 0 ? WC : blk.w;
    {
      T M[PMAX][W] = {}, Z[PMAX][W] = {}, pw[PMAX][W], dpw[PMAX][W], kq[PMAX][W], kdq[PMAX][W];
      for (int64_t j = 0; j < s.Lk; ++j) {
        const int64_t krow = (blk.n * s.Lk + j) * s.D + blk.c0;
        add_key(M, Z, tk + krow, v + krow, valid_at(valid, s, blk.b, j), P, w);
        const int64_t i = j - offset;
        if (i < 0) continue;
        const int64_t row = (blk.n * s.Lq + i) * s.D + blk.c0;
        powers<T>(tq + row, P, pw, dpw, w);
        mix(K, P, pw, kq, w);
        mix(K, P, dpw, kdq, w);
        T num[W] = {}, den[W] = {}, dnum[W] = {}, dden[W] = {};
        for (int p = 0; p < P; ++p) {
#pragma omp simd
          for (int c = 0; c < w; ++c) {
            num[c] += kq[p][c] * M[p][c];
            den[c] += kq[p][c] * Z[p][c];
            dnum[c] += kdq[p][c] * M[p][c];
            dden[c] += kdq[p][c] * Z[p][c];
          }
        }
        const T fl = floor[blk.b * s.Lq + i];
#pragma omp simd
        for (int c = 0; c < w; ++c) {
          const bool floored = !(den[c] > fl);
          const T d = floored ? fl : den[c];
          const T gn = grad[row + c] / d;
          const T gd = floored ? T(0) : -gn * num[c] / d;
          gnum_buf[row + c] = gn;
          gden_buf[row + c] = gd;
          dtq[row + c] = (gn * dnum[c] + gd * dden[c]) * chain(tq[row + c], s);
        }
      }
    }
    T G[PMAX][W] = {}, GZ[PMAX][W] = {}, pw[PMAX][W], kq[PMAX][W];
    for (int64_t j = s.Lk - 1; j >= 0; --j) {
      const int64_t i = j - offset;
      if (i >= 0) {
        const int64_t row = (blk.n * s.Lq + i) * s.D + blk.c0;
        powers<T>(tq + row, P, pw, nullptr, w);
        mix(K, P, pw, kq, w);
        for (int p = 0; p < P; ++p) {
#pragma omp simd
          for (int c = 0; c < w; ++c) {
            G[p][c] += gnum_buf[row + c] * kq[p][c];
            GZ[p][c] += gden_buf[row + c] * kq[p][c];
          }
        }
      }
      const T keep = valid_at(valid, s, blk.b, j);
      const int64_t krow = (blk.n * s.Lk + j) * s.D + blk.c0;
      T val[W], der[W], zval[W], zder[W];
      horner<T>(G, P, tk + krow, val, der, w);
      horner<T>(GZ, P, tk + krow, zval, zder, w);
#pragma omp simd
      for (int c = 0; c < w; ++c) {
        dv[krow + c] = keep * val[c];
        dtk[krow + c] = keep * (v[krow + c] * der[c] + zder[c]) * chain(tk[krow + c], s);
      }
    }
  }
}


// Full blocks get a compile-time width, so the channel loops unroll into whole vector registers.
#define HEAT_DISPATCH(NAME)                                                   \
  template <typename T, typename... Args>                                     \
  void NAME(const Shape& s, int64_t begin, int64_t end, Args... args) {       \
    const int64_t blocks = (s.D + W - 1) / W;                                 \
    for (int64_t task = begin; task < end; ++task) {                          \
      if (s.D % W == 0 || task % blocks != blocks - 1)                        \
        NAME##_impl<T, W>(s, task, task + 1, args...);                        \
      else                                                                    \
        NAME##_impl<T, 0>(s, task, task + 1, args...);                        \
    }                                                                         \
  }
HEAT_DISPATCH(noncausal_fwd)
HEAT_DISPATCH(noncausal_bwd)
HEAT_DISPATCH(causal_fwd)
HEAT_DISPATCH(causal_bwd)

}  // namespace

#define HEAT_EXPORT(SUFFIX, T)                                                                   \
  extern "C" void heat_noncausal_fwd_##SUFFIX(                                                   \
      const T* tq, const T* tk, const T* v, const T* valid, const T* floor, const T* K,          \
      int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t P, double inv_bound, int64_t begin,         \
      int64_t end, T* out, T* A, T* Bz, T* shift) {                                              \
    const Shape s{N, H, Lq, Lk, D, P, inv_bound};                                                \
    if (!shift) {                                                                                \
      noncausal_fwd<T>(s, begin, end, tq, tk, v, valid, floor, K, out, A, Bz, nullptr);          \
      return;                                                                                    \
    }                                                                                            \
    const int64_t blocks = (D + W - 1) / W; /* with a shift, tasks are rows n: midrange first */ \
    for (int64_t n = begin; n < end; ++n) {                                                      \
      row_midrange<T>(s, n, tk, valid, shift + n * D);                                           \
      noncausal_fwd<T>(s, n * blocks, (n + 1) * blocks, tq, tk, v, valid, floor, K, out, A, Bz,  \
                       shift);                                                                   \
    }                                                                                            \
  }                                                                                              \
  extern "C" void heat_noncausal_bwd_##SUFFIX(                                                   \
      const T* tq, const T* tk, const T* v, const T* valid, const T* floor, const T* K,          \
      const T* A, const T* Bz, const T* shift, const T* grad, int64_t N, int64_t H, int64_t Lq,  \
      int64_t Lk, int64_t D, int64_t P, double inv_bound, int64_t begin, int64_t end, T* dtq,    \
      T* dtk, T* dv) {                                                                           \
    noncausal_bwd<T>(Shape{N, H, Lq, Lk, D, P, inv_bound}, begin, end, tq, tk, v, valid, floor, K, A, Bz, \
                     shift, grad, dtq, dtk, dv);                                                  \
  }                                                                                              \
  extern "C" void heat_causal_fwd_##SUFFIX(                                                      \
      const T* tq, const T* tk, const T* v, const T* valid, const T* floor, const T* K,          \
      int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t P, double inv_bound, int64_t begin,         \
      int64_t end, T* out) {                                                                     \
    causal_fwd<T>(Shape{N, H, Lq, Lk, D, P, inv_bound}, begin, end, tq, tk, v, valid, floor, K, out);      \
  }                                                                                              \
  extern "C" void heat_causal_bwd_##SUFFIX(                                                      \
      const T* tq, const T* tk, const T* v, const T* valid, const T* floor, const T* K,          \
      const T* grad, int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t P,         \
      double inv_bound, int64_t begin, int64_t end, T* dtq, T* dtk, T* dv, T* gnum, T* gden) {                     \
    causal_bwd<T>(Shape{N, H, Lq, Lk, D, P, inv_bound}, begin, end, tq, tk, v, valid, floor, K, grad, dtq, \
                  dtk, dv, gnum, gden);                                                          \
  }

HEAT_EXPORT(f32, float)
HEAT_EXPORT(f64, double)

extern "C" int heat_kernels_abi_version() { return 6; }  // 4: input_norm.cpp, 5: key shift, 6: row tasks
extern "C" int heat_kernels_block_width() { return W; }
extern "C" int heat_kernels_max_degree() { return PMAX; }
