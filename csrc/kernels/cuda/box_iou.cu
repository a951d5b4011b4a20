// Torch-free CUDA kernel for pairwise box IoU. One thread per output element; the boxes of a block's
// 32-row x 32-column tile are staged in shared memory once and reused 32 times each.
#include "box_iou.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../box_iou.h"

namespace sparseyolo {
namespace kernels {
namespace {

constexpr int kTile = 32;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void box_iou_kernel(const T* __restrict__ a, int64_t n, const T* __restrict__ b, int64_t m,
                               T* __restrict__ out) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t sa[kTile][4];
  __shared__ acc_t sb[kTile][4];
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  // The first 4 rows of threads stage the tile's boxes: thread (tx, ty) loads coordinate ty of box tx.
  if (ty < 4) {
    if (row0 + tx < n) sa[tx][ty] = to_acc(a[(row0 + tx) * 4 + ty]);
    if (col0 + tx < m) sb[tx][ty] = to_acc(b[(col0 + tx) * 4 + ty]);
  }
  __syncthreads();
  const int64_t i = row0 + ty, j = col0 + tx;
  if (i < n && j < m) {
    out[i * m + j] = from_acc<T>(iou_xyxy<acc_t>(sa[ty][0], sa[ty][1], sa[ty][2], sa[ty][3],
                                                 sb[tx][0], sb[tx][1], sb[tx][2], sb[tx][3]));
  }
}

template <typename T>
cudaError_t launch(const void* a, int64_t n, const void* b, int64_t m, void* out, cudaStream_t stream) {
  const dim3 block(kTile, kTile);
  const int64_t gx = (m + kTile - 1) / kTile, gy = (n + kTile - 1) / kTile;
  if (gy > 65535) return cudaErrorInvalidConfiguration;  // grid.y limit: 2M boxes in `a`
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  box_iou_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(a), n, static_cast<const T*>(b), m,
                                                static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t box_iou_cuda(const void* a, int64_t n, const void* b, int64_t m, void* out, DType dtype,
                         cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch<float>(a, n, b, m, out, stream);
    case DType::kFloat64: return launch<double>(a, n, b, m, out, stream);
    case DType::kFloat16: return launch<__half>(a, n, b, m, out, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(a, n, b, m, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kernels
}  // namespace sparseyolo
