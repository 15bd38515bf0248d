// input_norm: rms in front of the fused HEAT kernels, one pass each way.
//
// Forward, per row x (one position's d channels of one head):
//   s = 1 / sqrt(mean(x^2) + eps),  u = x * s * factor        (factor = 1 / R: tanh's argument)
// written to u, s kept per row. The caller applies tanh to u in place, so with the norm the
// forward makes the same number of passes over q and k as without it (where q / R is one).
// Backward, given g = dL/dy for y = x * s (the fused kernels' gradient with respect to the
// normalised input, tanh's chain rule already folded in):
//   dx = s * g - s^3 * x * (g . x) / d
// Tasks are rows; each reads and writes only its own row.
//
// The row sums are taken in one fixed order (`fixed_order_sum`), not by `omp simd reduction`:
// that splits a sum by the target's vector width (8 floats with AVX2, 16 with AVX-512), so the
// rounding, and with it every trained HEAT score, depended on the machine's instruction set.

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int LANES = 16;
static_assert(LANES == 16, "fixed_order_sum writes its last two halvings out for 16 lanes");

// sum over c < d of term(c): lane l adds c = l, l + LANES, ... in turn (an elementwise loop that
// vectorises at any width with the same result; a last partial group is padded with zeros,
// which add nothing), then the lanes are added pairwise, halving. Every index into `part` is
// fixed, so it stays in registers.
template <typename T, typename F>
inline T fixed_order_sum(int64_t d, F term) {
  T part[LANES] = {};
  int64_t c = 0;
  for (; c + LANES <= d; c += LANES) {
#pragma omp simd
    for (int l = 0; l < LANES; ++l) part[l] += term(c + l);
  }
  if (c < d) {
    T tail[LANES] = {};
    for (int l = 0; c + l < d; ++l) tail[l] = term(c + l);
#pragma omp simd
    for (int l = 0; l < LANES; ++l) part[l] += tail[l];
  }
#pragma omp simd
  for (int l = 0; l < LANES / 2; ++l) part[l] += part[l + LANES / 2];
#pragma omp simd
  for (int l = 0; l < LANES / 4; ++l) part[l] += part[l + LANES / 4];
  return (part[0] + part[2]) + (part[1] + part[3]);
}

template <typename T>
void rms_scale(const T* x, int64_t d, double factor, double eps, int64_t begin, int64_t end,
               T* u, T* scale) {
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x + row * d;
    T* ur = u + row * d;
    const T sum = fixed_order_sum<T>(d, [xr](int64_t c) { return xr[c] * xr[c]; });
    const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(sum) / d + eps));
    const T f = s * static_cast<T>(factor);
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) ur[c] = xr[c] * f;
    scale[row] = s;
  }
}

template <typename T>
void rms_grad(const T* g, const T* x, const T* scale, int64_t d, int64_t begin, int64_t end,
              T* dx) {
  for (int64_t row = begin; row < end; ++row) {
    const T* gr = g + row * d;
    const T* xr = x + row * d;
    T* dr = dx + row * d;
    const T dot = fixed_order_sum<T>(d, [gr, xr](int64_t c) { return gr[c] * xr[c]; });
    const T s = scale[row];
    const T mix = s * s * s * dot / static_cast<T>(d);
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) dr[c] = s * gr[c] - mix * xr[c];
  }
}

// Tasks [begin, end) run over the rows of q, then those of k (one dispatch for both):
// f(false, b, e) for q's rows [b, e), f(true, b, e) for k's.
template <typename F>
void q_then_k(int64_t rows_q, int64_t begin, int64_t end, F f) {
  if (begin < rows_q) f(false, begin, std::min(end, rows_q));
  if (end > rows_q) f(true, std::max(begin, rows_q) - rows_q, end - rows_q);
}

}  // namespace

#define RMS_EXPORT(SUFFIX, T)                                                                  \
  extern "C" void heat_rms_scale_##SUFFIX(const T* xq, const T* xk, int64_t rows_q, int64_t d, \
                                          double factor, double eps, int64_t begin,            \
                                          int64_t end, T* uq, T* uk, T* sq, T* sk) {           \
    q_then_k(rows_q, begin, end, [&](bool key, int64_t b, int64_t e) {                         \
      rms_scale<T>(key ? xk : xq, d, factor, eps, b, e, key ? uk : uq, key ? sk : sq);         \
    });                                                                                        \
  }                                                                                            \
  extern "C" void heat_rms_grad_##SUFFIX(const T* gq, const T* gk, const T* xq, const T* xk,  \
                                         const T* sq, const T* sk, int64_t rows_q, int64_t d,  \
                                         int64_t begin, int64_t end, T* dq, T* dk) {           \
    q_then_k(rows_q, begin, end, [&](bool key, int64_t b, int64_t e) {                         \
      rms_grad<T>(key ? gk : gq, key ? xk : xq, key ? sk : sq, d, b, e, key ? dk : dq);        \
    });                                                                                        \
  }

RMS_EXPORT(f32, float)
RMS_EXPORT(f64, double)
