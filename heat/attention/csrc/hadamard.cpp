// Fused CPU kernels for exact Hadamard (per-channel) attention; heat/attention/hadamard.py has the
// PyTorch version and calls these through heat/attention/cpu_kernels.py (the same library as the
// folded HEAT kernels in folded_heat.cpp).
//
// Per channel c of a (batch x head) row, with bounded queries a and keys b (|a|, |b| <= R, so
// every logit a_ic b_jc lies in [-R^2, R^2]) and shift = R^2:
//   e_ijc = keep_ij exp(a_ic b_jc - shift)          in [exp(-2 R^2), 1]: no overflow, no
//   S_ic  = sum_j e_ijc,  o_ic = sum_j e_ijc v_jc / S_ic     underflow for R <= 6 in float32
// keep_ij: key j is not padding and, causal, j <= i + (Lk - Lq). A query with no key outputs 0.
// Backward, with p = e / S and g = dL/do:
//   dv_jc = sum_i p_ijc g_ic,   l_ijc = p_ijc g_ic (v_jc - o_ic),
//   da_ic = sum_j l_ijc b_jc,   db_jc = sum_i l_ijc a_ic.
// e is recomputed in the backward from a, b and the saved 1 / S; nothing of size Lq x Lk is
// ever stored. The eager version materialises (chunk, Lk, D) logits and makes ~8 passes over them.
//
// Work is split into tasks (row, block of W channels) exactly as in folded_heat.cpp: a task reads
// its channels of a, b, v and writes its channels of every output, so tasks never share memory.
//
// Layouts (all contiguous): a (N, Lq, D), b and v (N, Lk, D), valid (B, Lk) or null (all keys
// valid), out and inv_sum (N, Lq, D), N = B * H.

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int W = 16;  // channels per task: one AVX-512 register of floats

struct HShape {
  int64_t N, H, Lq, Lk, D;
  double shift;  // R^2
};

// exp(x) for x in [-87, 0] (2^k stays a normal float): x = k ln2 + r, |r| <= ln2 / 2, a degree-6
// polynomial for exp(r) (Cephes' expf, within 2 ulp), 2^k added into the exponent bits. k is
// rounded by adding 1.5 * 2^23, whose low mantissa bits then hold k. Branch-free and call-free, so
// the loops over channels vectorise (std::exp and std::floor do not here).
inline float exp_bounded(float x) {
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float k = shifted - 12582912.0f;
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t k_bits = __builtin_bit_cast(uint32_t, shifted) - 0x4B400000u;  // k mod 2^32
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, p) + (k_bits << 23));
}

inline double exp_bounded(double x) { return std::exp(x); }  // float64: the reference precision

struct Task {
  int64_t row, batch, c0;
  int w;
};

Task task_of(const HShape& s, int64_t task) {
  const int64_t blocks = (s.D + W - 1) / W;
  Task t;
  t.row = task / blocks;
  t.batch = t.row / s.H;
  t.c0 = (task % blocks) * W;
  t.w = static_cast<int>(std::min<int64_t>(W, s.D - t.c0));
  return t;
}

// The keys query i sees: [0, last) with last = Lk, or i + (Lk - Lq) + 1 when causal.
inline int64_t keys_seen(const HShape& s, int64_t i, bool causal) {
  return causal ? std::min<int64_t>(s.Lk, std::max<int64_t>(0, i + (s.Lk - s.Lq) + 1)) : s.Lk;
}

// The keys [0, last) of one query's channel block: sum_j e and sum_j e v into sum and acc.
// FULL = W: a fixed trip count of W channels, which the compiler turns into whole vector
// registers; FULL = 0: the block's w < W channels at the end of a row.
template <typename T, int FULL>
inline void fwd_keys(int w, const T* __restrict ai, const T* __restrict br,
                     const T* __restrict vr, const T* keep, int64_t last, int64_t D, T shift,
                     T* __restrict sum, T* __restrict acc) {
  const int width = FULL ? FULL : w;
  for (int64_t j = 0; j < last; ++j) {
    if (keep && keep[j] == T(0)) continue;
    const T* __restrict bj = br + j * D;
    const T* __restrict vj = vr + j * D;
#pragma omp simd
    for (int c = 0; c < width; ++c) {
      const T e = exp_bounded(ai[c] * bj[c] - shift);
      sum[c] += e;
      acc[c] += e * vj[c];
    }
  }
}

// The backward over the keys of one query: dv_j += p g, da_i += l b_j, db_j += l a_i.
template <typename T, int FULL>
inline void bwd_keys(int w, const T* __restrict ai, const T* __restrict oi,
                     const T* __restrict scaled, const T* __restrict br, const T* __restrict vr,
                     const T* keep, int64_t last, int64_t D, T shift, T* __restrict dai,
                     T* __restrict dbr, T* __restrict dvr) {
  const int width = FULL ? FULL : w;
  for (int64_t j = 0; j < last; ++j) {
    if (keep && keep[j] == T(0)) continue;
    const T* __restrict bj = br + j * D;
    const T* __restrict vj = vr + j * D;
    T* __restrict dbj = dbr + j * D;
    T* __restrict dvj = dvr + j * D;
#pragma omp simd
    for (int c = 0; c < width; ++c) {
      const T pg = exp_bounded(ai[c] * bj[c] - shift) * scaled[c];
      const T l = pg * (vj[c] - oi[c]);
      dvj[c] += pg;
      dai[c] += l * bj[c];
      dbj[c] += l * ai[c];
    }
  }
}

template <typename T>
void hadamard_fwd(const HShape& s, bool causal, int64_t begin, int64_t end, const T* a, const T* b,
                  const T* v, const T* valid, T* out, T* inv_sum) {
  const T shift = T(s.shift);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(s, task);
    const int w = t.w;
    const T* ar = a + t.row * s.Lq * s.D + t.c0;
    const T* br = b + t.row * s.Lk * s.D + t.c0;
    const T* vr = v + t.row * s.Lk * s.D + t.c0;
    const T* keep = valid ? valid + t.batch * s.Lk : nullptr;
    for (int64_t i = 0; i < s.Lq; ++i) {
      const T* ai = ar + i * s.D;
      T sum[W] = {}, acc[W] = {};
      const int64_t last = keys_seen(s, i, causal);
      if (w == W) {
        fwd_keys<T, W>(W, ai, br, vr, keep, last, s.D, shift, sum, acc);
      } else {
        fwd_keys<T, 0>(w, ai, br, vr, keep, last, s.D, shift, sum, acc);
      }
      T* oi = out + t.row * s.Lq * s.D + i * s.D + t.c0;
      T* si = inv_sum + t.row * s.Lq * s.D + i * s.D + t.c0;
      for (int c = 0; c < w; ++c) {
        const T inv = sum[c] > T(0) ? T(1) / sum[c] : T(0);  // no key seen: output 0
        oi[c] = acc[c] * inv;
        si[c] = inv;
      }
    }
  }
}

template <typename T>
void hadamard_bwd(const HShape& s, bool causal, int64_t begin, int64_t end, const T* a, const T* b,
                  const T* v, const T* valid, const T* out, const T* inv_sum, const T* grad, T* da,
                  T* db, T* dv) {
  const T shift = T(s.shift);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(s, task);
    const int w = t.w;
    const int64_t q0 = t.row * s.Lq * s.D + t.c0, k0 = t.row * s.Lk * s.D + t.c0;
    const T* keep = valid ? valid + t.batch * s.Lk : nullptr;
    for (int64_t j = 0; j < s.Lk; ++j) {
      std::fill(db + k0 + j * s.D, db + k0 + j * s.D + w, T(0));
      std::fill(dv + k0 + j * s.D, dv + k0 + j * s.D + w, T(0));
    }
    for (int64_t i = 0; i < s.Lq; ++i) {
      const T* ai = a + q0 + i * s.D;
      const T* oi = out + q0 + i * s.D;
      T scaled[W], dai[W] = {};  // scaled = g / S, so p g = e scaled
      for (int c = 0; c < w; ++c) scaled[c] = grad[q0 + i * s.D + c] * inv_sum[q0 + i * s.D + c];
      const int64_t last = keys_seen(s, i, causal);
      if (w == W) {
        bwd_keys<T, W>(W, ai, oi, scaled, b + k0, v + k0, keep, last, s.D, shift, dai, db + k0,
                       dv + k0);
      } else {
        bwd_keys<T, 0>(w, ai, oi, scaled, b + k0, v + k0, keep, last, s.D, shift, dai, db + k0,
                       dv + k0);
      }
      std::copy(dai, dai + w, da + q0 + i * s.D);
    }
  }
}

}  // namespace

#define HADAMARD_EXPORT(SUFFIX, T)                                                               \
  extern "C" void hadamard_fwd_##SUFFIX(const T* a, const T* b, const T* v, const T* valid,      \
                                        int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, \
                                        double shift, int64_t causal, int64_t begin,             \
                                        int64_t end, T* out, T* inv_sum) {                       \
    hadamard_fwd<T>(HShape{N, H, Lq, Lk, D, shift}, causal != 0, begin, end, a, b, v, valid, out, \
                    inv_sum);                                                                    \
  }                                                                                              \
  extern "C" void hadamard_bwd_##SUFFIX(                                                         \
      const T* a, const T* b, const T* v, const T* valid, const T* out, const T* inv_sum,        \
      const T* grad, int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, double shift,      \
      int64_t causal, int64_t begin, int64_t end, T* da, T* db, T* dv) {                         \
    hadamard_bwd<T>(HShape{N, H, Lq, Lk, D, shift}, causal != 0, begin, end, a, b, v, valid, out, \
                    inv_sum, grad, da, db, dv);                                                  \
  }

HADAMARD_EXPORT(f32, float)
HADAMARD_EXPORT(f64, double)

extern "C" int hadamard_kernels_block_width() { return W; }
