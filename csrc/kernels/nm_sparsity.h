// N:M sparsity rules shared by the CPU kernels, the CUDA kernels and the CMake unit tests. Torch-free.
//
// Groups. An N:M group is M elements that share everything but their position along the grouped axis:
//   * nm_mask groups along dim 1 of a contiguous [R, C, S...] tensor (a conv weight [Cout, Cin, kh, kw] or
//     a linear weight [out, in]): group (r, g, s) is elements (r, g*M + j, s) for j < M, stride S apart,
//     i.e. M consecutive input channels at a fixed (cout, kh, kw), the reduction axis of the implicit GEMM.
//   * nm_compress / nm_decompress group along the last, contiguous axis of a [..., K] tensor (the GEMM
//     operand with K fastest): group g of a row is elements g*M .. g*M + M - 1.
//
// Selection rule (the oracle the tests check): keep the N elements of largest |w|. Ties are broken by the
// lower position in the group, so among all C(M, N) patterns the kept one is the first (in lexicographic
// order of sorted positions, as itertools.combinations enumerates them) of those maximising the kept
// magnitude sum |w| . pattern. A NaN magnitude ranks above every number (it is kept, so it stays visible).
// An optional per-element priority (a previous mask) ranks first: elements with priority 1 before those
// with 0, then magnitude, then position.
//
// Compressed format: for each group, the N kept values in increasing position order, and their positions
// (uint8, 0 .. M-1) in the same order. values and indices are [..., K * N / M].
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPARSEYOLO_NM_HD __host__ __device__ __forceinline__
#else
#define SPARSEYOLO_NM_HD inline
#endif

namespace sparseyolo {
namespace kernels {

// Largest group size handled; a kept-set bitmask fits a uint32 and per-group arrays live in registers.
constexpr int kNmMaxM = 16;

template <typename mag_t>
SPARSEYOLO_NM_HD mag_t nm_abs(mag_t v) {
  return v < mag_t(0) ? -v : v;  // NaN stays NaN, -0 compares equal to 0
}

// Strict "ranks before" on magnitudes: NaN above everything, then larger first.
template <typename mag_t>
SPARSEYOLO_NM_HD bool nm_greater(mag_t a, mag_t b) {
  return a > b || (a != a && b == b);
}

// Bit j of the result is set when element j of the group is kept. `prio` may be null.
template <typename mag_t>
SPARSEYOLO_NM_HD uint32_t nm_select(const mag_t* mag, const uint8_t* prio, int n, int m) {
  uint32_t keep = 0;
  for (int j = 0; j < m; ++j) {
    int rank = 0;  // how many elements rank strictly before j
    for (int k = 0; k < m; ++k) {
      if (k == j) continue;
      bool before;
      if (prio != nullptr && prio[k] != prio[j]) {
        before = prio[k] > prio[j];
      } else {
        before = nm_greater(mag[k], mag[j]) || (!nm_greater(mag[j], mag[k]) && k < j);
      }
      rank += before ? 1 : 0;
    }
    if (rank < n) keep |= 1u << j;
  }
  return keep;
}

// nm_mask for one group: elements w[j * stride], j < m; writes mask[j * stride].
template <typename mag_t, typename T, typename ToMag>
SPARSEYOLO_NM_HD void nm_mask_group(const T* w, int64_t stride, int n, int m, bool* mask, ToMag to_mag) {
  mag_t mag[kNmMaxM];
  for (int j = 0; j < m; ++j) mag[j] = nm_abs(to_mag(w[j * stride]));
  const uint32_t keep = nm_select<mag_t>(mag, nullptr, n, m);
  for (int j = 0; j < m; ++j) mask[j * stride] = ((keep >> j) & 1u) != 0;
}

// nm_compress for one contiguous group w[0 .. m): n values and their positions. `prio_mask` may be null.
template <typename mag_t, typename T, typename ToMag>
SPARSEYOLO_NM_HD void nm_compress_group(const T* w, const bool* prio_mask, int n, int m, T* values, uint8_t* idx,
                                        ToMag to_mag) {
  mag_t mag[kNmMaxM];
  uint8_t prio[kNmMaxM];
  for (int j = 0; j < m; ++j) {
    mag[j] = nm_abs(to_mag(w[j]));
    prio[j] = prio_mask != nullptr && prio_mask[j] ? 1 : 0;
  }
  const uint32_t keep = nm_select<mag_t>(mag, prio_mask != nullptr ? prio : nullptr, n, m);
  int t = 0;
  for (int j = 0; j < m; ++j) {
    if ((keep >> j) & 1u) {
      values[t] = w[j];
      idx[t] = static_cast<uint8_t>(j);
      ++t;
    }
  }
}

// nm_decompress for one group: zeros, then the n values at their positions. `U` is an unsigned integer of
// the element's size, so this moves bits and works for any dtype (bool masks included). Positions must
// have been validated (< m).
template <typename U>
SPARSEYOLO_NM_HD void nm_decompress_group(const U* values, const uint8_t* idx, int n, int m, U* out) {
  for (int j = 0; j < m; ++j) out[j] = U(0);
  for (int t = 0; t < n; ++t) out[idx[t]] = values[t];
}

// apply_masks_ rule: element i becomes all-zero bits (+0.0 for floats) where mask[i] is false. A select,
// not a multiply, so inf/NaN weights under a false mask become 0 too.
template <typename U>
SPARSEYOLO_NM_HD void zero_unmasked(U* data, const bool* mask, int64_t i) {
  if (!mask[i]) data[i] = U(0);
}

}  // namespace kernels
}  // namespace sparseyolo
