// 2:4 sparse implicit-GEMM convolution on the sparse tensor cores (mma.sp m16n8k32, sm_80+), NHWC activations,
// weights 2:4-compressed along Cin in mma.sp fragment order (format in sparse_conv2d_24.h), fused bias + SiLU.
//
// Tiling: a block of 4 warps computes 64 output channels x 128 output pixels; warp (wm, wn) = (w & 1, w >> 1)
// owns 32 channels (2 row tiles of 16) x 64 pixels (8 column tiles of 8). One k-step covers one filter tap
// (r, s) and 32 input channels:
//   * B (activations): thread t gathers pixel t's 32 channels (4 x 16 bytes) of the shifted input into
//     shared memory with cp.async, zero-filled where the tap falls in the padding or past Cin; two stages, so
//     the gather of step k+1 overlaps the MMAs of step k. Rows are padded to 80 bytes, which makes the
//     ldmatrix reads of the fragments conflict-free (8 rows at 20-word stride hit 8 distinct 4-bank groups).
//   * A (weights): already in fragment order, one 16-byte load + one metadata word per row tile and k-step,
//     straight from global memory (L1/L2 resident: every pixel block reads the same weights), loaded one step
//     ahead into registers.
// Epilogue: bias + activation in fp32, the tile is staged through shared memory and written with 16-byte
// stores along Cout (channels_last output), scalar stores where Cout % 8 != 0 or at the tile's edge.
#include "sparse_conv2d_24.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sparseyolo {
namespace kernels {
namespace {

constexpr int kBM = 64;        // output channels per block
constexpr int kBN = 128;       // output pixels per block (= threads: one pixel gathered per thread)
constexpr int kThreads = 128;
constexpr int kRowBytes = 80;  // 32 channels * 2 bytes + 16 bytes of padding (bank-conflict-free ldmatrix)
constexpr int kStageBytes = kBN * kRowBytes;
constexpr int kOutStride = kBM + 8;  // halves per staged output row (16-byte aligned, spreads banks)
static_assert(kBN * kOutStride * 2 <= 2 * kStageBytes, "epilogue tile must fit in the operand stages");

template <typename T>
struct Traits;
template <>
struct Traits<__half> {
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Traits<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared copy; src_bytes = 0 writes zeros (padding, channels past Cin, pixels past P).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices: lane l gives the row address of matrix l/8, row l%8; register j of lane (g, t) gets
// row g, columns 2t, 2t+1 of matrix j. With matrix j = channels 8j..8j+7 of 8 pixels that is exactly the B
// fragment of m16n8k32 (b_{2j}, b_{2j+1}: k = 2t + 8j, +1; n = g).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// d += A(16x32, 2:4 sparse: 16x16 stored + metadata) * B(32x8), fp32 accumulate, sparsity selector 0.
template <typename T>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint4& a, const uint32_t (&b)[4], uint32_t e);

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// sm_90+: the ordered-metadata form (our positions are ascending and distinct by construction).
#define SPARSEYOLO_MMA_SP "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32"
#else
#define SPARSEYOLO_MMA_SP "mma.sp.sync.aligned.m16n8k32.row.col.f32"
#endif

template <>
__device__ __forceinline__ void mma_sp_16832<__half>(float (&d)[4], const uint4& a, const uint32_t (&b)[4],
                                                    uint32_t e) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(SPARSEYOLO_MMA_SP ".f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, "
               "{%0, %1, %2, %3}, %12, 0x0;\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
#endif
}
template <>
__device__ __forceinline__ void mma_sp_16832<__nv_bfloat16>(float (&d)[4], const uint4& a, const uint32_t (&b)[4],
                                                           uint32_t e) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(SPARSEYOLO_MMA_SP ".bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, "
               "{%0, %1, %2, %3}, %12, 0x0;\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
#endif
}
#undef SPARSEYOLO_MMA_SP

template <typename T>
__global__ void __launch_bounds__(kThreads) sparse_conv24_kernel(SparseConv24Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ __align__(128) unsigned char smem[2 * kStageBytes];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp & 1, wn = warp >> 1;
  const int64_t npix = static_cast<int64_t>(p.n) * p.ho * p.wo;
  const int64_t pix0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int cout0 = blockIdx.y * kBM;
  const int cin_blocks = (p.cin + 31) >> 5;
  const int num_k = p.kh * p.kw * cin_blocks;

  // This thread's gather pixel.
  const int64_t my_pix = pix0 + tid;
  const bool pix_ok = my_pix < npix;
  int img = 0, hi0 = 0, wi0 = 0;
  if (pix_ok) {
    const int64_t hw = static_cast<int64_t>(p.ho) * p.wo;
    img = static_cast<int>(my_pix / hw);
    const int rem = static_cast<int>(my_pix - static_cast<int64_t>(img) * hw);
    hi0 = (rem / p.wo) * p.stride_h - p.pad_h;
    wi0 = (rem % p.wo) * p.stride_w - p.pad_w;
  }
  const T* x = static_cast<const T*>(p.input);
  const uint32_t smem_base = smem_addr(smem);

  auto gather = [&](int kb, int stage) {
    const int tap = kb / cin_blocks, cb = kb - tap * cin_blocks;
    const int r = tap / p.kw, s = tap - r * p.kw;
    const int hi = hi0 + r, wi = wi0 + s;
    const bool ok = pix_ok && hi >= 0 && hi < p.h && wi >= 0 && wi < p.w;
    const T* row = x + ((static_cast<int64_t>(img) * p.h + hi) * p.w + wi) * p.cin;
    const uint32_t dst = smem_base + stage * kStageBytes + tid * kRowBytes;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int c = cb * 32 + q * 8;
      const bool in = ok && c < p.cin;  // Cin % 8 == 0: a 16-byte chunk is all in or all out
      cp_async16(dst + q * 16, in ? static_cast<const void*>(row + c) : static_cast<const void*>(x), in ? 16 : 0);
    }
    cp_async_commit();
  };

  // Weight fragments: row tile (cout0 + wm*32)/16 + mt.
  const int mt0 = (cout0 >> 4) + wm * 2;
  const uint4* vals = static_cast<const uint4*>(p.values);
  auto load_a = [&](int kb, uint4 (&a)[2], uint32_t (&e)[2]) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int64_t frag = static_cast<int64_t>(mt0 + mt) * num_k + kb;
      a[mt] = __ldg(vals + frag * 32 + lane);
      e[mt] = __ldg(p.meta + frag * 16 + g * 2 + (t & 1));  // lanes t = 2, 3 are not read (selector 0)
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;

  uint4 a_cur[2], a_next[2];
  uint32_t e_cur[2], e_next[2];
  gather(0, 0);
  load_a(0, a_cur, e_cur);

  // ldmatrix row address of this lane within a stage: pixel wn*64 + nt*8 + (lane & 7), channels 8*(lane >> 3).
  const uint32_t ld_off = (wn * 64 + (lane & 7)) * kRowBytes + (lane >> 3) * 16;

  for (int kb = 0; kb < num_k; ++kb) {
    const int stage = kb & 1;
    if (kb + 1 < num_k) {
      gather(kb + 1, stage ^ 1);
      load_a(kb + 1, a_next, e_next);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint32_t base = smem_base + stage * kStageBytes + ld_off;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      uint32_t b[4];
      ldmatrix_x4(b, base + nt * 8 * kRowBytes);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) mma_sp_16832<T>(acc[mt][nt], a_cur[mt], b, e_cur[mt]);
    }
    __syncthreads();  // the stage is overwritten by the gather two steps on
    if (kb + 1 < num_k) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        a_cur[mt] = a_next[mt];
        e_cur[mt] = e_next[mt];
      }
    }
  }

  // Epilogue: stage [pixel][channel] tile in shared memory (all cp.async groups are done, barrier passed).
  T* tile = reinterpret_cast<T*>(smem);
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = wm * 32 + mt * 16 + g + 8 * half;  // channel within the block
      const int co = cout0 + row;
      const float bv = (p.bias != nullptr && co < p.cout) ? p.bias[co] : 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float v = acc[mt][nt][2 * half + j] + bv;
          if (p.silu) v = v / (1.f + __expf(-v));
          const int col = wn * 64 + nt * 8 + 2 * t + j;  // pixel within the block
          tile[col * kOutStride + row] = Traits<T>::from_float(v);
        }
      }
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(p.output);
  const bool vec = (p.cout & 7) == 0;
  constexpr int kChunks = kBN * (kBM / 8);
#pragma unroll 1
  for (int i = tid; i < kChunks; i += kThreads) {
    const int col = i / (kBM / 8), cc = (i % (kBM / 8)) * 8;
    const int64_t pix = pix0 + col;
    const int co = cout0 + cc;
    if (pix >= npix || co >= p.cout) continue;
    T* dst = out + pix * p.cout + co;
    const T* src = tile + col * kOutStride + cc;
    if (vec) {  // co + 8 <= cout since both are multiples of 8
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      const int n = min(8, p.cout - co);
      for (int j = 0; j < n; ++j) dst[j] = src[j];
    }
  }
#endif
}

}  // namespace

bool sparse_conv24_supported(int device) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}

cudaError_t sparse_conv24_cuda(const SparseConv24Params& p, DType dtype, cudaStream_t stream) {
  const int64_t npix = static_cast<int64_t>(p.n) * p.ho * p.wo;
  if (npix == 0 || p.cout == 0) return cudaSuccess;
  const int64_t bx = (npix + kBN - 1) / kBN;
  if (bx > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>((p.cout + kBM - 1) / kBM));
  switch (dtype) {
    case DType::kFloat16: sparse_conv24_kernel<__half><<<grid, kThreads, 0, stream>>>(p); break;
    case DType::kBFloat16: sparse_conv24_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace sparseyolo
