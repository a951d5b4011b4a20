// Pairwise IoU of axis-aligned boxes: the scalar rule shared by the CPU kernel, the CUDA kernel and
// the CMake unit test. Torch-free.
//
// Boxes are (x1, y1, x2, y2). Areas are (x2 - x1) * (y2 - y1), not clamped, as in torchvision.
// The result is inter / union in the accumulation type `acc_t`, and 0 when union <= 0 (two
// zero-area boxes): torchvision returns NaN there, which is never what a caller wants.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPARSEYOLO_HD __host__ __device__ __forceinline__
#else
#define SPARSEYOLO_HD inline
#endif

namespace sparseyolo {
namespace kernels {

template <typename acc_t>
SPARSEYOLO_HD acc_t iou_xyxy(acc_t ax1, acc_t ay1, acc_t ax2, acc_t ay2,
                             acc_t bx1, acc_t by1, acc_t bx2, acc_t by2) {
  const acc_t iw = (ax2 < bx2 ? ax2 : bx2) - (ax1 > bx1 ? ax1 : bx1);
  const acc_t ih = (ay2 < by2 ? ay2 : by2) - (ay1 > by1 ? ay1 : by1);
  const acc_t inter = (iw > acc_t(0) ? iw : acc_t(0)) * (ih > acc_t(0) ? ih : acc_t(0));
  const acc_t area_a = (ax2 - ax1) * (ay2 - ay1);
  const acc_t area_b = (bx2 - bx1) * (by2 - by1);
  const acc_t uni = area_a + area_b - inter;
  return uni > acc_t(0) ? inter / uni : acc_t(0);
}

// CPU: rows [row_begin, row_end) of the n x m IoU matrix. `to_acc`/`from_acc` convert the storage
// type (e.g. a 16-bit float) to and from the accumulation type.
template <typename scalar_t, typename acc_t, typename ToAcc, typename FromAcc>
void box_iou_rows(const scalar_t* a, const scalar_t* b, int64_t m, scalar_t* out,
                  int64_t row_begin, int64_t row_end, ToAcc to_acc, FromAcc from_acc) {
  for (int64_t i = row_begin; i < row_end; ++i) {
    const scalar_t* p = a + 4 * i;
    const acc_t ax1 = to_acc(p[0]), ay1 = to_acc(p[1]), ax2 = to_acc(p[2]), ay2 = to_acc(p[3]);
    scalar_t* row = out + i * m;
    for (int64_t j = 0; j < m; ++j) {
      const scalar_t* q = b + 4 * j;
      row[j] = from_acc(iou_xyxy<acc_t>(ax1, ay1, ax2, ay2, to_acc(q[0]), to_acc(q[1]),
                                         to_acc(q[2]), to_acc(q[3])));
    }
  }
}

}  // namespace kernels
}  // namespace sparseyolo
