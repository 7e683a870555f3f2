// CPU decode kernels for stage-bridge (engine/kernels.py builds and loads this file).
//
// Why our own: a decode step multiplies 1-2 rows by every weight and attends one query over the
// cache, so on a CPU it is bound by reading bytes. PyTorch's int4 kernel reads int4 weights at
// 8.5-10 GB/s on a 2-core AMD EPYC (its fp32/bf16 arithmetic is the bottleneck, not memory), and
// its attention for one query is a dozen ops per layer. Here:
// - sb_q4_linear: group-wise int4 weights times activations rounded to int8 per group (the
//   arithmetic of llama.cpp's Q4 x Q8 products), with AVX-512 VNNI's 64 multiply-adds per
//   instruction where the CPU has them, so the product runs at memory speed. An optional
//   LayerNorm before (its output feeds only this product) and residual after are fused in.
// - sb_attend: one query per row and head over a cache: the new key/value written, scores,
//   softmax and weighted sum in one pass, from each row's first readable key.
// Plain C ABI (ctypes), no PyTorch headers: builds in about a second. OpenMP regions run on the
// OpenMP runtime PyTorch already loaded (same soname), so there is one thread pool per thread.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define SB_VNNI 1
#else
#define SB_VNNI 0
#endif

namespace {

constexpr int TILE = 16;  // output columns per packed tile (one 512-bit register of int32 sums)

using half = _Float16;  // IEEE binary16 (GCC >= 12, Clang >= 15 on x86-64; also AArch64)

// Per row: optional LayerNorm, then per group of G: int8 codes q = round(h / a) with a = max|h| / 127,
// and the sums the product needs: c = 8 * sum(q) (the weights' code offset) and s = sum(h) (their zero).
void prepare_rows(const float* x, int64_t M, int64_t K, int64_t G, const float* ln_w, const float* ln_b, float eps,
                  int8_t* xq, float* a, float* c, float* s) {
  const int64_t NG = K / G;
  std::vector<float> h(K);
  for (int64_t m = 0; m < M; ++m) {
    const float* r = x + m * K;
    if (ln_w != nullptr) {
      double mean = 0.0, var = 0.0;
      for (int64_t k = 0; k < K; ++k) mean += r[k];
      mean /= (double)K;
      for (int64_t k = 0; k < K; ++k) var += ((double)r[k] - mean) * ((double)r[k] - mean);
      const float rstd = (float)(1.0 / std::sqrt(var / (double)K + (double)eps)), mu = (float)mean;
      for (int64_t k = 0; k < K; ++k) h[k] = (r[k] - mu) * rstd * ln_w[k] + ln_b[k];
    } else {
      std::memcpy(h.data(), r, K * sizeof(float));
    }
    for (int64_t g = 0; g < NG; ++g) {
      const float* hg = h.data() + g * G;
      float amax = 0.f, sum = 0.f;
      for (int64_t k = 0; k < G; ++k) { amax = std::max(amax, std::fabs(hg[k])); sum += hg[k]; }
      const float scale = amax > 0.f ? amax / 127.f : 1.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t qsum = 0;
      int8_t* qg = xq + m * K + g * G;
      for (int64_t k = 0; k < G; ++k) {
        const int32_t q = (int32_t)std::nearbyint(hg[k] * inv);
        qg[k] = (int8_t)q;
        qsum += q;
      }
      a[m * NG + g] = scale;
      c[m * NG + g] = 8.f * (float)qsum;
      s[m * NG + g] = sum;
    }
  }
}

#if SB_VNNI
// MB rows times one tile of 16 columns; out: MB x 16 floats.
template <int MB>
void q4_tile(const uint8_t* w, const half* sc, const half* zr, int64_t NG, int64_t G, const int8_t* xq,
             int64_t K, const float* a, const float* c, const float* s, float* out) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const int64_t P = G / 8;
  __m512 accf[MB];
  for (int i = 0; i < MB; ++i) accf[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < NG; ++g) {
    __m512i acc[MB];
    for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_si512();
    const uint8_t* wg = w + g * P * 64;
    const int8_t* xg = xq + g * G;
    for (int64_t p = 0; p < P; ++p) {
      const __m512i v = _mm512_loadu_si512((const void*)(wg + p * 64));
      const __m512i lo = _mm512_and_si512(v, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      for (int i = 0; i < MB; ++i) {
        int32_t x0, x1;
        std::memcpy(&x0, xg + i * K + 8 * p, 4);
        std::memcpy(&x1, xg + i * K + 8 * p + 4, 4);
        acc[i] = _mm512_dpbusd_epi32(acc[i], lo, _mm512_set1_epi32(x0));
        acc[i] = _mm512_dpbusd_epi32(acc[i], hi, _mm512_set1_epi32(x1));
      }
    }
    const __m512 S = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(sc + g * TILE)));
    const __m512 Z = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(zr + g * TILE)));
    for (int i = 0; i < MB; ++i) {
      const __m512 d = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[i]), _mm512_set1_ps(c[i * NG + g]));
      accf[i] = _mm512_fmadd_ps(d, _mm512_mul_ps(S, _mm512_set1_ps(a[i * NG + g])), accf[i]);
      accf[i] = _mm512_fmadd_ps(Z, _mm512_set1_ps(s[i * NG + g]), accf[i]);
    }
  }
  for (int i = 0; i < MB; ++i) _mm512_storeu_ps(out + i * TILE, accf[i]);
}
#else
// Portable: the same arithmetic (integer dot per group, then the same float scaling).
void q4_tile_portable(const uint8_t* w, const half* sc, const half* zr, int64_t NG, int64_t G,
                      const int8_t* xq, int64_t K, const float* a, const float* c, const float* s, int mb,
                      float* out) {
  const int64_t P = G / 8;
  for (int i = 0; i < mb; ++i) {
    float accf[TILE] = {0.f};
    for (int64_t g = 0; g < NG; ++g) {
      int32_t acc[TILE] = {0};
      const uint8_t* wg = w + g * P * 64;
      const int8_t* xg = xq + i * K + g * G;
      for (int64_t p = 0; p < P; ++p) {
        for (int j = 0; j < TILE; ++j) {
          for (int b = 0; b < 4; ++b) {
            const uint8_t byte = wg[p * 64 + j * 4 + b];
            acc[j] += (int32_t)(byte & 0x0f) * xg[8 * p + b] + (int32_t)(byte >> 4) * xg[8 * p + 4 + b];
          }
        }
      }
      for (int j = 0; j < TILE; ++j) {
        const float S = (float)sc[g * TILE + j], Z = (float)zr[g * TILE + j];
        accf[j] += ((float)acc[j] - c[i * NG + g]) * (S * a[i * NG + g]) + Z * s[i * NG + g];
      }
    }
    std::memcpy(out + i * TILE, accf, sizeof(accf));
  }
}
#endif

#if SB_VNNI
// int8 weights: MB rows times one tile of 16 columns. Activations as unsigned bytes xq + 128 (the
// instruction multiplies unsigned by signed bytes); wsum = 128 * the group's weight sum undoes it.
template <int MB, int NT>
void q8_tile(const int8_t* w, int64_t tile_bytes, const int32_t* wsum, const float* scale, int64_t NG, int64_t G,
             const uint8_t* xu, int64_t K, const float* a, float* out) {
  // NT neighbouring tiles at once: each activation broadcast feeds NT multiply-adds
  const int64_t P = G / 4;
  __m512 accf[MB][NT];
  for (int i = 0; i < MB; ++i)
    for (int u = 0; u < NT; ++u) accf[i][u] = _mm512_setzero_ps();
  for (int64_t g = 0; g < NG; ++g) {
    __m512i acc[MB][NT];
    for (int i = 0; i < MB; ++i)
      for (int u = 0; u < NT; ++u) acc[i][u] = _mm512_setzero_si512();
    const int8_t* wg = w + g * P * 64;
    const uint8_t* xg = xu + g * G;
    for (int64_t p = 0; p < P; ++p) {
      __m512i v[NT];
      for (int u = 0; u < NT; ++u) v[u] = _mm512_loadu_si512((const void*)(wg + u * tile_bytes + p * 64));
      for (int i = 0; i < MB; ++i) {
        int32_t x4;
        std::memcpy(&x4, xg + i * K + 4 * p, 4);
        const __m512i xb = _mm512_set1_epi32(x4);
        for (int u = 0; u < NT; ++u) acc[i][u] = _mm512_dpbusd_epi32(acc[i][u], xb, v[u]);
      }
    }
    for (int u = 0; u < NT; ++u) {
      const __m512i W = _mm512_loadu_si512((const void*)(wsum + (u * NG + g) * TILE));
      for (int i = 0; i < MB; ++i)
        accf[i][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][u], W)), _mm512_set1_ps(a[i * NG + g]),
                                     accf[i][u]);
    }
  }
  for (int u = 0; u < NT; ++u) {
    const __m512 S = _mm512_loadu_ps(scale + u * TILE);
    for (int i = 0; i < MB; ++i) _mm512_storeu_ps(out + (u * 4 + i) * TILE, _mm512_mul_ps(accf[i][u], S));
  }
}
#else
// Portable: the same arithmetic.
void q8_tile_portable(const int8_t* w, const int32_t* wsum, const float* scale, int64_t NG, int64_t G,
                      const uint8_t* xu, int64_t K, const float* a, int mb, float* out) {
  const int64_t P = G / 4;
  for (int i = 0; i < mb; ++i) {
    float accf[TILE] = {0.f};
    for (int64_t g = 0; g < NG; ++g) {
      int32_t acc[TILE] = {0};
      const int8_t* wg = w + g * P * 64;
      const uint8_t* xg = xu + i * K + g * G;
      for (int64_t p = 0; p < P; ++p)
        for (int j = 0; j < TILE; ++j)
          for (int b = 0; b < 4; ++b) acc[j] += (int32_t)xg[4 * p + b] * wg[p * 64 + j * 4 + b];
      for (int j = 0; j < TILE; ++j) accf[j] += (float)(acc[j] - wsum[g * TILE + j]) * a[i * NG + g];
    }
    for (int j = 0; j < TILE; ++j) out[i * TILE + j] = accf[j] * scale[j];
  }
}
#endif

#if SB_VNNI
// exp(x) for x <= 0 (scores minus their maximum); exactly 0 below -88 (masked keys: -inf).
inline __m512 exp_nonpositive(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 i = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, i), _mm512_set1_ps(0.69314718055994531f));  // in [0, ln 2)
  // e^f, Taylor to degree 7 (relative error < 2e-7 on [0, ln 2))
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, i));
}
#endif

// GELU (erf form, as torch.nn.functional.gelu) on 16 floats in place. The AVX-512 erf is
// Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
inline void gelu16(float* v) {
#if SB_VNNI
  const __m512 x = _mm512_loadu_ps(v);
  const __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z)));
  const __m512 erf_abs = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.f));  // erf(|x| / sqrt 2)
  // 0.5 x (1 + erf(x / sqrt 2)) = 0.5 (x + |x| erf(|x| / sqrt 2))
  const __m512 y = _mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_fmadd_ps(_mm512_abs_ps(x), erf_abs, x));
  _mm512_storeu_ps(v, y);
#else
  for (int j = 0; j < 16; ++j) v[j] = 0.5f * v[j] * (1.f + std::erf(v[j] * 0.70710678118654752f));
#endif
}

// A tile's outputs (mb rows x 16 columns) into y, through the GELU or plus the residual.
inline void store_tile(float* out, int mb, int gelu, const float* residual, float* y, int64_t m0, int64_t N, int64_t t) {
  for (int i = 0; i < mb; ++i) {
    if (gelu) gelu16(out + i * TILE);
    float* yr = y + (m0 + i) * N + t * TILE;
    const float* rr = residual != nullptr ? residual + (m0 + i) * N + t * TILE : nullptr;
    for (int j = 0; j < TILE; ++j) yr[j] = out[i * TILE + j] + (rr != nullptr ? rr[j] : 0.f);
  }
}

// Row helpers of the attention: dot product, out += p * row, and a row stored, for a float or
// half cache (half rows converted 16 at a time with AVX-512; _Float16 arithmetic elsewhere).
inline float dot_row(const float* q, const float* k, int64_t D) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
  return dot;
}
inline void axpy_row(float p, const float* v, float* out, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) out[d] += p * v[d];
}
inline void store_row(float* dst, const float* src, int64_t D) { std::memcpy(dst, src, D * sizeof(float)); }

inline float dot_row(const float* q, const half* k, int64_t D) {
  int64_t d = 0;
  float dot = 0.f;
#if SB_VNNI
  __m512 acc = _mm512_setzero_ps();
  for (; d + 16 <= D; d += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(k + d))), acc);
  dot = _mm512_reduce_add_ps(acc);
#endif
  for (; d < D; ++d) dot += q[d] * (float)k[d];
  return dot;
}
inline void axpy_row(float p, const half* v, float* out, int64_t D) {
  int64_t d = 0;
#if SB_VNNI
  const __m512 vp = _mm512_set1_ps(p);
  for (; d + 16 <= D; d += 16)
    _mm512_storeu_ps(out + d, _mm512_fmadd_ps(vp, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(v + d))),
                                              _mm512_loadu_ps(out + d)));
#endif
  for (; d < D; ++d) out[d] += p * (float)v[d];
}
inline void store_row(half* dst, const float* src, int64_t D) {
  int64_t d = 0;
#if SB_VNNI
  for (; d + 16 <= D; d += 16)
    _mm256_storeu_si256((__m256i*)(dst + d), _mm512_cvtps_ph(_mm512_loadu_ps(src + d), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; d < D; ++d) dst[d] = (half)src[d];
}

// One (row, head): write the new key/value at `pos` (if given), attend keys [first, n).
// T: the cache's element type (float, or half: half the bytes to read per key).
template <typename T>
void attend_one(const float* q, T* k, T* v, const float* knew, const float* vnew, int64_t pos, int64_t first,
                int64_t n, const float* bias, float* out, int64_t D, float* scores) {
  if (knew != nullptr) {
    store_row(k + pos * D, knew, D);
    store_row(v + pos * D, vnew, D);
  }
  const float scale = 1.f / std::sqrt((float)D);
  float mx = -INFINITY;
  for (int64_t j = first; j < n; ++j) {
    const float sc = dot_row(q, k + j * D, D) * scale + (bias != nullptr ? bias[j] : 0.f);
    scores[j - first] = sc;
    mx = std::max(mx, sc);
  }
  const int64_t cnt = n - first;
  float total = 0.f;
  int64_t j = 0;
#if SB_VNNI
  __m512 tot = _mm512_setzero_ps();
  const __m512 vmx = _mm512_set1_ps(mx);
  for (; j + 16 <= cnt; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + j), vmx));
    _mm512_storeu_ps(scores + j, e);
    tot = _mm512_add_ps(tot, e);
  }
  total = _mm512_reduce_add_ps(tot);
#endif
  for (; j < cnt; ++j) {
    const float e = std::exp(scores[j] - mx);
    scores[j] = e;
    total += e;
  }
  const float inv = 1.f / total;
  std::fill(out, out + D, 0.f);
  for (int64_t jj = 0; jj < cnt; ++jj) {
    axpy_row(scores[jj] * inv, v + (first + jj) * D, out, D);
  }
}

template <typename T>
void attend_all(const float* q, int64_t q_stride, T* k, T* v, int64_t kv_b, int64_t kv_h, const float* knew,
                const float* vnew, int64_t pos, const int32_t* first, int64_t n, const float* bias,
                int64_t bias_stride, float* out, int64_t B, int64_t H, int64_t D, int threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> scores(n);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H, off = b * q_stride + h * D;
      attend_one<T>(q + off, k + b * kv_b + h * kv_h, v + b * kv_b + h * kv_h,
                    knew != nullptr ? knew + off : nullptr, vnew != nullptr ? vnew + off : nullptr, pos,
                    first != nullptr ? first[b] : 0, n, bias != nullptr ? bias + b * bias_stride : nullptr,
                    out + b * H * D + h * D, D, scores.data());
    }
  }
}

}  // namespace

extern "C" {

// 2: AVX-512 VNNI products; 1: portable C++.
int sb_kind() { return SB_VNNI ? 2 : 1; }

// codes (N, K) uint8 in [0, 15] -> packed tiles: for each tile of 16 output columns, group of G inputs
// and pair of input quads p, 64 bytes where byte 4j+b holds column j's input 8p+b (low nibble) and
// 8p+4+b (high nibble). scales/zeros (N, K/G) fp16 bits -> (N/16, K/G, 16).
void sb_q4_pack(const uint8_t* codes, const half* scales, const half* zeros, int64_t N, int64_t K, int64_t G,
                uint8_t* packed, half* tscales, half* tzeros) {
  const int64_t NG = K / G, P = G / 8;
  for (int64_t t = 0; t < N / TILE; ++t)
    for (int64_t g = 0; g < NG; ++g) {
      for (int64_t p = 0; p < P; ++p)
        for (int j = 0; j < TILE; ++j)
          for (int b = 0; b < 4; ++b) {
            const int64_t n = t * TILE + j, k = g * G + 8 * p + b;
            packed[((t * NG + g) * P + p) * 64 + j * 4 + b] =
                (uint8_t)((codes[n * K + k] & 0x0f) | ((codes[n * K + k + 4] & 0x0f) << 4));
          }
      for (int j = 0; j < TILE; ++j) {
        tscales[(t * NG + g) * TILE + j] = scales[(t * TILE + j) * NG + g];
        tzeros[(t * NG + g) * TILE + j] = zeros[(t * TILE + j) * NG + g];
      }
    }
}

// y (M, N) = GELU?(LayerNorm?(x) (M, K) @ W.T) [+ residual (M, N)], W packed by sb_q4_pack.
// N % 16 == 0, K % G == 0, G % 8 == 0 (kernels.py checks). ln_w/ln_b/residual may be null.
void sb_q4_linear(const float* x, int64_t M, int64_t K, const uint8_t* packed, const half* tscales,
                  const half* tzeros, int64_t N, int64_t G, const float* ln_w, const float* ln_b, float eps,
                  const float* residual, int gelu, float* y, int threads) {
  const int64_t NG = K / G, T = N / TILE;
  std::vector<int8_t> xq(M * K);
  std::vector<float> a(M * NG), c(M * NG), s(M * NG);
  prepare_rows(x, M, K, G, ln_w, ln_b, eps, xq.data(), a.data(), c.data(), s.data());
  const int64_t tile_bytes = NG * (G / 8) * 64;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float out[4 * TILE];
    const uint8_t* w = packed + t * tile_bytes;
    const half* sc = tscales + t * NG * TILE;
    const half* zr = tzeros + t * NG * TILE;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int mb = (int)std::min<int64_t>(4, M - m0);
      const int8_t* xr = xq.data() + m0 * K;
      const float *ar = a.data() + m0 * NG, *cr = c.data() + m0 * NG, *sr = s.data() + m0 * NG;
#if SB_VNNI
      switch (mb) {
        case 1: q4_tile<1>(w, sc, zr, NG, G, xr, K, ar, cr, sr, out); break;
        case 2: q4_tile<2>(w, sc, zr, NG, G, xr, K, ar, cr, sr, out); break;
        case 3: q4_tile<3>(w, sc, zr, NG, G, xr, K, ar, cr, sr, out); break;
        default: q4_tile<4>(w, sc, zr, NG, G, xr, K, ar, cr, sr, out); break;
      }
#else
      q4_tile_portable(w, sc, zr, NG, G, xr, K, ar, cr, sr, mb, out);
#endif
      store_tile(out, mb, gelu, residual, y, m0, N, t);
    }
  }
}

// int8 weights (N, K) with one scale per output column -> tiles: for each tile of 16 columns,
// group of G inputs and input quad p, 64 bytes where bytes 4j..4j+3 are column j's inputs
// 4p..4p+3; wsum (N/16, K/G, 16) = 128 * each column's weight sum over the group.
void sb_q8_pack(const int8_t* q, int64_t N, int64_t K, int64_t G, int8_t* packed, int32_t* wsum) {
  const int64_t NG = K / G, P = G / 4;
  for (int64_t t = 0; t < N / TILE; ++t)
    for (int64_t g = 0; g < NG; ++g)
      for (int j = 0; j < TILE; ++j) {
        const int8_t* row = q + (t * TILE + j) * K + g * G;
        int32_t sum = 0;
        for (int64_t p = 0; p < P; ++p)
          for (int b = 0; b < 4; ++b) {
            packed[((t * NG + g) * P + p) * 64 + j * 4 + b] = row[4 * p + b];
            sum += row[4 * p + b];
          }
        wsum[(t * NG + g) * TILE + j] = 128 * sum;
      }
}

// y (M, N) = GELU?(LayerNorm?(x) @ W.T) [+ residual], W packed by sb_q8_pack, scale (N,) fp32.
// Activations rounded to int8 per group of G, as sb_q4_linear. N % 16 == 0, K % G == 0, G % 4 == 0.
void sb_q8_linear(const float* x, int64_t M, int64_t K, const int8_t* packed, const int32_t* wsum, const float* scale,
                  int64_t N, int64_t G, const float* ln_w, const float* ln_b, float eps, const float* residual,
                  int gelu, float* y, int threads) {
  const int64_t NG = K / G, T = N / TILE;
  std::vector<int8_t> xq(M * K);
  std::vector<float> a(M * NG), c(M * NG), s(M * NG);
  prepare_rows(x, M, K, G, ln_w, ln_b, eps, xq.data(), a.data(), c.data(), s.data());
  std::vector<uint8_t> xu(M * K);
  for (int64_t i = 0; i < M * K; ++i) xu[i] = (uint8_t)(xq[i] ^ 0x80);  // = xq + 128
  const int64_t tile_bytes = NG * G * TILE;
#if SB_VNNI
  constexpr int NT = 2;
#else
  constexpr int NT = 1;
#endif
  const int64_t units = (T + NT - 1) / NT;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t unit = 0; unit < units; ++unit) {
    const int64_t t = unit * NT;
    const int nt = (int)std::min<int64_t>(NT, T - t);
    float out[NT * 4 * TILE];
    const int8_t* w = packed + t * tile_bytes;
    const int32_t* ws = wsum + t * NG * TILE;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int mb = (int)std::min<int64_t>(4, M - m0);
      const uint8_t* xr = xu.data() + m0 * K;
      const float* ar = a.data() + m0 * NG;
      const float* sc = scale + t * TILE;
#if SB_VNNI
      if (nt == 2) {
        switch (mb) {
          case 1: q8_tile<1, 2>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
          case 2: q8_tile<2, 2>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
          case 3: q8_tile<3, 2>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
          default: q8_tile<4, 2>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
        }
      } else {
        switch (mb) {
          case 1: q8_tile<1, 1>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
          case 2: q8_tile<2, 1>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
          case 3: q8_tile<3, 1>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
          default: q8_tile<4, 1>(w, tile_bytes, ws, sc, NG, G, xr, K, ar, out); break;
        }
      }
#else
      q8_tile_portable(w, ws, sc, NG, G, xr, K, ar, mb, out);
#endif
      for (int u = 0; u < nt; ++u) store_tile(out + u * 4 * TILE, mb, gelu, residual, y, m0, N, t + u);
    }
  }
}

// y (M, N) = x (M, K) @ W.T with W (N, K) in fp16 (the output heads: half their fp32 bytes).
void sb_f16_linear(const float* x, int64_t M, int64_t K, const half* w, int64_t N, float* y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = dot_row(x + m * K, w + n * K, K);
}

// Single-query attention for B rows and H heads, head size D.
// q: row b, head h at q + b * q_stride + h * D (the new key/value, if knew is given, at the same
// offsets from knew/vnew). Cache k/v (float, or half when `half_cache`): (b, h, j, :) at
// k + b * kv_b + h * kv_h + j * D; the new key/value are written at j = pos. Keys [first[b], n)
// are attended to, with the additive bias[b * bias_stride + j] (null: none). out: (B, H * D).
void sb_attend(const float* q, int64_t q_stride, void* k, void* v, int half_cache, int64_t kv_b, int64_t kv_h,
               const float* knew, const float* vnew, int64_t pos, const int32_t* first, int64_t n, const float* bias,
               int64_t bias_stride, float* out, int64_t B, int64_t H, int64_t D, int threads) {
  if (half_cache)
    attend_all<half>(q, q_stride, (half*)k, (half*)v, kv_b, kv_h, knew, vnew, pos, first, n, bias, bias_stride, out,
                     B, H, D, threads);
  else
    attend_all<float>(q, q_stride, (float*)k, (float*)v, kv_b, kv_h, knew, vnew, pos, first, n, bias, bias_stride,
                      out, B, H, D, threads);
}

// One decoder block's whole decode step (lm.py Block: pre-norm self-attention, cross-attention
// to the text when given, GELU feed-forward, each added to x), so that a step is one call per
// block instead of a dozen Python-level ops: on a 2-core CPU those cost ~3 ms a step.
struct SbLinear {
  int64_t bits;  // 4: packed by sb_q4_pack (a = scales, b = zeros, fp16); 8: by sb_q8_pack (a = wsum, b = scales)
  const void* packed;
  const void* a;
  const void* b;
  int64_t N, K, G;
};

struct SbBlock {
  const float *self_w, *self_b, *cross_w, *cross_b, *ffn_w, *ffn_b;  // the three LayerNorms
  float eps;
  SbLinear qkv, out, cross_q, cross_out, up, down;
};

static void run_linear(const SbLinear& L, const float* x, int64_t M, const float* ln_w, const float* ln_b, float eps,
                       const float* residual, int gelu, float* y, int threads) {
  if (L.bits == 4)
    sb_q4_linear(x, M, L.K, (const uint8_t*)L.packed, (const half*)L.a, (const half*)L.b, L.N, L.G, ln_w, ln_b, eps,
                 residual, gelu, y, threads);
  else
    sb_q8_linear(x, M, L.K, (const int8_t*)L.packed, (const int32_t*)L.a, (const float*)L.b, L.N, L.G, ln_w, ln_b,
                 eps, residual, gelu, y, threads);
}

// x (B, D) fp32, updated in place. Self-attention cache and mask as sb_attend (the new key and
// value written at pos; keys [first[b], pos] attended to); cross_k/cross_v (B, H, L, D / H) fp32
// with the additive cross_bias (B, L), or null without text. scratch: B * (4 * D + ffn) floats.
void sb_block_step(const SbBlock* blk, float* x, int64_t B, int64_t D, int64_t H, void* k_cache, void* v_cache,
                   int half_cache, int64_t kv_b, int64_t kv_h, int64_t pos, const int32_t* first, const float* bias,
                   int64_t bias_stride, const float* cross_k, const float* cross_v, int64_t L,
                   const float* cross_bias, float* scratch, int threads) {
  const int64_t hd = D / H;
  float* qkv = scratch;                // B x 3D
  float* att = scratch + B * 3 * D;    // B x D
  float* hid = scratch + B * 4 * D;    // B x ffn
  run_linear(blk->qkv, x, B, blk->self_w, blk->self_b, blk->eps, nullptr, 0, qkv, threads);
  sb_attend(qkv, 3 * D, k_cache, v_cache, half_cache, kv_b, kv_h, qkv + D, qkv + 2 * D, pos, first, pos + 1, bias,
            bias_stride, att, B, H, hd, threads);
  run_linear(blk->out, att, B, nullptr, nullptr, 0.f, x, 0, x, threads);
  if (cross_k != nullptr) {
    run_linear(blk->cross_q, x, B, blk->cross_w, blk->cross_b, blk->eps, nullptr, 0, qkv, threads);
    sb_attend(qkv, D, (void*)cross_k, (void*)cross_v, 0, H * L * hd, L * hd, nullptr, nullptr, 0, nullptr, L, cross_bias,
              L, att, B, H, hd, threads);
    run_linear(blk->cross_out, att, B, nullptr, nullptr, 0.f, x, 0, x, threads);
  }
  run_linear(blk->up, x, B, blk->ffn_w, blk->ffn_b, blk->eps, nullptr, 1, hid, threads);
  run_linear(blk->down, hid, B, nullptr, nullptr, 0.f, x, 0, x, threads);
}

}  // extern "C"
