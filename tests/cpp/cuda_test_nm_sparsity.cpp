// GPU unit test of the torch-free CUDA N:M kernels against the CPU rules of kernels/nm_sparsity.h:
// nm_mask on an awkward conv shape, compress/decompress round trip, and apply_masks over more tensors and
// chunks than one launch holds. Exits 77 (ctest: skipped) when no CUDA device is present.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "kernels/cuda/nm_sparsity.h"
#include "kernels/nm_sparsity.h"
#include "cuda_test_utils.h"

namespace k = sparseyolo::kernels;

int main() {
  if (!have_cuda_device("cuda_test_nm_sparsity")) return kSkipped;
  int failures = 0;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;

  // nm_mask on [13, 16, 3, 3] (2:4) and the compress/decompress round trip of the masked rows [13*9, 16].
  const int64_t rows = 13, cin = 16, inner = 9, numel = rows * cin * inner;
  std::vector<float> w(numel);
  for (auto& v : w) v = normal(rng);
  std::vector<char> want(numel);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < cin / 4; ++g)
      for (int64_t s = 0; s < inner; ++s) {
        const int64_t base = (r * cin + g * 4) * inner + s;
        bool tmp[4 * 9];
        k::nm_mask_group<float>(w.data() + base, inner, 2, 4, tmp, [](float v) { return v; });
        for (int j = 0; j < 4; ++j) want[base + j * inner] = tmp[j * inner];
      }
  float *dw = nullptr, *dv = nullptr, *dback = nullptr;
  bool* dm = nullptr;
  uint8_t* di = nullptr;
  CHECK_CUDA(cudaMalloc(&dw, numel * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dm, numel));
  CHECK_CUDA(cudaMemcpy(dw, w.data(), numel * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(k::nm_mask_cuda(dw, dm, rows, cin / 4, inner, 2, 4, k::DType::kFloat32, nullptr));
  std::vector<char> got(numel);
  CHECK_CUDA(cudaMemcpy(got.data(), dm, numel, cudaMemcpyDeviceToHost));
  for (int64_t i = 0; i < numel; ++i) failures += (got[i] != 0) != (want[i] != 0);
  if (failures) std::printf("FAIL nm_mask: %d mismatches\n", failures);

  const int64_t grows = rows * inner, kk = cin;  // treat w as [117, 16] rows for the last-axis format
  CHECK_CUDA(cudaMalloc(&dv, grows * kk / 2 * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&di, grows * kk / 2));
  CHECK_CUDA(cudaMalloc(&dback, numel * sizeof(float)));
  CHECK_CUDA(k::nm_compress_cuda(dw, nullptr, grows, kk, 2, 4, dv, di, k::DType::kFloat32, nullptr));
  CHECK_CUDA(k::nm_decompress_cuda(dv, di, grows, kk, 2, 4, dback, 4, nullptr));
  std::vector<float> back(numel);
  CHECK_CUDA(cudaMemcpy(back.data(), dback, numel * sizeof(float), cudaMemcpyDeviceToHost));
  int rt = 0;
  for (int64_t q = 0; q < grows * kk / 4; ++q) {
    float vals[2];
    uint8_t idx[2];
    k::nm_compress_group<float>(w.data() + q * 4, nullptr, 2, 4, vals, idx, [](float v) { return v; });
    float dense[4] = {0, 0, 0, 0};
    dense[idx[0]] = vals[0];
    dense[idx[1]] = vals[1];
    for (int j = 0; j < 4; ++j) rt += std::memcmp(&dense[j], &back[q * 4 + j], 4) != 0;
  }
  if (rt) std::printf("FAIL compress/decompress: %d mismatches\n", rt);
  failures += rt;

  // apply_masks over 50 tensors (more than one 36-tensor batch) incl. one of 6M elements (> 320 chunks).
  std::vector<int64_t> sizes;
  for (int i = 0; i < 49; ++i) sizes.push_back(i % 3 == 0 ? 16385 : 1 + i);
  sizes.push_back(6000000);
  std::vector<k::MaskedTensor> items;
  std::vector<std::vector<float>> hostw;
  std::vector<std::vector<char>> hostm;
  std::vector<float*> dts;
  std::vector<bool*> dms;
  std::bernoulli_distribution coin(0.5);
  for (int64_t s : sizes) {
    hostw.emplace_back(s);
    hostm.emplace_back(s);
    for (int64_t i = 0; i < s; ++i) { hostw.back()[i] = normal(rng) + 10.f; hostm.back()[i] = coin(rng); }
    float* d = nullptr;
    bool* dmask = nullptr;
    CHECK_CUDA(cudaMalloc(&d, s * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&dmask, s));
    CHECK_CUDA(cudaMemcpy(d, hostw.back().data(), s * sizeof(float), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dmask, hostm.back().data(), s, cudaMemcpyHostToDevice));
    dts.push_back(d);
    dms.push_back(dmask);
    items.push_back({d, dmask, s, 4});
  }
  CHECK_CUDA(k::apply_masks_cuda(items.data(), static_cast<int64_t>(items.size()), nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  int am = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    std::vector<float> out(sizes[t]);
    CHECK_CUDA(cudaMemcpy(out.data(), dts[t], sizes[t] * sizeof(float), cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < sizes[t]; ++i) am += out[i] != (hostm[t][i] ? hostw[t][i] : 0.f);
    cudaFree(dts[t]);
    cudaFree(dms[t]);
  }
  if (am) std::printf("FAIL apply_masks: %d mismatches\n", am);
  failures += am;
  cudaFree(dw); cudaFree(dm); cudaFree(dv); cudaFree(di); cudaFree(dback);
  if (failures == 0) std::printf("cuda_test_nm_sparsity: all passed\n");
  return failures == 0 ? 0 : 1;
}
