// Host side of the 2:4 sparse-conv kernel tests (cuda_test_sparse_conv.cpp on a GPU,
// test_sparse_conv24_emulated.cpp under the SIMT emulator): a random 2:4 problem, the weight packed from the
// format's description in kernels/cuda/sparse_conv2d_24.h (an independent implementation of
// sparseyolo/sparse/mma_sp.py), and a double-precision reference convolution to compare the output with.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/sparse_conv2d_24.h"

namespace sparse_conv24_test {

namespace k = sparseyolo::kernels;

struct Case {
  int n, cin, h, w, cout, kh, kw, stride, pad;
  bool silu;
  int ho() const { return (h + 2 * pad - kh) / stride + 1; }
  int wo() const { return (w + 2 * pad - kw) / stride + 1; }
};

template <typename T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}
template <typename T>
float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

// A random problem with values exactly representable in T: x [n][h][w][cin] (NHWC), w [cout][kh][kw][cin] with
// two kept values in every group of four along cin, bias [cout].
template <typename T>
struct Problem {
  Case c;
  std::vector<float> x, w, bias;
  Problem(const Case& c_, std::mt19937& rng) : c(c_) {
    std::normal_distribution<float> normal;
    x.resize(static_cast<size_t>(c.n) * c.h * c.w * c.cin);
    w.resize(static_cast<size_t>(c.cout) * c.kh * c.kw * c.cin);
    bias.resize(c.cout);
    for (auto& v : x) v = to_float(from_float<T>(normal(rng)));
    for (auto& v : bias) v = normal(rng);
    for (size_t i = 0; i < w.size(); i += 4) {
      int a = rng() % 4, b = rng() % 3;
      if (b >= a) ++b;
      for (int j = 0; j < 4; ++j) w[i + j] = (j == a || j == b) ? to_float(from_float<T>(0.2f * normal(rng))) : 0.f;
    }
  }
  std::vector<T> x_t() const {
    std::vector<T> v(x.size());
    for (size_t i = 0; i < x.size(); ++i) v[i] = from_float<T>(x[i]);
    return v;
  }
};

// w: [cout][kh][kw][cin] dense 2:4 -> values/meta in mma.sp fragment order.
template <typename T>
void pack(const std::vector<float>& w, const Case& c, std::vector<T>& values, std::vector<uint32_t>& meta) {
  const int cin_pad = (c.cin + 31) / 32 * 32, mt_count = k::sparse_conv24_row_tiles(c.cout);
  const int kb_count = k::sparse_conv24_k_blocks(c.cin, c.kh, c.kw);
  values.assign(static_cast<size_t>(mt_count) * kb_count * 32 * 8, from_float<T>(0.f));
  meta.assign(static_cast<size_t>(mt_count) * kb_count * 16, 0u);
  auto dense = [&](int row, int kk) -> float {  // A[row][k], k = tap * cin_pad + c
    const int tap = kk / cin_pad, ch = kk % cin_pad;
    if (row >= c.cout || ch >= c.cin) return 0.f;
    return w[((static_cast<size_t>(row) * c.kh * c.kw) + tap) * c.cin + ch];
  };
  for (int mt = 0; mt < mt_count; ++mt)
    for (int kb = 0; kb < kb_count; ++kb) {
      float comp[16][16];
      int code[16][8];
      for (int row = 0; row < 16; ++row)
        for (int grp = 0; grp < 8; ++grp) {
          int pos[2], np = 0;
          for (int j = 0; j < 4 && np < 2; ++j)
            if (dense(mt * 16 + row, kb * 32 + grp * 4 + j) != 0.f) pos[np++] = j;
          for (int j = 0; j < 4 && np < 2; ++j)  // fill with the lowest zero positions
            if (dense(mt * 16 + row, kb * 32 + grp * 4 + j) == 0.f && (np == 0 || pos[0] != j)) pos[np++] = j;
          if (pos[0] > pos[1]) std::swap(pos[0], pos[1]);
          comp[row][2 * grp] = dense(mt * 16 + row, kb * 32 + grp * 4 + pos[0]);
          comp[row][2 * grp + 1] = dense(mt * 16 + row, kb * 32 + grp * 4 + pos[1]);
          code[row][grp] = pos[0] | (pos[1] << 2);
        }
      const size_t frag = static_cast<size_t>(mt) * kb_count + kb;
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 8; ++e) {
          const int g = lane / 4, t = lane % 4, r = e / 2;
          values[(frag * 32 + lane) * 8 + e] = from_float<T>(comp[g + 8 * (r & 1)][2 * t + (e & 1) + 8 * (r >> 1)]);
        }
      for (int g = 0; g < 8; ++g)
        for (int h = 0; h < 2; ++h) {
          uint32_t word = 0;
          for (int j = 0; j < 4; ++j) {
            word |= static_cast<uint32_t>(code[g][4 * h + j]) << (4 * j);
            word |= static_cast<uint32_t>(code[g + 8][4 * h + j]) << (16 + 4 * j);
          }
          meta[frag * 16 + 2 * g + h] = word;
        }
    }
}

// The kernels of this build: tile64 (hardware-proven) and, built with SPARSEYOLO_EXPERIMENTAL_GPU, the
// experimental ones (csrc/experimental/kernels/cuda).
#ifdef SPARSEYOLO_EXPERIMENTAL_GPU
constexpr int kVariants[] = {k::kVariantTile64,      k::kVariantTile128, k::kVariantTile128x256,
                             k::kVariantTile256x128, k::kVariantWgmma,   k::kVariantWgmmaOverlap,
                             k::kVariantWgmma64};
#else
constexpr int kVariants[] = {k::kVariantTile64};
#endif

inline const char* variant_name(int variant) {
  switch (variant) {
    case k::kVariantTile64: return "tile64";
    case k::kVariantTile128: return "tile128";
    case k::kVariantTile128x256: return "tile128x256";
    case k::kVariantTile256x128: return "tile256x128";
    case k::kVariantWgmma: return "wgmma";
    case k::kVariantWgmmaOverlap: return "wgmma_overlap";
    case k::kVariantWgmma64: return "wgmma64";
    default: return "?";
  }
}

// Kernel parameters for `c` (pointers left null).
inline k::SparseConv24Params params(const Case& c, int variant) {
  k::SparseConv24Params p{};
  p.n = c.n; p.h = c.h; p.w = c.w; p.cin = c.cin; p.cout = c.cout; p.kh = c.kh; p.kw = c.kw;
  p.stride_h = p.stride_w = c.stride;
  p.pad_h = p.pad_w = c.pad;
  p.ho = c.ho(); p.wo = c.wo(); p.silu = c.silu;
  p.variant = variant;
  return p;
}

// Compares the kernel's NHWC output with a double-precision convolution; prints one line, returns 0 when the
// relative RMS error is below `tol` and every element is finite (the output was poisoned with NaN before).
template <typename T>
int check(const Problem<T>& pr, const std::vector<T>& out, const char* label, double tol) {
  const Case& c = pr.c;
  const int ho = c.ho(), wo = c.wo();
  double err2 = 0, ref2 = 0;
  int bad = 0;
  for (int b = 0; b < c.n; ++b)
    for (int oy = 0; oy < ho; ++oy)
      for (int ox = 0; ox < wo; ++ox)
        for (int co = 0; co < c.cout; ++co) {
          double acc = pr.bias[co];
          for (int r = 0; r < c.kh; ++r)
            for (int s = 0; s < c.kw; ++s) {
              const int iy = oy * c.stride - c.pad + r, ix = ox * c.stride - c.pad + s;
              if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
              const float* xp = &pr.x[((static_cast<size_t>(b) * c.h + iy) * c.w + ix) * c.cin];
              const float* wp = &pr.w[((static_cast<size_t>(co) * c.kh + r) * c.kw + s) * c.cin];
              for (int ci = 0; ci < c.cin; ++ci) acc += static_cast<double>(xp[ci]) * wp[ci];
            }
          if (c.silu) acc = acc / (1.0 + std::exp(-acc));
          const double got = to_float(out[((static_cast<size_t>(b) * ho + oy) * wo + ox) * c.cout + co]);
          if (!std::isfinite(got)) ++bad;
          err2 += (got - acc) * (got - acc);
          ref2 += acc * acc;
        }
  const double rel = std::sqrt(err2 / (ref2 > 0 ? ref2 : 1));
  const bool ok = bad == 0 && rel < tol;
  std::printf("%s %s n=%d cin=%d cout=%d k=%dx%d s=%d p=%d %dx%d: rel err %.2e, %d non-finite\n", ok ? "ok  " : "FAIL",
              label, c.n, c.cin, c.cout, c.kh, c.kw, c.stride, c.pad, c.h, c.w, rel, bad);
  return ok ? 0 : 1;
}

// Output rounding alone is ~3e-4 relative RMS in fp16 and ~2e-3 in bf16; fp32 accumulation adds far less.
template <typename T>
constexpr double tolerance() {
  return std::is_same_v<T, __half> ? 2e-3 : 1.6e-2;
}

}  // namespace sparse_conv24_test
