// Host-side entry point of the torch-free CUDA box IoU kernel (implemented in box_iou.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "../dtype.h"

namespace sparseyolo {
namespace kernels {

// out[i, j] = IoU(a[i], b[j]) for a: [n, 4], b: [m, 4], out: [n, m], all contiguous, same dtype.
// Returns the launch error (cudaSuccess when fine); does not synchronise.
cudaError_t box_iou_cuda(const void* a, int64_t n, const void* b, int64_t m, void* out, DType dtype,
                         cudaStream_t stream);

}  // namespace kernels
}  // namespace sparseyolo
