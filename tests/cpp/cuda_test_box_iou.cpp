// GPU unit test of the torch-free CUDA box IoU kernel against the CPU rule. Exits 77 (ctest: skipped)
// when no CUDA device is present, so the CMake build stays green on CPU-only machines.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "kernels/box_iou.h"
#include "kernels/cuda/box_iou.h"
#include "cuda_test_utils.h"

namespace k = sparseyolo::kernels;

int main() {
  if (!have_cuda_device("cuda_test_box_iou")) return kSkipped;
  const int n = 70, m = 33;  // not multiples of the 32-wide tile
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> pos(0.f, 600.f), size(0.f, 120.f);
  std::vector<float> a(4 * n), b(4 * m), out(n * m, -1.f);
  for (int i = 0; i < n + m; ++i) {
    float* p = i < n ? &a[4 * i] : &b[4 * (i - n)];
    p[0] = pos(rng); p[1] = pos(rng); p[2] = p[0] + size(rng); p[3] = p[1] + size(rng);
  }
  float *da, *db, *dout;
  CHECK_CUDA(cudaMalloc(&da, a.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&db, b.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dout, out.size() * sizeof(float)));
  CHECK_CUDA(cudaMemcpy(da, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(db, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(dout, 0xff, out.size() * sizeof(float)));  // poison: NaN everywhere
  CHECK_CUDA(k::box_iou_cuda(da, n, db, m, dout, k::DType::kFloat32, nullptr));
  CHECK_CUDA(cudaMemcpy(out.data(), dout, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  int failures = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      const float* p = &a[4 * i];
      const float* q = &b[4 * j];
      const double want = k::iou_xyxy<double>(p[0], p[1], p[2], p[3], q[0], q[1], q[2], q[3]);
      if (!(std::fabs(out[i * m + j] - want) <= 1e-6)) {
        if (failures++ < 5) std::printf("FAIL (%d, %d): got %g want %g\n", i, j, out[i * m + j], want);
      }
    }
  cudaFree(da); cudaFree(db); cudaFree(dout);
  if (failures == 0) std::printf("cuda_test_box_iou: all passed\n");
  return failures == 0 ? 0 : 1;
}
