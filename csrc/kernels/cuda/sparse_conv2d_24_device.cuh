// Device code of the 2:4 sparse implicit-GEMM convolution on the sparse tensor cores (mma.sp m16n8k32 on sm_80+):
// the primitives, the hardware-proven kernel (tile64), and the host-side dispatch that picks a kernel and its
// launch shape. Weight format and parameters: sparse_conv2d_24.h. Launched by sparse_conv2d_24.cu.
//
// The same source also runs on the host under the SIMT emulator of the C++ tests (tests/cpp/simt_emulator.h,
// which defines SPARSEYOLO_SIMT_EMULATION and its own versions of the primitives below): every thread of a block
// is a fiber, barriers and warp/warpgroup-collective instructions (ldmatrix, mma.sp, wgmma) are emulated from the
// PTX ISA's definitions, cp.async copies land either at once or only at their wait_group, and shared/global
// accesses are bounds-checked. That is how the kernels' indexing and pipelining are tested without a GPU.
//
// Kernels (GEMM view D[Cout, P] = W[Cout, K] * X[K, P], see sparse_conv2d_24.h):
//   kVariantTile64   64 x 128 tile, 4 warps, k-step 32, two cp.async stages for the activations, weights read
//                    from global memory (L1/L2) into registers. The first kernel; checked on an H200.
//   The experimental kernels (big tiles, wgmma: not yet run correctly on a GPU) are in
//   csrc/experimental/kernels/cuda/sparse_conv2d_24_experimental.cuh, compiled only with
//   -DSPARSEYOLO_EXPERIMENTAL_GPU (setup.py: SPARSEYOLO_EXPERIMENTAL_GPU=1; CMake: -DSPARSEYOLO_EXPERIMENTAL_GPU=ON).
//   Without it only kVariantTile64 (and kVariantDefault) launch; the op refuses the others.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

#include "sparse_conv2d_24.h"

#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(SPARSEYOLO_SIMT_EMULATION)
#define SPARSEYOLO_SPCONV24_BODY 1
#endif

namespace sparseyolo {
namespace kernels {
namespace spconv24 {

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

#ifndef SPARSEYOLO_SIMT_EMULATION
// ---- primitives (the emulator provides the same names) ------------------------------------------------------

// The kernels' dynamic shared memory.
#define SPARSEYOLO_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]

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

// 16 / 4 bytes from shared memory.
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v = make_uint4(0, 0, 0, 0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
#endif
  return v;
}
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
#endif
  return v;
}

// The ordered-metadata form (PTX 8.5; our positions are ascending and distinct by construction), which ptxas
// advises for every target: plain `.sp` "is expected to have substantially reduced performance on some future
// architectures".
#define SPARSEYOLO_MMA_SP(TY)                                                                                       \
  asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32." TY "." TY ".f32 "                    \
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"          \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                               \
               : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e))

// d += A(16x32, 2:4 sparse: 16x16 stored + metadata) * B(32x8), fp32 accumulate, sparsity selector 0.
template <typename T>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint4& a, const uint32_t (&b)[4], uint32_t e) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    SPARSEYOLO_MMA_SP("f16");
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma.sp: fp16 or bf16");
    SPARSEYOLO_MMA_SP("bf16");
  }
#endif
}
#undef SPARSEYOLO_MMA_SP

#endif  // !SPARSEYOLO_SIMT_EMULATION

__device__ __forceinline__ float epilogue(float v, float bias, bool silu) {
  v += bias;
  return silu ? v / (1.f + __expf(-v)) : v;
}

// Writes a block's staged [pixel][channel] tile (kBN rows of kBM channels, row stride kBM + 8 halves) to the NHWC
// output: 16-byte stores along Cout, scalar ones where Cout % 8 != 0 (co + 8 <= cout when both are multiples of 8).
template <typename T, int kBM, int kBN, int kThreads>
__device__ __forceinline__ void store_output_tile(const SparseConv24Params& p, const T* tile, int tid, int64_t pix0,
                                                  int cout0, int64_t npix) {
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
    const T* src = tile + col * (kBM + 8) + cc;
    if (vec) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      const int n = min(8, p.cout - co);
      for (int j = 0; j < n; ++j) dst[j] = src[j];
    }
  }
}

// ---- kVariantTile64: 64 x 128 tile, k-step 32, two stages ------------------------------------------------------
//
// Warp (wm, wn) = (w & 1, w >> 1) owns 32 channels (2 row tiles of 16) x 64 pixels (8 column tiles of 8). One
// k-step covers one filter tap (r, s) and 32 input channels:
//   * B (activations): thread t gathers pixel t's 32 channels (4 x 16 bytes) of the shifted input into shared
//     memory with cp.async, zero-filled where the tap falls in the padding or past Cin; two stages, so the gather
//     of step k+1 overlaps the MMAs of step k. Rows are padded to 80 bytes, which makes the ldmatrix reads of the
//     fragments conflict-free (8 rows at 20-word stride hit 8 distinct 4-bank groups).
//   * A (weights): already in fragment order, one 16-byte load + one metadata word per row tile and k-step,
//     straight from global memory (L1/L2 resident: every pixel block reads the same weights), loaded one step
//     ahead into registers.
// Epilogue: bias + activation in fp32, the tile is staged through shared memory and written with 16-byte stores
// along Cout (channels_last output), scalar stores where Cout % 8 != 0 or at the tile's edge.
namespace tile64 {
constexpr int kBM = 64;        // output channels per block
constexpr int kBN = 128;       // output pixels per block (= threads: one pixel gathered per thread)
constexpr int kThreads = 128;
constexpr int kRowBytes = 80;  // 32 channels * 2 bytes + 16 bytes of padding (bank-conflict-free ldmatrix)
constexpr int kStageBytes = kBN * kRowBytes;
constexpr int kSmemBytes = 2 * kStageBytes;
constexpr int kOutStride = kBM + 8;  // halves per staged output row (16-byte aligned, spreads banks)
static_assert(kBN * kOutStride * 2 <= kSmemBytes, "epilogue tile must fit in the operand stages");
}  // namespace tile64

template <typename T>
__global__ void __launch_bounds__(tile64::kThreads) sparse_conv24_tile64(SparseConv24Params p) {
#ifdef SPARSEYOLO_SPCONV24_BODY
  using namespace tile64;
  SPARSEYOLO_DYNAMIC_SMEM(smem);

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
          const int col = wn * 64 + nt * 8 + 2 * t + j;  // pixel within the block
          tile[col * kOutStride + row] = Traits<T>::from_float(epilogue(acc[mt][nt][2 * half + j], bv, p.silu));
        }
      }
    }
  }
  __syncthreads();
  store_output_tile<T, kBM, kBN, kThreads>(p, tile, tid, pix0, cout0, npix);
#endif
}

// ---- dispatch ---------------------------------------------------------------------------------------------

// The kernel of `variant` for `dtype` with its launch shape; `kernel` is null for a bad variant or dtype. grid.x is
// filled from blocks_x by dispatch, once it has checked the limit.
struct Launch {
  void (*kernel)(SparseConv24Params) = nullptr;
  int64_t blocks_x = 0;
  dim3 grid, block;
  int smem_bytes = 0;
  int stages = 0;
};

// Blocks of a bm x bn tile over the whole GEMM (the 1D grids of the big-tile kernels).
inline int64_t tile_count(const SparseConv24Params& p, int bm, int bn) {
  const int64_t npix = static_cast<int64_t>(p.n) * p.ho * p.wo;
  return (npix + bn - 1) / bn * ((p.cout + bm - 1) / bm);
}

}  // namespace spconv24
}  // namespace kernels
}  // namespace sparseyolo

#ifdef SPARSEYOLO_EXPERIMENTAL_GPU
#include "../../experimental/kernels/cuda/sparse_conv2d_24_experimental.cuh"
#endif

namespace sparseyolo {
namespace kernels {
namespace spconv24 {

template <typename T>
inline Launch launch_for(const SparseConv24Params& p, int variant, int max_smem_bytes) {
  const int64_t npix = static_cast<int64_t>(p.n) * p.ho * p.wo;
  Launch l;
  switch (variant) {
    case kVariantTile64:
      l.kernel = sparse_conv24_tile64<T>;
      l.blocks_x = (npix + tile64::kBN - 1) / tile64::kBN;
      l.grid.y = static_cast<unsigned>((p.cout + tile64::kBM - 1) / tile64::kBM);
      l.block = dim3(tile64::kThreads);
      l.smem_bytes = tile64::kSmemBytes;
      l.stages = 2;
      break;
    default:
#ifdef SPARSEYOLO_EXPERIMENTAL_GPU
      l = experimental_launch_for<T>(p, variant, max_smem_bytes);
#endif
      break;
  }
  return l;
}

// Checks the launch limits (grid size, `max_smem_bytes`: the device's opt-in shared memory per block; `arch`: its
// compute capability as 10 * major + minor) and resolves the variant; `launch` is called with the chosen Launch.
// The wgmma variants need sm_90 (cudaErrorNotSupported elsewhere).
template <typename Launcher>
inline cudaError_t dispatch(const SparseConv24Params& p, DType dtype, int max_smem_bytes, int arch,
                            Launcher&& launch) {
  const int64_t npix = static_cast<int64_t>(p.n) * p.ho * p.wo;
  if (npix == 0 || p.cout == 0) return cudaSuccess;
  const int variant = p.variant == kVariantDefault ? kVariantTile64 : p.variant;
  if (is_wgmma_variant(variant) && arch != 90) return cudaErrorNotSupported;
  Launch l;
  switch (dtype) {
    case DType::kFloat16: l = launch_for<__half>(p, variant, max_smem_bytes); break;
    case DType::kBFloat16: l = launch_for<__nv_bfloat16>(p, variant, max_smem_bytes); break;
    default: return cudaErrorInvalidValue;
  }
  if (l.kernel == nullptr) return cudaErrorInvalidValue;
  if (l.blocks_x > 0x7fffffff || l.smem_bytes > max_smem_bytes) return cudaErrorInvalidConfiguration;
  l.grid.x = static_cast<unsigned>(l.blocks_x);
  return launch(l);
}

}  // namespace spconv24
}  // namespace kernels
}  // namespace sparseyolo
