// GPU unit test of the torch-free 2:4 sparse-tensor-core convolution (kernels/cuda/sparse_conv2d_24.cu), every
// kernel, against a double-precision host convolution of the same 2:4 weight (sparse_conv24_host.h): fp16 and
// bf16, Cin = 40 (a padded 32-channel k-block), 80 (an odd number of k-blocks), 104 (96 + 8); Cout = 72, 75 (not a
// multiple of 8), 160 (past the packed weight in the 128-channel tile); 3x3 stride 2 padding 1 and 1x1 stride 1,
// odd spatial sizes, bias + SiLU. The output is poisoned (all-ones bits, NaN) before the launch, so an unwritten
// element fails. The same cases run without a GPU in test_sparse_conv24_emulated.cpp (SIMT emulator).
// Exits 77 (ctest: skipped) when no CUDA device is present or it is older than sm_80.
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "cuda_test_utils.h"
#include "sparse_conv24_host.h"

namespace k = sparseyolo::kernels;
using namespace sparse_conv24_test;

namespace {

template <typename T>
int run_case(const Case& c, int variant, std::mt19937& rng) {
  Problem<T> pr(c, rng);
  std::vector<T> values, xh = pr.x_t();
  std::vector<uint32_t> meta;
  pack(pr.w, c, values, meta);
  const size_t out_n = static_cast<size_t>(c.n) * c.ho() * c.wo() * c.cout;
  T *dx = nullptr, *dv = nullptr, *dout = nullptr;
  uint32_t* dm = nullptr;
  float* db = nullptr;
  CHECK_CUDA(cudaMalloc(&dx, xh.size() * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&dv, values.size() * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&dm, meta.size() * 4));
  CHECK_CUDA(cudaMalloc(&db, pr.bias.size() * 4));
  CHECK_CUDA(cudaMalloc(&dout, out_n * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(dx, xh.data(), xh.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dv, values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dm, meta.data(), meta.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(db, pr.bias.data(), pr.bias.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(dout, 0xFF, out_n * sizeof(T)));  // poison: NaN in fp16 and bf16
  k::SparseConv24Params p = params(c, variant);
  p.input = dx;
  p.values = dv;
  p.meta = dm;
  p.bias = db;
  p.output = dout;
  const k::DType dt = std::is_same_v<T, __half> ? k::DType::kFloat16 : k::DType::kBFloat16;
  CHECK_CUDA(k::sparse_conv24_cuda(p, dt, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<T> out(out_n);
  CHECK_CUDA(cudaMemcpy(out.data(), dout, out_n * sizeof(T), cudaMemcpyDeviceToHost));
  cudaFree(dx); cudaFree(dv); cudaFree(dm); cudaFree(db); cudaFree(dout);
  char label[48];
  std::snprintf(label, sizeof(label), "%-13s %s", variant_name(variant), std::is_same_v<T, __half> ? "fp16" : "bf16");
  return check(pr, out, label, tolerance<T>());
}

}  // namespace

int main() {
  if (!have_cuda_device("cuda_test_sparse_conv")) return kSkipped;
  if (!k::sparse_conv24_supported(0)) {
    std::printf("cuda_test_sparse_conv: GPU older than sm_80, skipped\n");
    return kSkipped;
  }
  const Case cases[] = {
      {2, 40, 13, 11, 72, 3, 3, 2, 1, true},
      {1, 64, 9, 7, 75, 1, 1, 1, 0, false},
      {1, 80, 17, 15, 160, 1, 1, 1, 0, true},
      {1, 104, 17, 15, 160, 3, 3, 1, 1, true},
      {1, 48, 23, 13, 264, 1, 1, 1, 0, true},
      {4, 256, 20, 20, 256, 3, 3, 1, 1, true},  // many blocks of every tile
  };
  std::mt19937 rng(0);
  int failures = 0;
  // Variant by variant, wgmma (the least proven, sm_90 only) last: a kernel fault poisons the CUDA context for
  // everything after it in this process.
  for (int variant : kVariants) {
    if (!k::sparse_conv24_variant_supported(variant, 0)) {
      std::printf("skip %s: not supported on this GPU\n", variant_name(variant));
      continue;
    }
    for (const Case& c : cases) {
      failures += run_case<__half>(c, variant, rng);
      failures += run_case<__nv_bfloat16>(c, variant, rng);
    }
  }
  std::printf("cuda_test_sparse_conv: %s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
