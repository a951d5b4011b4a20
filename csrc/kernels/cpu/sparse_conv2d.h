// Direct sparse 2D convolution on the CPU (fp32, NCHW, groups = 1). Torch-free: used by
// ops/cpu/sparse_conv2d_kernel.cpp and tested alone by tests/cpp/test_sparse_conv2d.cpp.
//
// Design (after Elsen et al., "Fast Sparse ConvNets", CVPR 2020; our own code). Activations stay in CHW;
// the weight [Cout, Cin*KH*KW] is stored as CSR rows (values, column index k = (cin*KH + kh)*KW + kw,
// row_ptr). A tile of kTile consecutive output pixels of one output channel lives in SIMD registers; each
// nonzero is one broadcast of the weight times kTile/8 unaligned vector loads of input, so the work
// scales with the nonzeros and never touches a zero weight.
//
// Every kernel size, stride and padding goes through one trick, the "wide grid": the input is copied once
// per call into a zero-padded buffer split into stride phases, phase (a, b)[i][j] = x_pad[i*sh + a][j*sw + b]
// of Hq x Wq elements with Wq = Wo + (KW-1)/sw. Output pixel (oh, ow) then reads tap (kh, kw) of channel cin
// at  q + offset(cin, kh, kw)  where q = oh*Wq + ow and the offset does not depend on the pixel. Tiles run
// over the wide pixels q; the (Wq - Wo) columns of each wide row are computed and dropped in the epilogue.
// A 1x1, stride-1, unpadded conv needs no copy (Wq = Wo, the input is the buffer): "direct" mode.
//
// The offsets depend on the input size, the CSR columns do not: offsets are made per call from a table of
// Cin*KH*KW entries (one lookup per nonzero, ~0.1% of the work), so packing happens once per model.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SPARSEYOLO_SPCONV_X86 1
#include "simd_math.h"
#endif

namespace sparseyolo {
namespace kernels {

// Output pixels per register tile: 4 AVX2 vectors, with 2 accumulator sets (even/odd nonzeros) that is
// 8 independent FMA chains, enough to cover the FMA latency (4 cycles) at 2 FMAs per cycle.
constexpr int64_t kSpconvTile = 32;

enum class SpconvAct : int { kIdentity = 0, kSilu = 1 };

struct SpconvGeometry {
  int64_t cin = 0, h = 0, w = 0;           // input image
  int64_t kh = 1, kw = 1;                  // kernel
  int64_t sh = 1, sw = 1, ph = 0, pw = 0;  // stride, padding
  int64_t ho = 0, wo = 0;                  // output image
  int64_t pa = 1, pb = 1;                  // stride phases in use along rows / columns (min(stride, kernel))
  int64_t hq = 0, wq = 0;                  // size of one phase = the wide grid
  int64_t channel_stride = 0;              // floats per input channel in the buffer (pa*pb*hq*wq)
  int64_t buffer_size = 0;                 // floats per image in the buffer, including zeroed slack
  int64_t kblock = 1;                      // input channels per reduction block (see spconv_block_*)
  bool direct = false;                     // the input itself is the buffer (1x1, stride 1, padding 0)

  int64_t wide_pixels() const { return ho * wq; }
  int64_t tiles() const { return (wide_pixels() + kSpconvTile - 1) / kSpconvTile; }
};

inline SpconvGeometry spconv_geometry(int64_t cin, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                                      int64_t sw, int64_t ph, int64_t pw) {
  SpconvGeometry g;
  g.cin = cin, g.h = h, g.w = w, g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
  g.ho = (h + 2 * ph - kh) / sh + 1;
  g.wo = (w + 2 * pw - kw) / sw + 1;
  // A channel stride that is a multiple of 4 KiB puts every channel of a tile in the same L1 sets (160x160
  // and 80x80 maps): those images are copied to the buffer, whose channel stride is made an odd number of
  // cache lines.
  g.direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && (h * w) % 1024 != 0;
  g.pa = std::min(sh, kh);
  g.pb = std::min(sw, kw);
  g.hq = g.ho + (kh - 1) / sh;
  g.wq = g.wo + (kw - 1) / sw;
  g.channel_stride = g.pa * g.pb * g.hq * g.wq;
  g.channel_stride = (g.channel_stride + 15) / 16 * 16;
  if ((g.channel_stride / 16) % 2 == 0) g.channel_stride += 16;
  // Reduction blocks: the input a tile touches for one block of channels should stay in L1 (32 KiB) next to
  // the nonzeros: ~16 KiB, counting the cache lines one channel's taps cover for a 32-pixel tile.
  const int64_t lines = g.direct ? 3 : std::max<int64_t>(3, g.pa * g.pb * (((kh - 1) / sh + 1) * (3 + (kw - 1) / sw / 16)));
  g.kblock = std::max<int64_t>(8, 16384 / (64 * lines));
  // Tiles may read up to kTile-1 wide pixels past the last one, plus one wide row (the last tap's column
  // shift): zeroed slack keeps those reads in bounds and finite.
  g.buffer_size = g.direct ? cin * h * w : cin * g.channel_stride + kSpconvTile + g.wq;
  return g;
}

// Copy channels [c0, c1) of one image x [Cin, H, W] into the wide-grid buffer (not used in direct mode).
// The caller zeroes the slack after the last channel.
inline void spconv_prepare_input(const SpconvGeometry& g, const float* x, float* buf, int64_t c0, int64_t c1) {
  const int64_t plane = g.hq * g.wq;
  for (int64_t c = c0; c < c1; ++c) {
    const float* xc = x + c * g.h * g.w;
    float* bc = buf + c * g.channel_stride;
    for (int64_t a = 0; a < g.pa; ++a) {
      for (int64_t b = 0; b < g.pb; ++b) {
        float* phase = bc + (a * g.pb + b) * plane;
        for (int64_t i = 0; i < g.hq; ++i) {
          float* row = phase + i * g.wq;
          const int64_t r = i * g.sh + a - g.ph;
          if (r < 0 || r >= g.h) {
            std::memset(row, 0, sizeof(float) * g.wq);
            continue;
          }
          const float* xr = xc + r * g.w;
          if (g.sw == 1) {
            // columns j with 0 <= j + b - pw < w are copied, the rest are padding
            const int64_t j0 = std::min(g.wq, std::max<int64_t>(0, g.pw - b));
            const int64_t j1 = std::max(j0, std::min(g.wq, g.w + g.pw - b));
            std::memset(row, 0, sizeof(float) * j0);
            if (j1 > j0) std::memcpy(row + j0, xr + j0 + b - g.pw, sizeof(float) * (j1 - j0));
            std::memset(row + j1, 0, sizeof(float) * (g.wq - j1));
          } else {
            for (int64_t j = 0; j < g.wq; ++j) {
              const int64_t col = j * g.sw + b - g.pw;
              row[j] = (col >= 0 && col < g.w) ? xr[col] : 0.f;
            }
          }
        }
      }
    }
  }
}

// table[k] for k = (cin*KH + kh)*KW + kw: offset in floats of that tap from a wide pixel's position.
inline void spconv_offset_table(const SpconvGeometry& g, int32_t* table) {
  const int64_t plane = g.hq * g.wq;
  for (int64_t c = 0; c < g.cin; ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        int64_t off;
        if (g.direct) {
          off = c * g.h * g.w;
        } else {
          off = c * g.channel_stride + ((i % g.sh) * g.pb + (j % g.sw)) * plane + (i / g.sh) * g.wq + j / g.sw;
        }
        table[(c * g.kh + i) * g.kw + j] = static_cast<int32_t>(off);
      }
}

// For rows [r0, r1): translate CSR columns to offsets and find where each reduction block starts,
// seg[r * (nkb + 1) + j] = first nonzero of row r in channel block j (seg[.. + nkb] = end of the row).
// Returns false on a column outside [0, Cin*KH*KW) or columns not increasing within a row.
inline bool spconv_index_rows(const SpconvGeometry& g, const int32_t* table, const int64_t* row_ptr,
                              const int32_t* columns, int32_t* offsets, int64_t* seg, int64_t r0, int64_t r1) {
  const int64_t table_size = g.cin * g.kh * g.kw, taps = g.kh * g.kw;
  const int64_t nkb = (g.cin + g.kblock - 1) / g.kblock;
  for (int64_t r = r0; r < r1; ++r) {
    int64_t* sr = seg + r * (nkb + 1);
    int64_t j = 0, prev = -1;
    for (int64_t i = row_ptr[r]; i < row_ptr[r + 1]; ++i) {
      const int64_t k = columns[i];
      if (k <= prev || k >= table_size) return false;
      prev = k;
      offsets[i] = table[k];
      const int64_t blk = k / taps / g.kblock;
      while (j <= blk) sr[j++] = i;
    }
    while (j <= nkb) sr[j++] = row_ptr[r + 1];
  }
  return true;
}

// One call computes output channels [c0, c1) for wide-pixel tiles [t0, t1) of one image.
struct SpconvArgs {
  SpconvGeometry g;
  const float* input = nullptr;    // buffer (or the raw image in direct mode)
  float* output = nullptr;         // [Cout, Ho, Wo] of the image
  const float* values = nullptr;   // CSR nonzeros
  const int32_t* offsets = nullptr;
  const int64_t* seg = nullptr;    // [Cout, nkb + 1] nonzero ranges per channel block (spconv_index_rows)
  int64_t nkb = 1;
  const float* bias = nullptr;     // [Cout] or null
  SpconvAct act = SpconvAct::kIdentity;
  // Optional, [ceil(Cout / 4)]: block4[c / 4] != 0 when rows c .. c+3 have the same nonzero columns
  // (spconv_find_blocks); the AVX2 path then runs the 4 rows together, one input load feeding 4 FMAs.
  const uint8_t* block4 = nullptr;
};

// Output-channel blocks: rows c, c+1, c+2, c+3 (c % 4 == 0) whose nonzeros sit at the same columns, as N:M
// masks shared by 4 output channels give (``prune(..., block=4)``). block4 gets ceil(cout / 4) flags.
inline void spconv_find_blocks(const int64_t* row_ptr, const int32_t* columns, int64_t cout, uint8_t* block4) {
  for (int64_t c = 0; c < cout; c += 4) {
    bool same = c + 4 <= cout;
    const int64_t len = row_ptr[c + 1] - row_ptr[c];
    for (int64_t i = 1; same && i < 4; ++i) {
      same = row_ptr[c + i + 1] - row_ptr[c + i] == len &&
             std::memcmp(columns + row_ptr[c], columns + row_ptr[c + i], sizeof(int32_t) * len) == 0;
    }
    block4[c / 4] = same && len > 0 ? 1 : 0;
  }
}

inline float spconv_silu(float x) { return x / (1.f + std::exp(-x)); }

// Write the kTile results `acc` of wide pixels [q0, q0 + kTile) of channel c: valid columns only.
inline void spconv_store_tile(const SpconvArgs& a, int64_t c, int64_t q0, const float* acc) {
  const SpconvGeometry& g = a.g;
  const int64_t q1 = std::min(q0 + kSpconvTile, g.wide_pixels());
  float* out = a.output + c * g.ho * g.wo;
  if (g.wq == g.wo) {
    std::memcpy(out + q0, acc, sizeof(float) * (q1 - q0));
    return;
  }
  for (int64_t r = q0 / g.wq; r * g.wq < q1; ++r) {
    const int64_t s = std::max(q0, r * g.wq), e = std::min(q1, r * g.wq + g.wo);
    if (e > s) std::memcpy(out + r * g.wo + (s - r * g.wq), acc + (s - q0), sizeof(float) * (e - s));
  }
}

// Loop order of both paths: per tile, per channel block of the reduction (so the input the tile reads
// stays in L1), per output channel; partial sums of the output channels wait in `scratch` ([c1 - c0,
// kTile], L1) between channel blocks, and the epilogue writes each output once after the last block.

// Portable path: plain loops the compiler vectorises with the baseline ISA (SSE2 on x86-64).
inline void spconv_block_portable(const SpconvArgs& a, int64_t c0, int64_t c1, int64_t t0, int64_t t1) {
  const SpconvGeometry& g = a.g;
  const int64_t P = g.wide_pixels();
  // In direct mode the input has no slack: the last tile reads only its valid lanes.
  const int64_t limit = g.direct ? P : P + kSpconvTile;
  std::vector<float> scratch(static_cast<size_t>((c1 - c0) * kSpconvTile));
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t q0 = t * kSpconvTile;
    const int64_t lanes = std::min(kSpconvTile, limit - q0);
    const float* in = a.input + q0;
    for (int64_t kb = 0; kb < a.nkb; ++kb) {
      for (int64_t c = c0; c < c1; ++c) {
        float* acc = scratch.data() + (c - c0) * kSpconvTile;
        if (kb == 0) std::fill(acc, acc + kSpconvTile, 0.f);
        const int64_t* sr = a.seg + c * (a.nkb + 1);
        for (int64_t k = sr[kb]; k < sr[kb + 1]; ++k) {
          const float wv = a.values[k];
          const float* p = in + a.offsets[k];
          if (lanes == kSpconvTile) {
            for (int64_t j = 0; j < kSpconvTile; ++j) acc[j] += wv * p[j];
          } else {
            for (int64_t j = 0; j < lanes; ++j) acc[j] += wv * p[j];
          }
        }
        if (kb + 1 < a.nkb) continue;
        const float b = a.bias != nullptr ? a.bias[c] : 0.f;
        for (int64_t j = 0; j < kSpconvTile; ++j) {
          const float v = acc[j] + b;
          acc[j] = a.act == SpconvAct::kSilu ? spconv_silu(v) : v;
        }
        spconv_store_tile(a, c, q0, acc);
      }
    }
  }
}

#if defined(SPARSEYOLO_SPCONV_X86)
#define SPARSEYOLO_AVX2 __attribute__((target("avx2,fma")))
#define SPARSEYOLO_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

SPARSEYOLO_AVX2_INLINE __m256 spconv_epilogue_avx2(__m256 v, __m256 bias, bool silu) {
  v = _mm256_add_ps(v, bias);
  if (!silu) return v;
  return silu_avx2(v);
}

// Lanes valid[i] of a tile: mask of vector v has lane i set when 8*v + i < lanes.
SPARSEYOLO_AVX2_INLINE __m256i spconv_lane_mask(int64_t lanes, int v) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes) - 8 * v), iota);
}

// One tile of one channel: the hot loop. kMasked loads only the first `lanes` pixels (direct-mode tail).
template <bool kMasked>
SPARSEYOLO_AVX2_INLINE void spconv_tile_avx2(const float* in, const float* values, const int32_t* offsets,
                                             int64_t k0, int64_t k1, const __m256i* mask, __m256* acc) {
  __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
#define SPCONV_LOAD(p, v) (kMasked ? _mm256_maskload_ps((p) + 8 * (v), mask[v]) : _mm256_loadu_ps((p) + 8 * (v)))
  int64_t k = k0;
  for (; k + 1 < k1; k += 2) {
    const __m256 w0 = _mm256_broadcast_ss(values + k);
    const __m256 w1 = _mm256_broadcast_ss(values + k + 1);
    const float* p0 = in + offsets[k];
    const float* p1 = in + offsets[k + 1];
    a0 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 0), a0);
    a1 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 1), a1);
    a2 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 2), a2);
    a3 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 3), a3);
    b0 = _mm256_fmadd_ps(w1, SPCONV_LOAD(p1, 0), b0);
    b1 = _mm256_fmadd_ps(w1, SPCONV_LOAD(p1, 1), b1);
    b2 = _mm256_fmadd_ps(w1, SPCONV_LOAD(p1, 2), b2);
    b3 = _mm256_fmadd_ps(w1, SPCONV_LOAD(p1, 3), b3);
  }
  if (k < k1) {
    const __m256 w0 = _mm256_broadcast_ss(values + k);
    const float* p0 = in + offsets[k];
    a0 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 0), a0);
    a1 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 1), a1);
    a2 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 2), a2);
    a3 = _mm256_fmadd_ps(w0, SPCONV_LOAD(p0, 3), a3);
  }
#undef SPCONV_LOAD
  acc[0] = _mm256_add_ps(a0, b0);
  acc[1] = _mm256_add_ps(a1, b1);
  acc[2] = _mm256_add_ps(a2, b2);
  acc[3] = _mm256_add_ps(a3, b3);
}

// Four output channels sharing their nonzero columns, one tile: each input vector is loaded once for the 4
// rows. Row i's values start `d[i]` entries after row 0's. The 32-pixel tile runs as two halves of 16, so the
// 8 accumulators (4 rows x 2 vectors), 2 input vectors and 4 broadcast weights fit the 16 registers.
template <bool kMasked>
SPARSEYOLO_AVX2_INLINE void spconv_tile4_avx2(const float* in, const float* values, const int64_t* d,
                                              const int32_t* offsets, int64_t k0, int64_t k1, const __m256i* mask,
                                              __m256 (*acc)[4]) {
  const float* v1 = values + d[1];
  const float* v2 = values + d[2];
  const float* v3 = values + d[3];
#define SPCONV_LOAD(p, v) (kMasked ? _mm256_maskload_ps((p) + 8 * (v), mask[v]) : _mm256_loadu_ps((p) + 8 * (v)))
  for (int h = 0; h < 2; ++h) {
    const int va = 2 * h, vb = 2 * h + 1;
    __m256 r0a = acc[0][va], r0b = acc[0][vb], r1a = acc[1][va], r1b = acc[1][vb];
    __m256 r2a = acc[2][va], r2b = acc[2][vb], r3a = acc[3][va], r3b = acc[3][vb];
    for (int64_t k = k0; k < k1; ++k) {
      const float* p = in + offsets[k];
      const __m256 xa = SPCONV_LOAD(p, va), xb = SPCONV_LOAD(p, vb);
      const __m256 w0 = _mm256_broadcast_ss(values + k), w1 = _mm256_broadcast_ss(v1 + k);
      const __m256 w2 = _mm256_broadcast_ss(v2 + k), w3 = _mm256_broadcast_ss(v3 + k);
      r0a = _mm256_fmadd_ps(w0, xa, r0a);
      r0b = _mm256_fmadd_ps(w0, xb, r0b);
      r1a = _mm256_fmadd_ps(w1, xa, r1a);
      r1b = _mm256_fmadd_ps(w1, xb, r1b);
      r2a = _mm256_fmadd_ps(w2, xa, r2a);
      r2b = _mm256_fmadd_ps(w2, xb, r2b);
      r3a = _mm256_fmadd_ps(w3, xa, r3a);
      r3b = _mm256_fmadd_ps(w3, xb, r3b);
    }
    acc[0][va] = r0a, acc[0][vb] = r0b, acc[1][va] = r1a, acc[1][vb] = r1b;
    acc[2][va] = r2a, acc[2][vb] = r2b, acc[3][va] = r3a, acc[3][vb] = r3b;
  }
#undef SPCONV_LOAD
}

// After the last reduction block: bias, activation and the store of one channel's tile.
SPARSEYOLO_AVX2_INLINE void spconv_finish_avx2(const SpconvArgs& a, int64_t c, int64_t q0, int64_t valid,
                                               const __m256i* mask, __m256* acc) {
  const SpconvGeometry& g = a.g;
  const __m256 bias = _mm256_set1_ps(a.bias != nullptr ? a.bias[c] : 0.f);
  const bool silu = a.act == SpconvAct::kSilu;
  for (int v = 0; v < 4; ++v) acc[v] = spconv_epilogue_avx2(acc[v], bias, silu);
  if (g.wq == g.wo) {
    float* out = a.output + c * g.ho * g.wo + q0;
    if (valid == kSpconvTile) {
      for (int v = 0; v < 4; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
    } else {
      for (int v = 0; v < 4; ++v) _mm256_maskstore_ps(out + 8 * v, mask[v], acc[v]);
    }
  } else {
    alignas(32) float tmp[kSpconvTile];
    for (int v = 0; v < 4; ++v) _mm256_store_ps(tmp + 8 * v, acc[v]);
    spconv_store_tile(a, c, q0, tmp);
  }
}

SPARSEYOLO_AVX2 inline void spconv_block_avx2(const SpconvArgs& a, int64_t c0, int64_t c1, int64_t t0,
                                              int64_t t1) {
  const SpconvGeometry& g = a.g;
  const int64_t P = g.wide_pixels();
  std::vector<float> scratch(a.nkb > 1 ? static_cast<size_t>((c1 - c0) * kSpconvTile) : 0);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t q0 = t * kSpconvTile;
    const int64_t valid = std::min(kSpconvTile, P - q0);
    const bool masked_loads = g.direct && valid < kSpconvTile;
    __m256i mask[4];
    for (int v = 0; v < 4; ++v) mask[v] = spconv_lane_mask(valid, v);
    const float* in = a.input + q0;
    for (int64_t kb = 0; kb < a.nkb; ++kb) {
      const bool last = kb + 1 == a.nkb;
      for (int64_t c = c0; c < c1;) {
        const int64_t* sr = a.seg + c * (a.nkb + 1);
        if (a.block4 != nullptr && c % 4 == 0 && c + 4 <= c1 && a.block4[c / 4]) {
          __m256 acc[4][4];
          int64_t d[4];
          for (int i = 0; i < 4; ++i) {
            d[i] = a.seg[(c + i) * (a.nkb + 1)] - sr[0];  // row i's nonzeros, relative to row 0's
            float* keep = a.nkb > 1 ? scratch.data() + (c + i - c0) * kSpconvTile : nullptr;
            for (int v = 0; v < 4; ++v) acc[i][v] = kb == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(keep + 8 * v);
          }
          if (masked_loads) {
            spconv_tile4_avx2<true>(in, a.values, d, a.offsets, sr[kb], sr[kb + 1], mask, acc);
          } else {
            spconv_tile4_avx2<false>(in, a.values, d, a.offsets, sr[kb], sr[kb + 1], mask, acc);
          }
          for (int i = 0; i < 4; ++i) {
            if (!last) {
              float* keep = scratch.data() + (c + i - c0) * kSpconvTile;
              for (int v = 0; v < 4; ++v) _mm256_storeu_ps(keep + 8 * v, acc[i][v]);
            } else {
              spconv_finish_avx2(a, c + i, q0, valid, mask, acc[i]);
            }
          }
          c += 4;
          continue;
        }
        __m256 acc[4];
        float* keep = a.nkb > 1 ? scratch.data() + (c - c0) * kSpconvTile : nullptr;
        for (int v = 0; v < 4; ++v) acc[v] = kb == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(keep + 8 * v);
        if (masked_loads) {
          spconv_tile_avx2<true>(in, a.values, a.offsets, sr[kb], sr[kb + 1], mask, acc);
        } else {
          spconv_tile_avx2<false>(in, a.values, a.offsets, sr[kb], sr[kb + 1], mask, acc);
        }
        if (!last) {
          for (int v = 0; v < 4; ++v) _mm256_storeu_ps(keep + 8 * v, acc[v]);
        } else {
          spconv_finish_avx2(a, c, q0, valid, mask, acc);
        }
        ++c;
      }
    }
  }
}
#undef SPARSEYOLO_AVX2
#undef SPARSEYOLO_AVX2_INLINE
#endif  // SPARSEYOLO_SPCONV_X86

// True when this CPU runs the AVX2/FMA path (checked at run time, so one build runs everywhere).
inline bool spconv_cpu_has_avx2() {
#if defined(SPARSEYOLO_SPCONV_X86) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

inline void spconv_block(const SpconvArgs& a, int64_t c0, int64_t c1, int64_t t0, int64_t t1, bool use_avx2) {
#if defined(SPARSEYOLO_SPCONV_X86)
  if (use_avx2) {
    spconv_block_avx2(a, c0, c1, t0, t1);
    return;
  }
#endif
  (void)use_avx2;
  spconv_block_portable(a, c0, c1, t0, t1);
}

}  // namespace kernels
}  // namespace sparseyolo
