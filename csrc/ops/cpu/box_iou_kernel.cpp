// CPU backend of sparseyolo::box_iou: rows of the IoU matrix split over at::parallel_for threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../../kernels/box_iou.h"
#include "../box_iou.h"

namespace sparseyolo {
namespace ops {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_inputs(boxes1, boxes2);
  const auto a = boxes1.contiguous();
  const auto b = boxes2.contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  auto out = at::empty({n, m}, a.options());
  if (n == 0 || m == 0) return out;
  // ~20 flops per pair: give each thread at least a few thousand pairs.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(m, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      kernels::box_iou_rows<scalar_t, acc_t>(
          pa, pb, m, po, begin, end, [](scalar_t v) { return static_cast<acc_t>(v); },
          [](acc_t v) { return static_cast<scalar_t>(v); });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("box_iou", TORCH_FN(box_iou_cpu));
}

}  // namespace ops
}  // namespace sparseyolo
