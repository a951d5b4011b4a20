// One warp, one `mma.sp.m16n8k32` (fp16, fp32 accumulate): checks the fragment and metadata layout that
// kernels/cuda/sparse_conv2d_24.cu and sparseyolo/sparse/mma_sp.py assume (see kernels/cuda/sparse_conv2d_24.h)
// against a host product, and, so that a wrong assumption can be fixed from one device run, tries every
// assignment of the four 16-bit metadata halves (rows g / g+8, dense columns 0-15 / 16-31) to the two metadata
// words of lanes t = 0 and t = 1 and prints which of them give the right product.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda_test_utils.h"
#include "sparse_probe.h"

namespace {

__global__ void mma_sp_once(const uint4* a, const uint4* b, const uint32_t* e, float* d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int lane = threadIdx.x;
  const uint4 av = a[lane], bv = b[lane];
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  // The ordered-metadata form on every target, as in the kernels.
  asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(av.x), "r"(av.y), "r"(av.z), "r"(av.w), "r"(bv.x), "r"(bv.y), "r"(bv.z), "r"(bv.w),
                 "r"(e[lane]));
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = c[i];
#endif
}

}  // namespace

int main() {
  if (!have_cuda_device("cuda_test_mma_sp_layout")) return kSkipped;
  int major = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major < 8) {
    std::printf("cuda_test_mma_sp_layout: GPU older than sm_80, skipped\n");
    return kSkipped;
  }
  const SparseProbe<16> pr(7);
  // Fragments: lane = 4g + t. A: SparseProbe::a_fragment. B element i: k = 2t + (i&1) + 8*(i/2), n = g.
  std::vector<__half> a_h(32 * 8), b_h(32 * 8);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 8; ++i) {
      a_h[lane * 8 + i] = __float2half(pr.a_fragment(0, lane, i));
      b_h[lane * 8 + i] = __float2half(pr.B[2 * t + (i & 1) + 8 * (i / 2)][g]);
    }
  }

  uint4 *a_d, *b_d;
  uint32_t* e_d;
  float* d_d;
  CHECK_CUDA(cudaMalloc(&a_d, 32 * sizeof(uint4)));
  CHECK_CUDA(cudaMalloc(&b_d, 32 * sizeof(uint4)));
  CHECK_CUDA(cudaMalloc(&e_d, 32 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&d_d, 128 * sizeof(float)));
  CHECK_CUDA(cudaMemcpy(a_d, a_h.data(), 32 * sizeof(uint4), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b_d, b_h.data(), 32 * sizeof(uint4), cudaMemcpyHostToDevice));

  // Slots: (lane t = 0, bits 0-15), (t = 0, bits 16-31), (t = 1, bits 0-15), (t = 1, bits 16-31); each gets one of
  // the halves (row g / g+8) x (columns 0-15 / 16-31), numbered 2*row_hi + col_hi. The layout the kernel assumes
  // is {0, 2, 1, 3}: t = 0 has columns 0-15 of rows g (low) and g+8 (high), t = 1 columns 16-31.
  int perm[4] = {0, 1, 2, 3};
  bool assumed_ok = false;
  int matches = 0;
  do {
    std::vector<uint32_t> meta(32);
    for (int lane = 0; lane < 32; ++lane) meta[lane] = pr.meta_word(0, lane, perm);
    CHECK_CUDA(cudaMemcpy(e_d, meta.data(), 32 * sizeof(uint32_t), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemset(d_d, 0xff, 128 * sizeof(float)));  // NaN poison
    mma_sp_once<<<1, 32>>>(a_d, b_d, e_d, d_d);
    CHECK_CUDA(cudaGetLastError());
    float d[128];
    CHECK_CUDA(cudaMemcpy(d, d_d, sizeof(d), cudaMemcpyDeviceToHost));
    double err = 0;
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int i = 0; i < 4; ++i) {
        const float ref = pr.D[g + 8 * (i / 2)][2 * t + (i & 1)];
        err = std::max(err, std::isnan(d[lane * 4 + i]) ? 1e30 : std::fabs(double(d[lane * 4 + i]) - ref));
      }
    }
    const bool ok = err < 1e-3;
    const bool assumed = perm[0] == 0 && perm[1] == 2 && perm[2] == 1 && perm[3] == 3;
    if (ok) ++matches;
    if (ok || assumed)
      std::printf("metadata slots {t0 lo, t0 hi, t1 lo, t1 hi} = {%d, %d, %d, %d} (2*row_hi + col_hi): max err %.3g%s\n",
                  perm[0], perm[1], perm[2], perm[3], err, assumed ? "  <- the layout the kernel assumes" : "");
    if (assumed) assumed_ok = ok;
  } while (std::next_permutation(perm, perm + 4));
  cudaFree(a_d);
  cudaFree(b_d);
  cudaFree(e_d);
  cudaFree(d_d);
  std::printf("cuda_test_mma_sp_layout: %d of 24 metadata layouts give the right product; assumed layout %s\n",
              matches, assumed_ok ? "OK" : "WRONG");
  return assumed_ok ? 0 : 1;
}
