// One warpgroup, one `wgmma.mma_async.sp.m64n8k32` (fp16, fp32 accumulate, A from registers, B from shared
// memory): checks the three layout assumptions of the sm_90a kernel (kernels/cuda/sparse_conv2d_24_device.cuh,
// sparse_conv24_wgmma) against a host product, and, so that a wrong assumption can be fixed from one device run,
// tries the alternatives and prints which combinations give the right product:
//   * A registers: warp w holds rows 16w .. 16w+15 as the mma.sp m16n8k32 fragment (the packed weight order), or
//     the same with registers 1 and 2 swapped (rows g+8 and columns +8 exchanged);
//   * metadata: the 24 assignments of the four 16-bit halves (row g / g+8) x (dense columns 0-15 / 16-31) to the
//     words of lanes t = 0 and t = 1, selector 0 (the kernel assumes the mma.sp one, {0, 2, 1, 3});
//   * B: K-major through a descriptor, either the 128-byte-swizzle layout the kernel uses (rows of 128 bytes,
//     16-byte chunk c of row n at c ^ (n & 7), SBO 1024, 1024-byte aligned) or the unswizzled canonical layout
//     (8 x 16-byte core matrices: LBO = distance between core matrices along K, SBO along N), each with
//     imm-trans-b 0 (the kernel's) and 1: 2 x 24 x 2 x 2 = 192 combinations.
// Its last line, "SPARSEYOLO_WGMMA_FLAGS: -D...", gives the kernel's compile flags (SPARSEYOLO_WGMMA_META_SLOTS,
// _A_SWAP12, _TRANS_B; see sparse_conv2d_24_device.cuh) for a combination that works with the kernel's B layout
// (the assumed one when it works), or "none"; benchmarks/device_check.sh builds with them.
// Exits 77 (ctest: skipped) without a GPU or on anything but sm_90; 0 when the kernel's combination is right.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "../cuda_test_utils.h"
#include "../sparse_probe.h"

namespace {

constexpr int kSmemBytes = 4096;  // 1024 of slack for alignment + B (8 rows x 128 bytes at most)

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint32_t layout) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | static_cast<uint64_t>(lbo >> 4) << 16 |
         static_cast<uint64_t>(sbo >> 4) << 32 | static_cast<uint64_t>(layout) << 62;
}
#endif

// a: [128 threads] uint4, e: [128] metadata words, b: the shared-memory image of B (bytes), d: [128][4] out.
template <int kTransB>
__global__ void wgmma_sp_once(const uint4* a, const uint32_t* e, const unsigned char* b, int b_bytes,
                              uint32_t lbo, uint32_t sbo, uint32_t layout, float* d) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x;
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t base = (raw + 1023) & ~1023u;
  unsigned char* sb = smem + (base - raw);
  for (int i = tid; i < b_bytes; i += 128) sb[i] = b[i];
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const uint4 av = a[tid];
  const uint32_t ev = e[tid];
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  const uint64_t desc = make_desc(base, lbo, sbo, layout);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sp.sync.aligned.m64n8k32.f32.f16.f16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, %9, 0, p, 1, "
      "1, %11;\n}\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(av.x), "r"(av.y), "r"(av.z), "r"(av.w), "l"(desc), "r"(ev), "r"(0), "n"(kTransB));
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  for (int i = 0; i < 4; ++i) d[tid * 4 + i] = c[i];
#endif
}

}  // namespace

int main() {
  if (!have_cuda_device("cuda_test_wgmma_sp_layout")) return kSkipped;
  int major = 0, minor = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  CHECK_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
  if (major != 9 || minor != 0) {
    std::printf("cuda_test_wgmma_sp_layout: not an sm_90 GPU, skipped\n");
    return kSkipped;
  }
  const SparseProbe<64> pr(11);
  // A registers: thread 32w + lane holds the mma.sp fragment of rows 16w .. 16w+15.
  std::vector<__half> a_h(128 * 8);
  for (int tid = 0; tid < 128; ++tid)
    for (int i = 0; i < 8; ++i) a_h[tid * 8 + i] = __float2half(pr.a_fragment(16 * (tid / 32), tid % 32, i));
  // B images. Swizzled: byte (n * 128 + ((k / 8) ^ (n & 7)) * 16 + (k % 8) * 2). Unswizzled canonical K-major:
  // core matrix (n / 8, k / 8) of 8 rows x 16 bytes; 4 of them along K, LBO = 128 bytes apart, SBO unused (N = 8).
  std::vector<unsigned char> b_sw(8 * 128, 0), b_plain(4 * 128, 0);
  for (int n = 0; n < 8; ++n)
    for (int k = 0; k < 32; ++k) {
      const __half v = __float2half(pr.B[k][n]);
      std::memcpy(&b_sw[n * 128 + ((k / 8) ^ (n & 7)) * 16 + (k % 8) * 2], &v, 2);
      std::memcpy(&b_plain[(k / 8) * 128 + n * 16 + (k % 8) * 2], &v, 2);
    }
  struct BLayout {
    const char* name;
    const std::vector<unsigned char>* image;
    uint32_t lbo, sbo, layout;
  } layouts[] = {{"128B swizzle, SBO 1024", &b_sw, 16, 1024, 1}, {"no swizzle, LBO 128", &b_plain, 128, 1024, 0}};

  uint4* a_d;
  uint32_t* e_d;
  unsigned char* b_d;
  float* d_d;
  CHECK_CUDA(cudaMalloc(&a_d, 128 * sizeof(uint4)));
  CHECK_CUDA(cudaMalloc(&e_d, 128 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&b_d, 1024));
  CHECK_CUDA(cudaMalloc(&d_d, 128 * 4 * sizeof(float)));
  // The A alternative: registers 1 and 2 of every thread exchanged.
  std::vector<__half> a_swapped(a_h);
  for (int tid = 0; tid < 128; ++tid)
    for (int i = 0; i < 2; ++i) std::swap(a_swapped[tid * 8 + 2 + i], a_swapped[tid * 8 + 4 + i]);

  bool assumed_ok = false;
  int matches = 0;
  char flags[160] = "";  // the first working combination with the kernel's (swizzled) B layout
  for (int a_alt = 0; a_alt < 2; ++a_alt) {
    for (const BLayout& bl : layouts) {
      CHECK_CUDA(cudaMemcpy(a_d, (a_alt ? a_swapped : a_h).data(), 128 * sizeof(uint4), cudaMemcpyHostToDevice));
      CHECK_CUDA(cudaMemcpy(b_d, bl.image->data(), bl.image->size(), cudaMemcpyHostToDevice));
      for (int trans = 0; trans < 2; ++trans) {
        int perm[4] = {0, 1, 2, 3};
        do {
          std::vector<uint32_t> meta(128);
          for (int tid = 0; tid < 128; ++tid) meta[tid] = pr.meta_word(16 * (tid / 32), tid % 32, perm);
          CHECK_CUDA(cudaMemcpy(e_d, meta.data(), 128 * sizeof(uint32_t), cudaMemcpyHostToDevice));
          CHECK_CUDA(cudaMemset(d_d, 0xff, 128 * 4 * sizeof(float)));  // NaN poison
          if (trans)
            wgmma_sp_once<1><<<1, 128, kSmemBytes>>>(a_d, e_d, b_d, static_cast<int>(bl.image->size()), bl.lbo, bl.sbo,
                                                     bl.layout, d_d);
          else
            wgmma_sp_once<0><<<1, 128, kSmemBytes>>>(a_d, e_d, b_d, static_cast<int>(bl.image->size()), bl.lbo, bl.sbo,
                                                     bl.layout, d_d);
          CHECK_CUDA(cudaGetLastError());
          float d[512];
          CHECK_CUDA(cudaMemcpy(d, d_d, sizeof(d), cudaMemcpyDeviceToHost));
          double err = 0;
          for (int tid = 0; tid < 128; ++tid) {
            const int w = tid / 32, g = (tid % 32) >> 2, t = tid & 3;
            for (int i = 0; i < 4; ++i) {
              const float ref = pr.D[16 * w + g + 8 * (i / 2)][2 * t + (i & 1)];
              const float got = d[tid * 4 + i];
              err = std::max(err, std::isnan(got) ? 1e30 : std::fabs(double(got) - ref));
            }
          }
          const bool ok = err < 1e-3;
          const bool assumed = a_alt == 0 && bl.layout == 1 && trans == 0 && perm[0] == 0 && perm[1] == 2 &&
                               perm[2] == 1 && perm[3] == 3;
          if (ok) ++matches;
          if (ok || assumed)
            std::printf("A %s, B %s, trans-b %d, metadata slots {t0 lo, t0 hi, t1 lo, t1 hi} = {%d, %d, %d, %d}: "
                        "max err %.3g%s\n",
                        a_alt ? "regs 1/2 swapped" : "mma.sp order", bl.name, trans, perm[0], perm[1], perm[2],
                        perm[3], err, assumed ? "  <- the combination the kernel assumes" : "");
          if (assumed) assumed_ok = ok;
          if (ok && bl.layout == 1 && flags[0] == '\0')
            std::snprintf(flags, sizeof(flags),
                          "-DSPARSEYOLO_WGMMA_META_SLOTS=0x%d%d%d%d -DSPARSEYOLO_WGMMA_A_SWAP12=%d "
                          "-DSPARSEYOLO_WGMMA_TRANS_B=%d",
                          perm[0], perm[1], perm[2], perm[3], a_alt, trans);
        } while (std::next_permutation(perm, perm + 4));
      }
    }
  }
  cudaFree(a_d);
  cudaFree(e_d);
  cudaFree(b_d);
  cudaFree(d_d);
  std::printf("cuda_test_wgmma_sp_layout: %d of 192 combinations give the right product; the kernel's %s\n", matches,
              assumed_ok ? "is one of them" : "is NOT");
  if (assumed_ok)  // the defaults
    std::snprintf(flags, sizeof(flags),
                  "-DSPARSEYOLO_WGMMA_META_SLOTS=0x0213 -DSPARSEYOLO_WGMMA_A_SWAP12=0 -DSPARSEYOLO_WGMMA_TRANS_B=0");
  std::printf("SPARSEYOLO_WGMMA_FLAGS: %s\n",
              flags[0] ? flags : "none (no combination works with the kernel's 128-byte-swizzle B layout)");
  return assumed_ok ? 0 : 1;
}
