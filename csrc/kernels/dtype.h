// Element types understood by the torch-free kernels. The torch glue maps at::ScalarType onto these,
// so the .cu files never include torch headers (they compile in seconds instead of minutes).
#pragma once

namespace sparseyolo {
namespace kernels {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

}  // namespace kernels
}  // namespace sparseyolo
