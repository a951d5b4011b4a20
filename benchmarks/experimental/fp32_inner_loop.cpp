// The fp32 block-sparse kernel's inner loop alone (csrc/kernels/cpu/block_sparse_conv2d.h, bs_tile_avx512 with fp32
// units): 24 pixels x one block of 16 output channels, per unit one weight vector and 24 broadcast-FMAs, against a
// register-only FMA loop (the core's peak). Input and weights stay in cache (one 40x40 image, 8 output blocks reuse
// each input tile), so what it measures is the loop, not memory. Variants of the pixel addressing:
//   strided: pixel i at p[i * cu], cu known at run time (what the kernel does: index registers and an add chain);
//   fixed:   the same with cu a compile-time constant (displacement addressing, no index registers);
//   planar:  the input stored channel-major, pixel i at p[i] (24 pixels of a unit on two cache lines);
//   twin12:  two blocks with the same units (bs_twin_avx512): 12 pixels x 2 weight vectors per unit, twice per tile.
// Build and run (AVX-512 needed; CIN sets the input channels):
//   g++ -O3 -march=x86-64-v4 -DCIN=128 benchmarks/experimental/fp32_inner_loop.cpp -o /tmp/fp32_inner_loop
//   /tmp/fp32_inner_loop
// Prints zmm-FMAs per ns, one thread; on 2026-12-04's Xeon without AMX: peak ~5.5, strided/fixed/planar 3.4-4.2,
// twin12 4.8-5.5.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#ifndef CIN
#define CIN 128
#endif

constexpr int kP = 24;         // pixels per register tile, as in the kernel
constexpr int64_t kBlocks = 8;  // output blocks sharing each input tile

template <int64_t kStride>  // 0: the stride is the run-time argument
__attribute__((noinline)) void tile(const float* in, const float* w, const int32_t* off, int64_t units,
                                    int64_t stride, float* out) {
  __m512 acc[kP];
  for (int i = 0; i < kP; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t s = kStride ? kStride : stride;
  for (int64_t u = 0; u < units; ++u, w += 16) {
    const float* p = in + off[u];
    const __m512 wf = _mm512_loadu_ps(w);
#pragma GCC unroll 32
    for (int i = 0; i < kP; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(p[i * s]), wf, acc[i]);
  }
  for (int i = 0; i < kP; ++i) _mm512_storeu_ps(out + 16 * i, acc[i]);
}

__attribute__((noinline)) void twin_tile(const float* in, const float* w0, const float* w1, const int32_t* off,
                                         int64_t units, int64_t stride, float* out) {
  constexpr int kH = kP / 2;
  for (int h = 0; h < 2; ++h, in += kH * stride) {
    __m512 acc0[kH], acc1[kH];
    for (int i = 0; i < kH; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int64_t u = 0; u < units; ++u) {
      const float* p = in + off[u];
      const __m512 a = _mm512_loadu_ps(w0 + 16 * u), b = _mm512_loadu_ps(w1 + 16 * u);
#pragma GCC unroll 16
      for (int i = 0; i < kH; ++i) {
        const __m512 x = _mm512_set1_ps(p[i * stride]);
        acc0[i] = _mm512_fmadd_ps(x, a, acc0[i]);
        acc1[i] = _mm512_fmadd_ps(x, b, acc1[i]);
      }
    }
    for (int i = 0; i < kH; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_add_ps(acc0[i], acc1[i]));
  }
}

double peak() {
  __m512 a[kP];
  for (int i = 0; i < kP; ++i) a[i] = _mm512_set1_ps(i * 1e-3f);
  __m512 w = _mm512_set1_ps(0.999f);
  const __m512 x = _mm512_set1_ps(1e-4f);
  const int64_t n = 100000000 / kP;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t k = 0; k < n; ++k) {
#pragma GCC unroll 24
    for (int i = 0; i < kP; ++i) a[i] = _mm512_fmadd_ps(a[i], w, x);
    __asm__ volatile("" : "+v"(w));
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  float sum = 0.f;
  for (int i = 0; i < kP; ++i) sum += _mm512_reduce_add_ps(a[i]);
  if (sum == 12345.f) std::printf(" ");  // keep the loop
  return double(n) * kP / ns;
}

int main() {
  const int64_t cin = CIN, wq = 42, pixels = wq * 40, units = cin * 9 / 2;  // 3x3 taps, half the rows (2:4)
  std::vector<float> chlast((pixels + 200) * cin, 0.5f), planar(cin * (pixels + 200), 0.5f);
  std::vector<float> w(kBlocks * units * 16, 0.01f), out(kP * 16);
  std::vector<int32_t> off_cl(units), off_pl(units);
  for (int64_t u = 0; u < units; ++u) {
    const int64_t t = (2 * u) / cin, c = (2 * u) % cin, shift = t % 3 + (t / 3) * wq;  // tap shift on the wide grid
    off_cl[u] = static_cast<int32_t>(shift * cin + c);
    off_pl[u] = static_cast<int32_t>(c * (pixels + 200) + shift);
  }
  const char* names[] = {"strided", "fixed  ", "planar ", "twin12 "};
  for (int rep = 0; rep < 3; ++rep) {
    std::printf("cin %d, peak %.2f |", CIN, peak());
    for (int v = 0; v < 4; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t q = 0; q + kP <= pixels; q += kP) {
        for (int64_t b = 0; b < kBlocks; ++b) {
          const float* wb = w.data() + b * units * 16;
          if (v == 0) tile<0>(chlast.data() + q * cin, wb, off_cl.data(), units, cin, out.data());
          if (v == 1) tile<CIN>(chlast.data() + q * cin, wb, off_cl.data(), units, cin, out.data());
          if (v == 2) tile<1>(planar.data() + q, wb, off_pl.data(), units, 1, out.data());
          if (v == 3 && b % 2 == 0) {
            twin_tile(chlast.data() + q * cin, wb, wb + units * 16, off_cl.data(), units, cin, out.data());
          }
        }
      }
      const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
      std::printf(" %s %.2f", names[v], double(pixels / kP) * kBlocks * units * kP / ns);
    }
    std::printf("  (zmm-FMA/ns, 1 thread)\n");
  }
  return 0;
}
