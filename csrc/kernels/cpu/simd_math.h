// Vector math shared by the CPU kernels (sparse_conv2d.h, block_sparse_conv2d.h). Torch-free; each function carries
// its own target attribute, so callers compiled for the baseline ISA may include this header and call them only on
// CPUs that have the ISA (kernels/cpu/cpu_isa.h).
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace sparseyolo {
namespace kernels {

#define SPARSEYOLO_SIMD_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline
#define SPARSEYOLO_SIMD_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma"), always_inline)) inline

// exp(x) for results that end in bfloat16 (8 significant bits; half an ulp is 2^-9 = 2e-3 relative): x clamped to
// [-87.3, 80], degree-4 Taylor polynomial on |r| <= ln2/2 (relative error <= 4.3e-5) and vscalefps for the 2^n.
SPARSEYOLO_SIMD_AVX512_INLINE __m512 exp_for_bf16_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(80.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.f / 24), r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// SiLU, v / (1 + e^-v), in fp32 (relative error ~4e-7 over [-80, 88], measured against double by
// benchmarks/experimental/silu_epilogue.cpp): 16 vector ops where the Cephes-style exp and reciprocal it replaced
// (kept in that benchmark) took 24, 1.35x the throughput there. A conv's epilogue runs it once per output vector
// and its MACs are one FMA per unit, so on a 1x1 layer of 64 input channels pruned 2:4 (32 units) the old SiLU was
// ~40% of the FMA ports' work. Where the ops went:
// - e^-v directly: the sign folded into the log2(e) product and into the reduction (fnmsub), no negation;
// - n = round(-v log2 e) by the 1.5 * 2^23 shifter (one fmadd, one sub) instead of a multiply and vrndscaleps
//   (two uops on Intel);
// - one-constant Cody-Waite reduction: ln 2 rounded to fp32 errs by 2e-9, |n| <= 127, so r is off by < 3e-7;
// - a degree-5 minimax polynomial on |r| <= ln2 / 2 (7.5e-8 in exact arithmetic) in plain Horner form;
// - 2^n by vscalefps instead of an integer convert, add, shift and multiply.
// v is clamped to [-80, 86]: no denormal reaches vscalefps's result or rcp14 (each costs a microcode assist on
// Intel), and what the clamp changes is below fp32's resolution or 1e-33 (v > 86: e^-v < 4.5e-38, so SiLU(v) = v in
// fp32; v < -80: the result is v / (1 + e^80), 1.8e-35 |v|, where SiLU(v) is smaller still). The reciprocal is
// rcp14 refined by one Newton step (~1e-7): a zmm division costs as much as the rest.
SPARSEYOLO_SIMD_AVX512_INLINE __m512 silu_avx512(__m512 v) {
  const __m512 vc = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-80.f)), _mm512_set1_ps(86.f));
  const __m512 shifter = _mm512_set1_ps(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(vc, _mm512_set1_ps(-1.44269504088896341f), shifter), shifter);
  const __m512 r = _mm512_fnmsub_ps(n, _mm512_set1_ps(0.693147180559945f), vc);  // -v - n ln 2
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(8.29765201e-3f), r, _mm512_set1_ps(4.19153832e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66675746e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.99988943e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.99999702e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.00000012f));
  const __m512 den = _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.f));
  __m512 inv = _mm512_rcp14_ps(den);
  inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(den, inv, _mm512_set1_ps(2.f)));
  return _mm512_mul_ps(v, inv);
}

// silu_avx512 on AVX2: the same reduction and polynomial; 2^n from the shifter's integer bits (n sits in the low
// bits of n + 1.5 * 2^23, so shifting them up by 23 gives n in the exponent field) and a multiply, as AVX2 has no
// vscalefps; the division replaced by rcp (12 bits) and one Newton step.
SPARSEYOLO_SIMD_AVX2_INLINE __m256 silu_avx2(__m256 v) {
  const __m256 vc = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-80.f)), _mm256_set1_ps(86.f));
  const __m256 shifter = _mm256_set1_ps(12582912.f);
  const __m256 t = _mm256_fmadd_ps(vc, _mm256_set1_ps(-1.44269504088896341f), shifter);
  const __m256 n = _mm256_sub_ps(t, shifter);
  const __m256 r = _mm256_fnmsub_ps(n, _mm256_set1_ps(0.693147180559945f), vc);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(8.29765201e-3f), r, _mm256_set1_ps(4.19153832e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66675746e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.99988943e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.99999702e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.00000012f));
  const __m256i pow2n = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23), _mm256_set1_epi32(127 << 23));
  const __m256 den = _mm256_fmadd_ps(p, _mm256_castsi256_ps(pow2n), _mm256_set1_ps(1.f));
  __m256 inv = _mm256_rcp_ps(den);
  inv = _mm256_mul_ps(inv, _mm256_fnmadd_ps(den, inv, _mm256_set1_ps(2.f)));
  return _mm256_mul_ps(v, inv);
}

#undef SPARSEYOLO_SIMD_AVX2_INLINE
#undef SPARSEYOLO_SIMD_AVX512_INLINE

}  // namespace kernels
}  // namespace sparseyolo
#endif
