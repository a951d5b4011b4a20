// Host-side entry points of the torch-free CUDA N:M sparsity kernels (nm_sparsity.cu). Layouts and the
// selection rule are described in ../nm_sparsity.h. All pointers are device pointers to contiguous data;
// the functions return the launch error (cudaSuccess when fine) and do not synchronise.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "../dtype.h"

namespace sparseyolo {
namespace kernels {

// w: [rows, groups * m, inner] -> mask (bool, same layout).
cudaError_t nm_mask_cuda(const void* w, bool* mask, int64_t rows, int64_t groups, int64_t inner, int n, int m,
                         DType dtype, cudaStream_t stream);

// w: [rows, k] (k % m == 0), prio_mask: same layout or null -> values [rows, k*n/m], idx (uint8) same.
cudaError_t nm_compress_cuda(const void* w, const bool* prio_mask, int64_t rows, int64_t k, int n, int m,
                             void* values, uint8_t* idx, DType dtype, cudaStream_t stream);

// values, idx: [rows, k*n/m] with validated positions -> out [rows, k]; elem_size in {1, 2, 4, 8} bytes.
cudaError_t nm_decompress_cuda(const void* values, const uint8_t* idx, int64_t rows, int64_t k, int n, int m,
                               void* out, int elem_size, cudaStream_t stream);

// One tensor of an apply_masks_ call: data[i] = 0 where !mask[i], for i < numel.
struct MaskedTensor {
  void* data;
  const bool* mask;
  int64_t numel;
  int elem_size;  // 1, 2, 4 or 8 bytes
};

// Zeroes every tensor where its mask is false, in as few launches as the kernel-parameter space allows
// (one for a whole YOLOv5 model), never one per tensor.
cudaError_t apply_masks_cuda(const MaskedTensor* tensors, int64_t count, cudaStream_t stream);

}  // namespace kernels
}  // namespace sparseyolo
