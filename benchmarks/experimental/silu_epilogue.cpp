// The fp32 SiLU of the CPU conv epilogue (csrc/kernels/cpu/simd_math.h: silu_avx512, silu_avx2) against the form it
// replaced on 2026-12-05 (a Cephes-style exp of -v, degree 6 with two-constant reduction, then on AVX-512 rcp14 and
// a Newton step, on AVX2 a division; kept below as the `before_*` functions): accuracy against double over a sweep
// of inputs, and throughput with four independent vectors in flight, as the kernel's store runs it.
// Build and run (AVX-512 needed):
//   g++ -O3 -march=x86-64-v4 -I csrc benchmarks/experimental/silu_epilogue.cpp -o /tmp/silu_epilogue
//   /tmp/silu_epilogue
// Prints the largest relative error and ns per vector of each, one thread.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/cpu/simd_math.h"

namespace {

__m512 before_exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(80.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.3981999507e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

__m512 before_silu_avx512(__m512 v) {
  const __m512 den = _mm512_add_ps(_mm512_set1_ps(1.f), before_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), v)));
  __m512 r = _mm512_rcp14_ps(den);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(2.f)));
  return _mm512_mul_ps(v, r);
}

__m256 before_exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.3981999507e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__m256 before_silu_avx2(__m256 v) {
  return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.f), before_exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), v))));
}

// Vector of W floats: load, store and the SiLU under test.
struct Zmm {
  static constexpr int W = 16;
  using V = __m512;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
};
struct Ymm {
  static constexpr int W = 8;
  using V = __m256;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};

template <class R, class F>
double max_rel_error(F f, float lo, float hi, int n) {
  double worst = 0;
  float x[R::W], y[R::W];
  for (int i = 0; i < n; i += R::W) {
    for (int l = 0; l < R::W; ++l) x[l] = lo + (hi - lo) * static_cast<float>(i + l) / static_cast<float>(n);
    R::store(y, f(R::load(x)));
    for (int l = 0; l < R::W; ++l) {
      const double v = x[l], ref = v / (1.0 + std::exp(-v));
      if (std::fabs(ref) < 1e-30) continue;
      worst = std::max(worst, std::fabs((y[l] - ref) / ref));
    }
  }
  return worst;
}

template <class R, class F>
__attribute__((noinline)) double ns_per_vector(F f, const std::vector<float>& x, std::vector<float>& y) {
  const int n = static_cast<int>(x.size()), reps = 4000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    for (int i = 0; i < n; i += 4 * R::W) {  // four independent vectors, as bs_store_avx512
      typename R::V v[4];
      for (int j = 0; j < 4; ++j) v[j] = f(R::load(&x[i + R::W * j]));
      for (int j = 0; j < 4; ++j) R::store(&y[i + R::W * j], v[j]);
    }
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  return ns / (static_cast<double>(reps) * n / R::W);
}

template <class R, class F0, class F1>
void compare(const char* isa, F0 before, F1 after) {
  printf("%s: max relative error against double, v in [-80, 88] / [-8, 8]\n", isa);
  printf("  before %.2e / %.2e\n", max_rel_error<R>(before, -80.f, 88.f, 1 << 22),
         max_rel_error<R>(before, -8.f, 8.f, 1 << 22));
  printf("  after  %.2e / %.2e\n", max_rel_error<R>(after, -80.f, 88.f, 1 << 22),
         max_rel_error<R>(after, -8.f, 8.f, 1 << 22));
  std::vector<float> x(4096), y(4096);
  for (size_t i = 0; i < x.size(); ++i) x[i] = -10.f + 20.f * static_cast<float>(i) / static_cast<float>(x.size());
  double b = 1e9, a = 1e9;
  for (int round = 0; round < 5; ++round) {
    b = std::min(b, ns_per_vector<R>(before, x, y));
    a = std::min(a, ns_per_vector<R>(after, x, y));
  }
  printf("%s: ns per vector, best of 5 interleaved rounds: before %.3f, after %.3f (%.2fx)\n", isa, b, a, b / a);
}

}  // namespace

int main() {
  compare<Zmm>("AVX-512", [](__m512 v) { return before_silu_avx512(v); },
               [](__m512 v) { return sparseyolo::kernels::silu_avx512(v); });
  compare<Ymm>("AVX2", [](__m256 v) { return before_silu_avx2(v); },
               [](__m256 v) { return sparseyolo::kernels::silu_avx2(v); });
  return 0;
}
