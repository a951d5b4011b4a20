// Small helpers for the torch glue of the CUDA backends.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "../../kernels/dtype.h"

namespace sparseyolo {
namespace ops {

inline kernels::DType to_kernel_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return kernels::DType::kFloat32;
    case c10::ScalarType::Double: return kernels::DType::kFloat64;
    case c10::ScalarType::Half: return kernels::DType::kFloat16;
    case c10::ScalarType::BFloat16: return kernels::DType::kBFloat16;
    default: TORCH_INTERNAL_ASSERT(false, "no kernel dtype for ", t);
  }
  return kernels::DType::kFloat32;  // unreachable
}

// Every launch is followed by this check (a bad configuration or an earlier async error surfaces here).
inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace ops
}  // namespace sparseyolo
