// Schemas of sparseyolo's cuSPARSELt ops: a 2:4 sparse weight times a dense activation matrix through NVIDIA
// cuSPARSELt, the weight compressed once and cuSPARSELt's matmul plan built once per problem and cached. (PyTorch
// 2.11's torch._cslt_sparse_mm builds one on every call, and took 170-210 ms per call on an H200.) The
// experimental "cuda_cusparselt" backend of SparseConv2d runs 1x1 convolutions through them
// (sparseyolo/sparse/experimental/cusparselt.py). CUDA backend: experimental/ops/cuda/cusparselt_cuda.cpp, whose
// binding is built when setup.py runs with SPARSEYOLO_EXPERIMENTAL_GPU=1, finds the torch wheel's cuSPARSELt
// (nvidia/cusparselt) and defines SPARSEYOLO_WITH_CUSPARSELT; fake kernels: sparseyolo/_meta_registrations.py.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>

#ifdef SPARSEYOLO_WITH_CUSPARSELT
#include <cusparseLt.h>
#endif

namespace sparseyolo {
namespace ops {
namespace {

int64_t cusparselt_version() {
#ifdef SPARSEYOLO_WITH_CUSPARSELT
  return CUSPARSELT_VERSION;
#else
  return 0;
#endif
}

[[noreturn]] void cpu_unsupported(const char* op) {
  TORCH_CHECK(false, op, ": cuSPARSELt runs on CUDA tensors only; on the CPU use sparseyolo.ops.sparse_conv2d or ",
              "a dense matmul");
}

at::Tensor cusparselt_compress_cpu(const at::Tensor&) { cpu_unsupported("sparseyolo::cusparselt_compress"); }

at::Tensor cusparselt_linear_cpu(const at::Tensor&, const at::Tensor&, int64_t, const c10::optional<at::Tensor>&,
                                 int64_t) {
  cpu_unsupported("sparseyolo::cusparselt_linear");
}

}  // namespace
}  // namespace ops
}  // namespace sparseyolo

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  // weight [out_features, in_features], float16/bfloat16, 2:4 sparse along in_features -> cuSPARSELt's
  // compressed form of it (a uint8 buffer, opaque; only cusparselt_linear reads it).
  m.def("cusparselt_compress(Tensor weight) -> Tensor");
  // input [P, in_features] (row-major) -> [P, out_features] = input @ weight^T + bias, fp32 accumulation; bias
  // [out_features] in input's dtype; alg_id: cuSPARSELt's algorithm configuration (0: its default).
  m.def(
      "cusparselt_linear(Tensor compressed, Tensor input, int out_features, Tensor? bias=None, int alg_id=0) -> "
      "Tensor");
  // CUSPARSELT_VERSION of the build (major * 1000 + minor * 100 + patch), 0 when built without cuSPARSELt.
  m.def("cusparselt_version() -> int", &sparseyolo::ops::cusparselt_version);
}

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("cusparselt_compress", TORCH_FN(sparseyolo::ops::cusparselt_compress_cpu));
  m.impl("cusparselt_linear", TORCH_FN(sparseyolo::ops::cusparselt_linear_cpu));
}
