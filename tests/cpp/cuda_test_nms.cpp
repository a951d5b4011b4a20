// GPU unit test of the torch-free CUDA NMS kernels against the CPU algorithms (kernels/cpu/nms_cpu.h): a
// batch of random YOLO outputs (some images with more than max_nms candidates, so the radix select
// runs), and plain nms with many tied scores. Exits 77 (ctest: skipped) without a CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "kernels/cpu/nms_cpu.h"
#include "kernels/cuda/nms_cuda.h"
#include "cuda_test_utils.h"

namespace k = sparseyolo::kernels;

static int failures = 0;

static int yolo_case(bool multi_label, bool agnostic, int64_t max_nms, int seed) {
  const int64_t batch = 5, n = 3000, nc = 7, stride = 5 + nc;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> pred(batch * n * stride);
  for (int64_t a = 0; a < batch * n; ++a) {
    float* r = &pred[a * stride];
    r[0] = u(rng) * 640; r[1] = u(rng) * 640; r[2] = 2 + u(rng) * 100; r[3] = 2 + u(rng) * 100;
    r[4] = u(rng) * u(rng);
    for (int j = 5; j < stride; ++j) r[j] = std::floor(u(rng) * 50) / 50;  // ties across anchors
  }
  k::YoloNmsParams p;
  p.num_anchors = n;
  p.num_classes = nc;
  p.conf_thres = 0.01f;
  p.iou_cutoff = k::iou_cutoff(0.45);
  p.agnostic = agnostic;
  p.multi_label = multi_label;
  p.max_det = 300;
  p.max_nms = max_nms;
  const int64_t width = std::min({p.max_det, p.max_nms, n * (multi_label ? nc : 1)});
  std::vector<float> want(batch * width * 6, 0.f), got(batch * width * 6, -1.f);
  std::vector<int64_t> want_counts(batch), got_counts(batch, -1);
  k::cpu::NmsScratch s;
  for (int64_t b = 0; b < batch; ++b) {
    float* out = &want[b * width * 6];
    want_counts[b] = k::cpu::yolo_nms_image<float>(&pred[b * n * stride], p, width, [](float v) { return v; },
                                                   [out](int64_t r, int c, float v) { out[r * 6 + c] = v; }, s);
  }
  float *dpred, *ddets;
  int64_t* dcounts;
  void* ws;
  const size_t ws_bytes = k::yolo_nms_cuda_workspace_bytes(batch, p);
  CHECK_CUDA(cudaMalloc(&dpred, pred.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&ddets, got.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dcounts, batch * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  CHECK_CUDA(cudaMemcpy(dpred, pred.data(), pred.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(ddets, 0, got.size() * sizeof(float)));
  k::YoloNmsCudaArgs a;
  a.pred = dpred;
  a.batch = batch;
  a.params = p;
  a.out_width = width;
  a.dets = ddets;
  a.counts = dcounts;
  CHECK_CUDA(k::yolo_nms_cuda(a, ws, ws_bytes, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaMemcpy(got.data(), ddets, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_counts.data(), dcounts, batch * sizeof(int64_t), cudaMemcpyDeviceToHost));
  for (int64_t b = 0; b < batch; ++b)
    if (got_counts[b] != want_counts[b] && failures++ < 10)
      std::printf("FAIL yolo ml=%d ag=%d max_nms=%lld image %lld: %lld kept, want %lld\n", multi_label, agnostic,
                  (long long)max_nms, (long long)b, (long long)got_counts[b], (long long)want_counts[b]);
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i] && failures++ < 10)
      std::printf("FAIL yolo ml=%d ag=%d max_nms=%lld at %zu: %g want %g\n", multi_label, agnostic, (long long)max_nms,
                  i, got[i], want[i]);
  cudaFree(dpred); cudaFree(ddets); cudaFree(dcounts); cudaFree(ws);
  return 0;
}

static int nms_case(int64_t n, int seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> boxes(4 * n), scores(n);
  for (int64_t i = 0; i < n; ++i) {
    boxes[4 * i] = u(rng) * 500; boxes[4 * i + 1] = u(rng) * 500;
    boxes[4 * i + 2] = boxes[4 * i] + u(rng) * 60; boxes[4 * i + 3] = boxes[4 * i + 1] + u(rng) * 60;
    scores[i] = std::floor(u(rng) * 30) / 30;
  }
  const float cutoff = k::iou_cutoff(0.5);
  std::vector<int64_t> want(n), got(n, -1);
  const int64_t want_n = k::cpu::nms_boxes<float>(boxes.data(), scores.data(), n, cutoff, [](float v) { return v; },
                                                  want.data());
  float *db, *ds;
  int64_t *dkeep, *dnum;
  void* ws;
  const size_t ws_bytes = k::nms_cuda_workspace_bytes(n);
  CHECK_CUDA(cudaMalloc(&db, boxes.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&ds, scores.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dkeep, n * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&dnum, sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  CHECK_CUDA(cudaMemcpy(db, boxes.data(), boxes.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(ds, scores.data(), scores.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(k::nms_cuda(db, ds, n, k::DType::kFloat32, cutoff, dkeep, dnum, ws, ws_bytes, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  int64_t got_n = -1;
  CHECK_CUDA(cudaMemcpy(&got_n, dnum, sizeof(int64_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got.data(), dkeep, n * sizeof(int64_t), cudaMemcpyDeviceToHost));
  if (got_n != want_n && failures++ < 10) std::printf("FAIL nms n=%lld: kept %lld want %lld\n", (long long)n,
                                                      (long long)got_n, (long long)want_n);
  for (int64_t i = 0; i < std::min(got_n, want_n); ++i)
    if (got[i] != want[i] && failures++ < 10) std::printf("FAIL nms n=%lld rank %lld\n", (long long)n, (long long)i);
  cudaFree(db); cudaFree(ds); cudaFree(dkeep); cudaFree(dnum); cudaFree(ws);
  return 0;
}

int main() {
  if (!have_cuda_device("cuda_test_nms")) return kSkipped;
  int rc = 0;
  for (bool ml : {false, true})
    for (bool ag : {false, true})
      for (int64_t max_nms : {30000, 700, 1}) rc |= yolo_case(ml, ag, max_nms, 1 + ml * 2 + ag);
  for (int64_t n : {1, 33, 1000, 20000}) rc |= nms_case(n, static_cast<int>(n));
  if (rc == 0 && failures == 0) std::printf("cuda_test_nms: all passed\n");
  return rc != 0 || failures != 0 ? 1 : 0;
}
