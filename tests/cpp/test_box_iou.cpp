// CPU unit test of the torch-free box IoU rule (csrc/kernels/box_iou.h) against hand-computed values
// and a double-precision recomputation on random boxes.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/box_iou.h"

namespace k = sparseyolo::kernels;

static int failures = 0;

static void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.9g, want %.9g\n", what, got, want);
    ++failures;
  }
}

int main() {
  // Hand-computed cases.
  expect_near(k::iou_xyxy<double>(0, 0, 10, 10, 0, 0, 10, 10), 1.0, 0, "identical");
  expect_near(k::iou_xyxy<double>(0, 0, 10, 10, 5, 5, 15, 15), 25.0 / 175.0, 1e-15, "quarter overlap");
  expect_near(k::iou_xyxy<double>(0, 0, 10, 10, 10, 0, 20, 10), 0.0, 0, "touching");
  expect_near(k::iou_xyxy<double>(3, 3, 3, 3, 3, 3, 3, 3), 0.0, 0, "two points: 0, not NaN");
  expect_near(k::iou_xyxy<float>(0, 0, 4, 4, 1, 1, 3, 3), 0.25, 0, "nested");

  // Random boxes through the row kernel, float storage vs double recomputation.
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> pos(0.f, 600.f), size(0.f, 120.f);
  const int n = 37, m = 29;
  std::vector<float> a(4 * n), b(4 * m), out(n * m);
  for (int i = 0; i < n + m; ++i) {
    float* p = i < n ? &a[4 * i] : &b[4 * (i - n)];
    p[0] = pos(rng); p[1] = pos(rng); p[2] = p[0] + size(rng); p[3] = p[1] + size(rng);
  }
  auto id = [](float v) { return v; };
  k::box_iou_rows<float, float>(a.data(), b.data(), m, out.data(), 0, n, id, id);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      const float* p = &a[4 * i];
      const float* q = &b[4 * j];
      const double want = k::iou_xyxy<double>(p[0], p[1], p[2], p[3], q[0], q[1], q[2], q[3]);
      expect_near(out[i * m + j], want, 1e-6, "random pair");
    }
  if (failures == 0) std::printf("test_box_iou: all passed\n");
  return failures == 0 ? 0 : 1;
}
