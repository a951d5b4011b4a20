// Torch-free CUDA kernels for N:M masks, the N:M compressed format and multi-tensor mask application.
// One thread per N:M group (a group is at most 16 elements, its state stays in registers); grid-stride
// loops so any size fits the grid limits.
#include "nm_sparsity.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "../nm_sparsity.h"

namespace sparseyolo {
namespace kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

struct ToMag {
  __device__ __forceinline__ float operator()(float v) const { return v; }
  __device__ __forceinline__ double operator()(double v) const { return v; }
  __device__ __forceinline__ float operator()(__half v) const { return __half2float(v); }
  __device__ __forceinline__ float operator()(__nv_bfloat16 v) const { return __bfloat162float(v); }
};

template <typename T> struct MagType { using type = float; };
template <> struct MagType<double> { using type = double; };

int grid_for(int64_t work) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks)));
}

template <typename T>
__global__ void nm_mask_kernel(const T* __restrict__ w, bool* __restrict__ mask, int64_t rows, int64_t groups,
                               int64_t inner, int n, int m) {
  const int64_t total = rows * groups * inner;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < total; q += int64_t(gridDim.x) * blockDim.x) {
    // inner fastest: neighbouring threads read neighbouring addresses.
    const int64_t s = q % inner;
    const int64_t g = (q / inner) % groups;
    const int64_t r = q / (inner * groups);
    const int64_t base = (r * groups * m + g * m) * inner + s;
    nm_mask_group<typename MagType<T>::type>(w + base, inner, n, m, mask + base, ToMag());
  }
}

template <typename T>
__global__ void nm_compress_kernel(const T* __restrict__ w, const bool* __restrict__ prio, int64_t total_groups,
                                   int n, int m, T* __restrict__ values, uint8_t* __restrict__ idx) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < total_groups;
       q += int64_t(gridDim.x) * blockDim.x) {
    nm_compress_group<typename MagType<T>::type>(w + q * m, prio != nullptr ? prio + q * m : nullptr, n, m,
                                                 values + q * n, idx + q * n, ToMag());
  }
}

template <typename U>
__global__ void nm_decompress_kernel(const U* __restrict__ values, const uint8_t* __restrict__ idx,
                                     int64_t total_groups, int n, int m, U* __restrict__ out) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < total_groups;
       q += int64_t(gridDim.x) * blockDim.x) {
    nm_decompress_group<U>(values + q * n, idx + q * n, n, m, out + q * m);
  }
}

template <typename T>
cudaError_t launch_mask(const void* w, bool* mask, int64_t rows, int64_t groups, int64_t inner, int n, int m,
                        cudaStream_t stream) {
  nm_mask_kernel<T><<<grid_for(rows * groups * inner), kThreads, 0, stream>>>(static_cast<const T*>(w), mask, rows,
                                                                              groups, inner, n, m);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_compress(const void* w, const bool* prio, int64_t total_groups, int n, int m, void* values,
                            uint8_t* idx, cudaStream_t stream) {
  nm_compress_kernel<T><<<grid_for(total_groups), kThreads, 0, stream>>>(static_cast<const T*>(w), prio,
                                                                         total_groups, n, m, static_cast<T*>(values),
                                                                         idx);
  return cudaGetLastError();
}

template <typename U>
cudaError_t launch_decompress(const void* values, const uint8_t* idx, int64_t total_groups, int n, int m, void* out,
                              cudaStream_t stream) {
  nm_decompress_kernel<U><<<grid_for(total_groups), kThreads, 0, stream>>>(static_cast<const U*>(values), idx,
                                                                           total_groups, n, m, static_cast<U*>(out));
  return cudaGetLastError();
}

// ---- apply_masks_: a batch of tensors and a block -> (tensor, chunk) map, passed as the kernel parameter
// (about 2.5 KB, under the 4 KB limit), as apex's multi_tensor_apply does.
constexpr int kListSize = 36;
constexpr int kBatchBlocks = 320;
constexpr int64_t kChunk = 16384;  // elements per block: 64 per thread

struct MaskBatch {
  void* data[kListSize];
  const bool* mask[kListSize];
  int64_t numel[kListSize];
  uint8_t elem_size[kListSize];
  uint8_t tensor_of_block[kBatchBlocks];
  int32_t chunk_of_block[kBatchBlocks];
};

template <typename U>
__device__ __forceinline__ void zero_chunk(void* data, const bool* mask, int64_t begin, int64_t end) {
  U* p = static_cast<U*>(data);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) zero_unmasked<U>(p, mask, i);
}

__global__ void apply_masks_kernel(MaskBatch batch) {
  const int t = batch.tensor_of_block[blockIdx.x];
  const int64_t begin = int64_t(batch.chunk_of_block[blockIdx.x]) * kChunk;
  const int64_t end = min(begin + kChunk, batch.numel[t]);
  switch (batch.elem_size[t]) {
    case 1: zero_chunk<uint8_t>(batch.data[t], batch.mask[t], begin, end); break;
    case 2: zero_chunk<uint16_t>(batch.data[t], batch.mask[t], begin, end); break;
    case 4: zero_chunk<uint32_t>(batch.data[t], batch.mask[t], begin, end); break;
    case 8: zero_chunk<uint64_t>(batch.data[t], batch.mask[t], begin, end); break;
    default: break;  // rejected on the host
  }
}

}  // namespace

cudaError_t nm_mask_cuda(const void* w, bool* mask, int64_t rows, int64_t groups, int64_t inner, int n, int m,
                         DType dtype, cudaStream_t stream) {
  if (rows * groups * inner == 0) return cudaSuccess;
  if (n < 1 || n >= m || m > kNmMaxM) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return launch_mask<float>(w, mask, rows, groups, inner, n, m, stream);
    case DType::kFloat64: return launch_mask<double>(w, mask, rows, groups, inner, n, m, stream);
    case DType::kFloat16: return launch_mask<__half>(w, mask, rows, groups, inner, n, m, stream);
    case DType::kBFloat16: return launch_mask<__nv_bfloat16>(w, mask, rows, groups, inner, n, m, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t nm_compress_cuda(const void* w, const bool* prio_mask, int64_t rows, int64_t k, int n, int m,
                             void* values, uint8_t* idx, DType dtype, cudaStream_t stream) {
  const int64_t total_groups = rows * (k / m);
  if (total_groups == 0) return cudaSuccess;
  if (n < 1 || n >= m || m > kNmMaxM || k % m != 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return launch_compress<float>(w, prio_mask, total_groups, n, m, values, idx, stream);
    case DType::kFloat64: return launch_compress<double>(w, prio_mask, total_groups, n, m, values, idx, stream);
    case DType::kFloat16: return launch_compress<__half>(w, prio_mask, total_groups, n, m, values, idx, stream);
    case DType::kBFloat16:
      return launch_compress<__nv_bfloat16>(w, prio_mask, total_groups, n, m, values, idx, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t nm_decompress_cuda(const void* values, const uint8_t* idx, int64_t rows, int64_t k, int n, int m,
                               void* out, int elem_size, cudaStream_t stream) {
  const int64_t total_groups = rows * (k / m);
  if (total_groups == 0) return cudaSuccess;
  if (n < 1 || n >= m || m > kNmMaxM || k % m != 0) return cudaErrorInvalidValue;
  switch (elem_size) {
    case 1: return launch_decompress<uint8_t>(values, idx, total_groups, n, m, out, stream);
    case 2: return launch_decompress<uint16_t>(values, idx, total_groups, n, m, out, stream);
    case 4: return launch_decompress<uint32_t>(values, idx, total_groups, n, m, out, stream);
    case 8: return launch_decompress<uint64_t>(values, idx, total_groups, n, m, out, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t apply_masks_cuda(const MaskedTensor* tensors, int64_t count, cudaStream_t stream) {
  for (int64_t i = 0; i < count; ++i) {
    const int es = tensors[i].elem_size;
    if (es != 1 && es != 2 && es != 4 && es != 8) return cudaErrorInvalidValue;
    if ((tensors[i].numel + kChunk - 1) / kChunk > int64_t(INT32_MAX)) return cudaErrorInvalidValue;
  }
  MaskBatch batch;
  int slot = 0, blocks = 0;
  auto launch = [&]() {
    apply_masks_kernel<<<blocks, kThreads, 0, stream>>>(batch);
    blocks = 0;
    return cudaGetLastError();
  };
  for (int64_t i = 0; i < count; ++i) {
    const MaskedTensor& t = tensors[i];
    if (t.numel == 0) continue;
    batch.data[slot] = t.data;
    batch.mask[slot] = t.mask;
    batch.numel[slot] = t.numel;
    batch.elem_size[slot] = static_cast<uint8_t>(t.elem_size);
    const int64_t chunks = (t.numel + kChunk - 1) / kChunk;
    bool slot_reset = false;
    for (int64_t c = 0; c < chunks; ++c) {
      batch.tensor_of_block[blocks] = static_cast<uint8_t>(slot);
      batch.chunk_of_block[blocks] = static_cast<int32_t>(c);
      ++blocks;
      const bool last_chunk = c + 1 == chunks;
      if (blocks == kBatchBlocks || (last_chunk && slot + 1 == kListSize)) {
        const cudaError_t err = launch();
        if (err != cudaSuccess) return err;
        if (last_chunk) {
          slot_reset = true;  // this tensor is done: the next one starts a fresh list
        } else {  // the rest of this tensor goes on in slot 0 of the next batch
          batch.data[0] = batch.data[slot];
          batch.mask[0] = batch.mask[slot];
          batch.numel[0] = batch.numel[slot];
          batch.elem_size[0] = batch.elem_size[slot];
          slot = 0;
        }
      }
    }
    slot = slot_reset ? 0 : slot + 1;
  }
  return blocks > 0 ? launch() : cudaSuccess;
}

}  // namespace kernels
}  // namespace sparseyolo
