// Block-sparse 2D convolution on the CPU, channels-last, fp32 or bf16 (fp32 accumulation). Torch-free: used by
// ops/cpu/block_sparse_conv2d_kernel.cpp; weight packing in sparseyolo/sparse/block_packing.py.
//
// Formulation (the dense micro-kernel's, on gathered rows). Output channels sit in vector lanes: a block of 16
// output channels is one zmm of fp32 accumulators per output pixel, a register tile is P pixels x 16 channels.
// The reduction runs over the block's *units*: a unit is one input value per pixel (fp32) or two (bf16, a pair that
// vdpbf16ps multiplies with the pair of weights in each lane). All 16 channels of a block share their units, so a
// unit dropped by the pruning pattern is skipped for the whole vector: the inner loop is one weight-vector load and
// P broadcast-FMAs per unit, the dense kernel's loop over fewer rows. Patterns that give shared units:
// * N:M (2:4) masks shared by 16 output channels (``prune(..., block=16)``): fp32 keeps K/2 units of 1 value;
//   bf16 keeps K/4 units of 2 values, read from a "pairs" copy of the input (gather kPairs24) that holds all
//   6 pairs of each group of 4 channels, so any kept pair is one 32-bit broadcast;
// * whole input rows (or aligned row pairs, for bf16) dropped for a block of 16 output channels (row-block
//   sparsity), or dense layers: units straight from the channels-last input (gather kPlain).
//
// Geometry ("wide grid", as in sparse_conv2d.h): the input is copied into a zero-padded buffer split into stride
// phases (by each work item, the rows its tiles read, just before it computes them: bs_tile_rows), phase
// (a, b)[i][j] = x_pad[i*sh + a][j*sw + b] of Hq x Wq pixels (Wq = Wo + (KW-1)/sw), each pixel `cu` 4-byte units.
// Wide pixel q = oh*Wq + ow reads unit u of its taps at q*cu + offset(u), the offset independent of the pixel; the
// Wq - Wo extra columns are computed and dropped. A 1x1, stride-1, unpadded conv with plain gather reads the input
// itself ("direct").
//
// Twin blocks. Two neighbouring blocks with the same units (a pattern shared by 32 output channels, or a layer
// with nothing pruned) run together on AVX-512: per unit two weight vectors and 12 broadcasts feed 24 FMAs, where
// one block needs a broadcast per FMA (25 loads per 24 FMAs). The loop alone runs ~1.25x faster that way
// (benchmarks/experimental/fp32_inner_loop.cpp, "twin12"). bs_twin_starts finds them once per call.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu_isa.h"
#include "simd_math.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SPARSEYOLO_BS_X86 1
#endif

// GCC 12 reports -Wmaybe-uninitialized inside its own AVX-512 intrinsic headers (their _mm512_undefined_*
// idiom) when they are inlined here: a known false positive that floods build logs.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sparseyolo {
namespace kernels {

constexpr int64_t kBsBlock = 16;    // output channels per block (one zmm of fp32)
constexpr int64_t kBsMaxTile = 64;  // largest pixel tile of any path (buffer slack)

// kTiles32 (bf16, experimental): a unit is 32 consecutive input channels at one tap (16 pairs), the K extent of one
// AMX tile; the buffer pads Cin to a multiple of 32 with zeros.
enum class BsGather : int { kPlain = 0, kPairs24 = 1, kTiles32 = 2 };

// The 6 pairs of a group of 4 channels in a kPairs24 buffer, in this order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
// The first channel of a pair is the low half of the 32-bit unit (vdpbf16ps multiplies low with low).

struct BsGeometry {
  int64_t cin = 0, h = 0, w = 0, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, ho = 0, wo = 0;
  int64_t pa = 1, pb = 1;       // stride phases in use (min(stride, kernel))
  int64_t hq = 0, wq = 0;       // one phase = the wide grid
  int64_t cu = 0;               // 4-byte units per pixel
  int64_t plane = 0;            // units per phase (hq*wq*cu)
  int64_t image_units = 0;      // units per image in the buffer, zeroed slack included
  bool bf16 = false;
  BsGather gather = BsGather::kPlain;
  bool direct = false;          // the input itself is the buffer

  int64_t wide_pixels() const { return ho * wq; }
};

// 4-byte units per pixel: fp32 -> Cin values; bf16 plain -> Cin/2 pairs (Cin even); bf16 pairs24 -> 6 per 4
// channels; bf16 tiles32 -> 16 pairs per 32 channels (Cin rounded up).
inline int64_t bs_units_per_pixel(int64_t cin, bool bf16, BsGather gather) {
  if (!bf16) return cin;
  if (gather == BsGather::kTiles32) return (cin + 31) / 32 * 16;
  return gather == BsGather::kPairs24 ? cin / 4 * 6 : cin / 2;
}

// Units of the packed weight per taps entry: 16 pairs for tiles32, else 1.
inline int64_t bs_unit_width(BsGather gather) { return gather == BsGather::kTiles32 ? 16 : 1; }

inline BsGeometry bs_geometry(int64_t cin, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw, bool bf16, BsGather gather) {
  BsGeometry g;
  g.cin = cin, g.h = h, g.w = w, g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
  g.bf16 = bf16, g.gather = gather;
  g.ho = (h + 2 * ph - kh) / sh + 1;
  g.wo = (w + 2 * pw - kw) / sw + 1;
  // tiles32 reads the input itself too when Cin needs no padding (its pixel is then Cin/2 pairs, as plain's).
  g.direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 &&
             (gather == BsGather::kPlain || (gather == BsGather::kTiles32 && bf16 && cin % 32 == 0));
  g.pa = std::min(sh, kh);
  g.pb = std::min(sw, kw);
  g.hq = g.ho + (kh - 1) / sh;
  g.wq = g.wo + (kw - 1) / sw;
  g.cu = bs_units_per_pixel(cin, bf16, gather);
  g.plane = g.hq * g.wq * g.cu;
  // A tile may run up to kBsMaxTile - 1 wide pixels past the last one; its reads stay inside its phase plus
  // this slack (direct mode copies its last tile instead, see bs_run).
  g.image_units = g.direct ? h * w * g.cu : g.pa * g.pb * g.plane + kBsMaxTile * g.cu;
  return g;
}

// n pixels of `bytes` each from src (pixels `src_step` bytes apart) to dst (packed): one memcpy for a contiguous run
// (stride 1), else whole 64-byte chunks as fixed-size copies the compiler inlines, not a libc call per pixel
// (measured: the 32->64 3x3 stride-2 layer at 320x320, bf16 tiles, 4% faster).
inline void bs_copy_pixels(char* dst, const char* src, int64_t n, int64_t bytes, int64_t src_step) {
  if (src_step == bytes) {
    std::memcpy(dst, src, static_cast<size_t>(n * bytes));
    return;
  }
  if (bytes % 64 != 0) {
    for (int64_t j = 0; j < n; ++j) std::memcpy(dst + j * bytes, src + j * src_step, static_cast<size_t>(bytes));
    return;
  }
  for (int64_t j = 0; j < n; ++j, dst += bytes, src += src_step) {
    for (int64_t k = 0; k < bytes; k += 64) std::memcpy(dst + k, src + k, 64);
  }
}

// Rows of the buffer: pa*pb*hq of them, row r = (phase, i). Fills rows [r0, r1) of one image from x, the image in
// channels-last [H][W][Cin] (T = float, or uint16_t bf16 bits). Per row: the padding
// columns zeroed, the pixels inside the image copied as one run (plain copies) or unit by unit (pairs24, and
// tiles32 when Cin is padded to 32).
template <typename T>
inline void bs_prepare_rows(const BsGeometry& g, const T* x, uint32_t* buf, int64_t r0, int64_t r1) {
  const int64_t cu = g.cu, unit_bytes = sizeof(uint32_t) * cu;
  const bool plain_copy = sizeof(T) == 4 || g.gather == BsGather::kPlain ||
                          (g.gather == BsGather::kTiles32 && static_cast<int64_t>(sizeof(T)) * g.cin == unit_bytes);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t phase = row / g.hq, i = row % g.hq, a = phase / g.pb, b = phase % g.pb;
    uint32_t* dst = buf + phase * g.plane + i * g.wq * cu;
    const int64_t r = i * g.sh + a - g.ph;
    // columns j with 0 <= j*sw + b - pw < w: [j0, j1)
    int64_t j0 = 0, j1 = 0;
    if (r >= 0 && r < g.h) {
      const int64_t lo = g.pw - b, hi = g.w - 1 + g.pw - b;  // j*sw in [lo, hi]
      j0 = lo <= 0 ? 0 : (lo + g.sw - 1) / g.sw;
      j1 = hi < 0 ? 0 : std::min(g.wq, hi / g.sw + 1);
      j0 = std::min(j0, j1);
    }
    std::memset(dst, 0, static_cast<size_t>(unit_bytes * j0));
    std::memset(dst + j1 * cu, 0, static_cast<size_t>(unit_bytes * (g.wq - j1)));
    if (j1 == j0) continue;
    const T* src0 = x + (r * g.w + j0 * g.sw + b - g.pw) * g.cin;
    if (plain_copy) {
      bs_copy_pixels(reinterpret_cast<char*>(dst + j0 * cu), reinterpret_cast<const char*>(src0), j1 - j0,
                     unit_bytes, static_cast<int64_t>(sizeof(T)) * g.sw * g.cin);
      continue;
    }
    for (int64_t j = j0; j < j1; ++j) {
      uint32_t* u = dst + j * cu;
      const T* src = src0 + (j - j0) * g.sw * g.cin;
      if (g.gather == BsGather::kTiles32) {
        std::memcpy(u, src, sizeof(T) * g.cin);
        std::memset(reinterpret_cast<char*>(u) + sizeof(T) * g.cin, 0, unit_bytes - sizeof(T) * g.cin);
        continue;
      }
      for (int64_t grp = 0; grp < g.cin / 4; ++grp) {
        const uint32_t x0 = static_cast<uint32_t>(src[4 * grp]), x1 = static_cast<uint32_t>(src[4 * grp + 1]);
        const uint32_t x2 = static_cast<uint32_t>(src[4 * grp + 2]), x3 = static_cast<uint32_t>(src[4 * grp + 3]);
        uint32_t* o = u + 6 * grp;
        o[0] = x0 | x1 << 16, o[1] = x0 | x2 << 16, o[2] = x0 | x3 << 16;
        o[3] = x1 | x2 << 16, o[4] = x1 | x3 << 16, o[5] = x2 | x3 << 16;
      }
    }
  }
}

// Rows [r0, r1) of every phase that the output pixels among wide pixels [q0, q1) read: a caller that lays out only
// these (bs_prepare_rows, row phase * hq + i) computes those pixels exactly. The wide pixels it drops (the extra
// columns, the last tile's run past the image) may read other rows and the slack: whatever they hold is discarded.
inline std::pair<int64_t, int64_t> bs_tile_rows(const BsGeometry& g, int64_t q0, int64_t q1) {
  const int64_t last = std::min(q1, g.wide_pixels()) - 1;
  if (last < q0) return {0, 0};
  return {q0 / g.wq, std::min(g.hq, last / g.wq + (g.kh - 1) / g.sh + 1)};
}

// taps[u] = (kh*KW + kw) * per_tap + c names unit u (tap, unit c of that pixel, in steps of bs_unit_width);
// offsets[u] = its buffer offset from a wide pixel's first unit. False when a tap lies outside [0, KH*KW*per_tap).
inline bool bs_unit_offsets(const BsGeometry& g, const int32_t* taps, int64_t n, int32_t* offsets) {
  const int64_t width = bs_unit_width(g.gather), per_tap = g.cu / width, limit = g.kh * g.kw * per_tap;
  for (int64_t u = 0; u < n; ++u) {
    const int64_t t = taps[u];
    if (t < 0 || t >= limit) return false;
    const int64_t tap = t / per_tap, c = t % per_tap * width, i = tap / g.kw, j = tap % g.kw;
    const int64_t phase = (i % g.sh) * g.pb + (j % g.sw);
    offsets[u] = static_cast<int32_t>(phase * g.plane + ((i / g.sh) * g.wq + j / g.sw) * g.cu + c);
  }
  return true;
}

// twin_start[b] = 1 where output blocks b and b+1 have the same units (same count, same offsets) and b is not the
// second of twins already; blocks are paired greedily from block 0. O(units) per call.
inline void bs_twin_starts(const int64_t* block_ptr, const int32_t* offsets, int64_t nb, uint8_t* twin_start) {
  for (int64_t b = 0; b < nb; ++b) twin_start[b] = 0;
  for (int64_t b = 0; b + 1 < nb; ++b) {
    const int64_t n0 = block_ptr[b + 1] - block_ptr[b], n1 = block_ptr[b + 2] - block_ptr[b + 1];
    if (n0 != n1 || !std::equal(offsets + block_ptr[b], offsets + block_ptr[b + 1], offsets + block_ptr[b + 1]))
      continue;
    twin_start[b] = 1;
    ++b;
  }
}

// What one (pixel tile, output block) call needs.
struct BsArgs {
  BsGeometry g;
  const uint32_t* weight = nullptr;    // [U][16] fp32 bits, or bf16 pairs (low = first of the unit's two)
  const int32_t* offsets = nullptr;    // [U] (bs_unit_offsets)
  const int64_t* block_ptr = nullptr;  // [nb + 1]: units of output block b are [block_ptr[b], block_ptr[b+1])
  const uint8_t* twin_start = nullptr; // [nb] or null: 1 where blocks b and b+1 run as twins (bs_twin_starts)
  int64_t cout = 0;
  const float* bias = nullptr;         // [cout] or null
  bool silu = false;
  void* output = nullptr;              // one image, channels-last [Ho*Wo][cout], fp32 or bf16 (as g.bf16)
};

inline float bs_bf16_to_float(uint32_t bits16) {
  const uint32_t b = bits16 << 16;
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// Round to nearest even, as PyTorch's float -> bfloat16 conversion; NaN stays a quiet NaN.
inline uint16_t bs_float_to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  if (f != f) return static_cast<uint16_t>((b >> 16) | 0x40);
  b += 0x7fff + ((b >> 16) & 1);
  return static_cast<uint16_t>(b >> 16);
}

inline float bs_silu(float v) { return v / (1.f + std::exp(-v)); }

// Portable path: the same tile in plain C++.
template <int P>
inline void bs_tile_portable(const BsArgs& a, const uint32_t* in, const int64_t* out_pix, int64_t ob) {
  float acc[P][kBsBlock] = {};
  const int64_t cu = a.g.cu;
  for (int64_t u = a.block_ptr[ob]; u < a.block_ptr[ob + 1]; ++u) {
    const uint32_t* w = a.weight + u * kBsBlock;
    const uint32_t* p = in + a.offsets[u];
    for (int i = 0; i < P; ++i) {
      const uint32_t x = p[i * cu];
      if (a.g.bf16) {
        const float xl = bs_bf16_to_float(x & 0xffff), xh = bs_bf16_to_float(x >> 16);
        for (int l = 0; l < kBsBlock; ++l) {
          acc[i][l] += xl * bs_bf16_to_float(w[l] & 0xffff) + xh * bs_bf16_to_float(w[l] >> 16);
        }
      } else {
        float xf;
        std::memcpy(&xf, &x, sizeof(xf));
        for (int l = 0; l < kBsBlock; ++l) {
          float wf;
          std::memcpy(&wf, w + l, sizeof(wf));
          acc[i][l] += xf * wf;
        }
      }
    }
  }
  const int64_t c0 = ob * kBsBlock, lanes = std::min(kBsBlock, a.cout - c0);
  for (int i = 0; i < P; ++i) {
    if (out_pix[i] < 0) continue;
    for (int64_t l = 0; l < lanes; ++l) {
      float v = acc[i][l] + (a.bias != nullptr ? a.bias[c0 + l] : 0.f);
      if (a.silu) v = bs_silu(v);
      const int64_t at = out_pix[i] * a.cout + c0 + l;
      if (a.g.bf16) {
        static_cast<uint16_t*>(a.output)[at] = bs_float_to_bf16(v);
      } else {
        static_cast<float*>(a.output)[at] = v;
      }
    }
  }
}

#if defined(SPARSEYOLO_BS_X86)
#define SPARSEYOLO_BS_AVX2 __attribute__((target("avx2,fma")))
#define SPARSEYOLO_BS_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline
#define SPARSEYOLO_BS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define SPARSEYOLO_BS_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma"), always_inline)) inline
#define SPARSEYOLO_BS_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
#define SPARSEYOLO_BS_AVX512BF16_INLINE \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma"), always_inline)) inline
#define SPARSEYOLO_BS_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

// ---------------------------------------------------------------------------------------------- AVX2 / FMA
// bf16 pair halves as fp32: the low bf16 shifted up, the high one with the low bits cleared.
SPARSEYOLO_BS_AVX2_INLINE __m256 bs_lo_avx2(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
SPARSEYOLO_BS_AVX2_INLINE __m256 bs_hi_avx2(__m256i v) {
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// kBf16: units are bf16 pairs (each product computed in fp32, as vdpbf16ps does); else fp32 values.
template <int P, bool kBf16>
SPARSEYOLO_BS_AVX2 void bs_tile_avx2(const BsArgs& a, const uint32_t* in, const int64_t* out_pix, int64_t ob) {
  __m256 acc[P][2];
  for (int i = 0; i < P; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const int64_t cu = a.g.cu;
  const uint32_t* w = a.weight + a.block_ptr[ob] * kBsBlock;
  for (int64_t u = a.block_ptr[ob]; u < a.block_ptr[ob + 1]; ++u, w += kBsBlock) {
    const uint32_t* p = in + a.offsets[u];
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 8));
    if (kBf16) {
      const __m256 l0 = bs_lo_avx2(w0), l1 = bs_lo_avx2(w1), h0 = bs_hi_avx2(w0), h1 = bs_hi_avx2(w1);
#pragma GCC unroll 16
      for (int i = 0; i < P; ++i) {
        const uint32_t x = p[i * cu];
        const __m256 xl = _mm256_set1_ps(bs_bf16_to_float(x & 0xffff)), xh = _mm256_set1_ps(bs_bf16_to_float(x >> 16));
        acc[i][0] = _mm256_fmadd_ps(xh, h0, _mm256_fmadd_ps(xl, l0, acc[i][0]));
        acc[i][1] = _mm256_fmadd_ps(xh, h1, _mm256_fmadd_ps(xl, l1, acc[i][1]));
      }
    } else {
      const __m256 f0 = _mm256_castsi256_ps(w0), f1 = _mm256_castsi256_ps(w1);
#pragma GCC unroll 16
      for (int i = 0; i < P; ++i) {
        const __m256 x = _mm256_broadcast_ss(reinterpret_cast<const float*>(p + i * cu));
        acc[i][0] = _mm256_fmadd_ps(x, f0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(x, f1, acc[i][1]);
      }
    }
  }
  const int64_t c0 = ob * kBsBlock, lanes = std::min(kBsBlock, a.cout - c0);
  alignas(32) float bias[kBsBlock] = {};
  if (a.bias != nullptr) std::memcpy(bias, a.bias + c0, sizeof(float) * lanes);
  const __m256 b0 = _mm256_load_ps(bias), b1 = _mm256_load_ps(bias + 8);
  for (int i = 0; i < P; ++i) {
    if (out_pix[i] < 0) continue;
    __m256 v[2] = {_mm256_add_ps(acc[i][0], b0), _mm256_add_ps(acc[i][1], b1)};
    if (a.silu) {
      for (int h = 0; h < 2; ++h) {
        v[h] = silu_avx2(v[h]);
      }
    }
    alignas(32) float tmp[kBsBlock];
    _mm256_store_ps(tmp, v[0]);
    _mm256_store_ps(tmp + 8, v[1]);
    const int64_t at = out_pix[i] * a.cout + c0;
    if (kBf16) {
      uint16_t* o = static_cast<uint16_t*>(a.output) + at;
      for (int64_t l = 0; l < lanes; ++l) o[l] = bs_float_to_bf16(tmp[l]);
    } else {
      std::memcpy(static_cast<float*>(a.output) + at, tmp, sizeof(float) * lanes);
    }
  }
}

// ---------------------------------------------------------------------------------------------- AVX-512
// fp32 -> bf16 bits in the low half of each lane: round to nearest even in integer arithmetic (bs_float_to_bf16),
// NaN -> quiet NaN.
SPARSEYOLO_BS_AVX512_INLINE __m256i bs_to_bf16_avx512(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// Bias, SiLU and the store of one tile (all AVX-512 paths: the same rounding to bf16 on every one). Four pixels at
// a time: SiLU (silu_avx512) is a 16-deep dependent chain per vector, and four independent chains keep the FMA
// pipes busy (one at a time, the epilogue cost ~40 cycles per vector, as much as the MACs of a 3x3 layer with
// Cin = 64).
template <int P>
SPARSEYOLO_BS_AVX512_INLINE void bs_store_avx512(const BsArgs& a, const int64_t* out_pix, int64_t ob, __m512* acc) {
  static_assert(P % 4 == 0, "pixel tiles come in fours");
  const int64_t c0 = ob * kBsBlock, lanes = std::min(kBsBlock, a.cout - c0);
  const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1);
  const __m512 bias = a.bias != nullptr ? _mm512_maskz_loadu_ps(mask, a.bias + c0) : _mm512_setzero_ps();
  for (int i0 = 0; i0 < P; i0 += 4) {
    __m512 v[4];
    for (int j = 0; j < 4; ++j) v[j] = _mm512_add_ps(acc[i0 + j], bias);
    if (a.silu) {
      for (int j = 0; j < 4; ++j) v[j] = silu_avx512(v[j]);
    }
    for (int j = 0; j < 4; ++j) {
      if (out_pix[i0 + j] < 0) continue;
      const int64_t at = out_pix[i0 + j] * a.cout + c0;
      if (a.g.bf16) {
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(a.output) + at, mask, bs_to_bf16_avx512(v[j]));
      } else {
        _mm512_mask_storeu_ps(static_cast<float*>(a.output) + at, mask, v[j]);
      }
    }
  }
}

// The bf16-output store of the AVX-512 BF16 and AMX paths: the same epilogue at bf16's precision, not fp32's.
// SiLU from exp_for_bf16_avx512 and a bare rcp14 (together ~1e-4 relative, against bf16's 2e-3 half ulp), and the
// conversion in one vcvtneps2bf16 (round to nearest even, NaN -> quiet NaN, as bs_float_to_bf16; fp32 denormals,
// below 1.2e-38, become zero). Measured on the AMX machine: SiLU + conversion were ~35% of a 75%-tile-sparse
// layer's time with the fp32-grade epilogue.
SPARSEYOLO_BS_AVX512BF16_INLINE __m512 bs_silu_for_bf16_avx512(__m512 v) {
  const __m512 den = _mm512_add_ps(_mm512_set1_ps(1.f), exp_for_bf16_avx512(_mm512_sub_ps(_mm512_setzero_ps(), v)));
  return _mm512_mul_ps(v, _mm512_rcp14_ps(den));
}

template <int P>
SPARSEYOLO_BS_AVX512BF16_INLINE void bs_store_bf16_avx512bf16(const BsArgs& a, const int64_t* out_pix, int64_t ob,
                                                               __m512* acc) {
  static_assert(P % 4 == 0, "pixel tiles come in fours");
  const int64_t c0 = ob * kBsBlock, lanes = std::min(kBsBlock, a.cout - c0);
  const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1);
  const __m512 bias = a.bias != nullptr ? _mm512_maskz_loadu_ps(mask, a.bias + c0) : _mm512_setzero_ps();
  uint16_t* out = static_cast<uint16_t*>(a.output) + c0;
  for (int i0 = 0; i0 < P; i0 += 4) {
    __m512 v[4];
    for (int j = 0; j < 4; ++j) v[j] = _mm512_add_ps(acc[i0 + j], bias);
    if (a.silu) {
      for (int j = 0; j < 4; ++j) v[j] = bs_silu_for_bf16_avx512(v[j]);
    }
    for (int j = 0; j < 4; ++j) {
      if (out_pix[i0 + j] < 0) continue;
      _mm256_mask_storeu_epi16(out + out_pix[i0 + j] * a.cout, mask,
                               reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v[j])));
    }
  }
}

// fp32 units (kBf16 false) or bf16 pairs computed as two fp32 FMAs (CPUs without AVX-512 BF16).
template <int P, bool kBf16>
SPARSEYOLO_BS_AVX512 void bs_tile_avx512(const BsArgs& a, const uint32_t* in, const int64_t* out_pix, int64_t ob) {
  __m512 acc[P];
  for (int i = 0; i < P; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t cu = a.g.cu;
  const uint32_t* w = a.weight + a.block_ptr[ob] * kBsBlock;
  for (int64_t u = a.block_ptr[ob]; u < a.block_ptr[ob + 1]; ++u, w += kBsBlock) {
    const uint32_t* p = in + a.offsets[u];
    const __m512i wv = _mm512_loadu_si512(w);
    if (kBf16) {
      const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
      const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(wv, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
#pragma GCC unroll 32
      for (int i = 0; i < P; ++i) {
        const uint32_t x = p[i * cu];
        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(bs_bf16_to_float(x & 0xffff)), lo, acc[i]);
        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(bs_bf16_to_float(x >> 16)), hi, acc[i]);
      }
    } else {
      const __m512 wf = _mm512_castsi512_ps(wv);
#pragma GCC unroll 32
      for (int i = 0; i < P; ++i) {
        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*reinterpret_cast<const float*>(p + i * cu)), wf, acc[i]);
      }
    }
  }
  bs_store_avx512<P>(a, out_pix, ob, acc);
}

// bf16 pairs on vdpbf16ps: per lane, acc += x.lo * w.lo + x.hi * w.hi, one instruction per pixel and unit.
template <int P>
SPARSEYOLO_BS_AVX512BF16 void bs_tile_avx512bf16(const BsArgs& a, const uint32_t* in, const int64_t* out_pix,
                                                 int64_t ob) {
  __m512 acc[P];
  for (int i = 0; i < P; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t cu = a.g.cu;
  const uint32_t* w = a.weight + a.block_ptr[ob] * kBsBlock;
  for (int64_t u = a.block_ptr[ob]; u < a.block_ptr[ob + 1]; ++u, w += kBsBlock) {
    const uint32_t* p = in + a.offsets[u];
    const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w));
#pragma GCC unroll 32
    for (int i = 0; i < P; ++i) {
      const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(p[i * cu])));
      acc[i] = _mm512_dpbf16_ps(acc[i], x, wv);
    }
  }
  bs_store_bf16_avx512bf16<P>(a, out_pix, ob, acc);
}

// Blocks ob and ob + 1 (same units, see bs_twin_starts) over P pixels, as two halves of P/2: per unit two weight
// vectors and P/2 broadcasts for P FMAs, in 2 x P/2 accumulators. fp32 units.
template <int P>
SPARSEYOLO_BS_AVX512 void bs_twin_avx512(const BsArgs& a, const uint32_t* in, const int64_t* out_pix, int64_t ob) {
  constexpr int H = P / 2;
  const int64_t cu = a.g.cu, u0 = a.block_ptr[ob], n = a.block_ptr[ob + 1] - u0;
  const float* w0 = reinterpret_cast<const float*>(a.weight + u0 * kBsBlock);
  const float* w1 = reinterpret_cast<const float*>(a.weight + a.block_ptr[ob + 1] * kBsBlock);
  for (int h = 0; h < 2; ++h) {
    __m512 acc0[H], acc1[H];
    for (int i = 0; i < H; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    const float* pin = reinterpret_cast<const float*>(in + h * H * cu);
    for (int64_t k = 0; k < n; ++k) {
      const float* p = pin + a.offsets[u0 + k];
      const __m512 f0 = _mm512_loadu_ps(w0 + k * kBsBlock), f1 = _mm512_loadu_ps(w1 + k * kBsBlock);
#pragma GCC unroll 16
      for (int i = 0; i < H; ++i) {
        const __m512 x = _mm512_set1_ps(p[i * cu]);
        acc0[i] = _mm512_fmadd_ps(x, f0, acc0[i]);
        acc1[i] = _mm512_fmadd_ps(x, f1, acc1[i]);
      }
    }
    bs_store_avx512<H>(a, out_pix + h * H, ob, acc0);
    bs_store_avx512<H>(a, out_pix + h * H, ob + 1, acc1);
  }
}

// The same for bf16 pairs on vdpbf16ps.
template <int P>
SPARSEYOLO_BS_AVX512BF16 void bs_twin_avx512bf16(const BsArgs& a, const uint32_t* in, const int64_t* out_pix,
                                                 int64_t ob) {
  constexpr int H = P / 2;
  const int64_t cu = a.g.cu, u0 = a.block_ptr[ob], n = a.block_ptr[ob + 1] - u0;
  const uint32_t* w0 = a.weight + u0 * kBsBlock;
  const uint32_t* w1 = a.weight + a.block_ptr[ob + 1] * kBsBlock;
  for (int h = 0; h < 2; ++h) {
    __m512 acc0[H], acc1[H];
    for (int i = 0; i < H; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    const uint32_t* pin = in + h * H * cu;
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t* p = pin + a.offsets[u0 + k];
      const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w0 + k * kBsBlock));
      const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w1 + k * kBsBlock));
#pragma GCC unroll 16
      for (int i = 0; i < H; ++i) {
        const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(p[i * cu])));
        acc0[i] = _mm512_dpbf16_ps(acc0[i], x, b0);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], x, b1);
      }
    }
    bs_store_bf16_avx512bf16<H>(a, out_pix + h * H, ob, acc0);
    bs_store_bf16_avx512bf16<H>(a, out_pix + h * H, ob + 1, acc1);
  }
}

// --------------------------------------------------------------------------------------- AMX (experimental)
// One call: 64 wide pixels (4 A tiles of 16 pixel rows at the pixel stride) x one block of 16 output channels
// (4 C tiles of 16 x 16 fp32); per tiles32 unit, one B tile (16 pairs x 16 channels, 1 KiB, the unit's panel in
// VNNI order) and 4 tdpbf16ps. bs_run configures the tiles once per run of calls (bs_amx_begin) and releases them
// at its end (bs_amx_end): oneDNN may configure the same thread's tiles differently between our ops, never within
// one bs_run.
struct alignas(64) BsTileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

SPARSEYOLO_BS_AMX void bs_amx_begin() {
  BsTileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  // GCC 12 does not see ldtilecfg read its operand: in this small function it dropped the stores above as dead and
  // configured zero-sized tiles (SIGILL at the first tile instruction). The barrier keeps them.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Back to the initial tile state: a thread that keeps AMX state in use carries ~11 KiB more in every signal frame
// and context switch (and a signal delivered on a small sigaltstack cannot be), so nothing outlives a bs_run.
SPARSEYOLO_BS_AMX void bs_amx_end() { _tile_release(); }

SPARSEYOLO_BS_AMX void bs_tile_amx(const BsArgs& a, const uint32_t* in, const int64_t* out_pix, int64_t ob) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t stride = a.g.cu * 4;  // bytes from one pixel to the next
  for (int64_t u = a.block_ptr[ob]; u < a.block_ptr[ob + 1]; ++u) {
    const char* p = reinterpret_cast<const char*>(in + a.offsets[u]);
    _tile_loadd(6, a.weight + u * 256, 64);
    _tile_loadd(4, p, stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(5, p + 16 * stride, stride);
    _tile_dpbf16ps(1, 5, 6);
    _tile_loadd(4, p + 32 * stride, stride);
    _tile_dpbf16ps(2, 4, 6);
    _tile_loadd(5, p + 48 * stride, stride);
    _tile_dpbf16ps(3, 5, 6);
  }
  alignas(64) float c[64 * kBsBlock];
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 16 * kBsBlock, 64);
  _tile_stored(2, c + 32 * kBsBlock, 64);
  _tile_stored(3, c + 48 * kBsBlock, 64);
  __m512 acc[64];
  for (int i = 0; i < 64; ++i) acc[i] = _mm512_load_ps(c + i * kBsBlock);
  bs_store_bf16_avx512bf16<64>(a, out_pix, ob, acc);
}
#endif  // SPARSEYOLO_BS_X86

using BsTileFn = void (*)(const BsArgs&, const uint32_t*, const int64_t*, int64_t);

// The tile function and its pixel count for an ISA and a dtype. P: accumulators that fit the register file next to
// the weight vector(s) (32 zmm: 24 tiles; 16 ymm: 6 tiles of 2 vectors, 4 for the bf16 emulation's 4 weights).
// gather kTiles32 on kAmx takes the AMX tile; every other call gets units of one pair (tiles32 expanded by the caller).
// *twin: the function for two blocks with the same units over the same `tile` pixels, or null where there is none.
inline BsTileFn bs_select(CpuIsa isa, bool bf16, BsGather gather, int* tile, BsTileFn* twin = nullptr) {
  if (twin != nullptr) *twin = nullptr;
#if defined(SPARSEYOLO_BS_X86)
  if (isa == CpuIsa::kAmx && gather == BsGather::kTiles32) {
    *tile = 64;
    return bs_tile_amx;
  }
  if (isa >= CpuIsa::kAvx512Bf16 && bf16) {
    *tile = 24;
    if (twin != nullptr) *twin = bs_twin_avx512bf16<24>;
    return bs_tile_avx512bf16<24>;
  }
  if (isa >= CpuIsa::kAvx512) {
    if (bf16) {
      *tile = 12;
      return bs_tile_avx512<12, true>;
    }
    *tile = 24;
    if (twin != nullptr) *twin = bs_twin_avx512<24>;
    return bs_tile_avx512<24, false>;
  }
  if (isa == CpuIsa::kAvx2) {
    if (bf16) {
      *tile = 4;
      return bs_tile_avx2<4, true>;
    }
    *tile = 6;
    return bs_tile_avx2<6, false>;
  }
#endif
  (void)isa;
  (void)bf16;
  (void)gather;
  *tile = 8;
  return bs_tile_portable<8>;
}

// Runs wide-pixel tiles [t0, t1) of one image (tile = `tile` pixels) for every output block. `image` is the
// image's buffer (or, direct, its input). Output blocks go in groups whose weights (~256 KiB) stay in L2 while the
// tiles go by. With `twin` (bs_select) and a.twin_start, twin blocks run together (a group never splits them).
inline void bs_run(const BsArgs& a, const uint32_t* image, int64_t t0, int64_t t1, BsTileFn fn, int tile,
                   BsTileFn twin = nullptr) {
  const BsGeometry& g = a.g;
  const int64_t nb = (a.cout + kBsBlock - 1) / kBsBlock, pixels = g.wide_pixels();
  constexpr int64_t kGroupBytes = 256 * 1024;
  const uint8_t* twins = twin != nullptr ? a.twin_start : nullptr;  // null: every block alone
  std::vector<uint32_t> tail;  // direct mode: the last tile's input, padded with zeros
  int64_t out_pix[kBsMaxTile];
#if defined(SPARSEYOLO_BS_X86)
  const bool amx = fn == bs_tile_amx;
  if (amx) bs_amx_begin();
#endif
  for (int64_t b0 = 0; b0 < nb;) {
    int64_t b1 = b0 + 1;
    while (b1 < nb && (a.block_ptr[b1 + 1] - a.block_ptr[b0]) * kBsBlock * 4 <= kGroupBytes) ++b1;
    if (twins != nullptr && twins[b1 - 1]) ++b1;  // b1 - 1 has its twin next
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t q0 = t * tile;
      int64_t oh = q0 / g.wq, ow = q0 % g.wq;  // walked, not divided, per pixel
      for (int i = 0; i < tile; ++i, ++ow) {
        if (ow == g.wq) ow = 0, ++oh;
        out_pix[i] = (q0 + i < pixels && ow < g.wo) ? oh * g.wo + ow : -1;
      }
      const uint32_t* in = image + q0 * g.cu;
      if (g.direct && q0 + tile > pixels) {
        tail.assign(static_cast<size_t>(tile * g.cu), 0u);
        std::memcpy(tail.data(), in, sizeof(uint32_t) * (pixels - q0) * g.cu);
        in = tail.data();
      }
      for (int64_t ob = b0; ob < b1; ++ob) {
        if (twins != nullptr && twins[ob]) {
          twin(a, in, out_pix, ob++);
        } else {
          fn(a, in, out_pix, ob);
        }
      }
    }
    b0 = b1;
  }
#if defined(SPARSEYOLO_BS_X86)
  if (amx) bs_amx_end();
#endif
}

#if defined(SPARSEYOLO_BS_X86)
#undef SPARSEYOLO_BS_AVX2
#undef SPARSEYOLO_BS_AVX2_INLINE
#undef SPARSEYOLO_BS_AVX512
#undef SPARSEYOLO_BS_AVX512_INLINE
#undef SPARSEYOLO_BS_AVX512BF16
#undef SPARSEYOLO_BS_AVX512BF16_INLINE
#undef SPARSEYOLO_BS_AMX
#endif

}  // namespace kernels
}  // namespace sparseyolo

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
