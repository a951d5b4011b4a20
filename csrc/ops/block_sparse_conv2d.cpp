// Schema of sparseyolo's block-sparse channels-last convolution. Backend: ops/cpu/block_sparse_conv2d_kernel.cpp;
// fake kernel: sparseyolo/_meta_registrations.py; kernel design: kernels/cpu/block_sparse_conv2d.h; packing (once
// per model): sparseyolo/sparse/block_packing.py.
#include <torch/library.h>

#include <string>

#include "../kernels/cpu/cpu_isa.h"

namespace {

// The SIMD path the CPU kernels take now: the CPU's best, capped by SPARSEYOLO_CPU_ISA.
std::string cpu_isa() {
  namespace k = sparseyolo::kernels;
  k::CpuIsa cap;
  TORCH_CHECK(k::cpu_isa_env_cap(&cap), "sparseyolo: SPARSEYOLO_CPU_ISA should be one of amx, avx512_bf16, avx512, "
              "avx2, portable (or unset), got '", std::getenv("SPARSEYOLO_CPU_ISA"), "'");
  return k::cpu_isa_name(k::cpu_isa_min(k::cpu_isa_detected(), cap));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  m.def(
      "block_sparse_conv2d(Tensor input, Tensor weight, Tensor taps, Tensor block_ptr, int in_channels, "
      "int out_channels, int[2] kernel_size, Tensor? bias=None, int[2] stride=[1, 1], int[2] padding=[0, 0], "
      "str activation=\"identity\", str gather=\"plain\") -> Tensor");
  m.def("cpu_isa() -> str", &cpu_isa);
}
