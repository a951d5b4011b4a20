// Input checks shared by every backend of sparseyolo::box_iou, so CPU and CUDA fail the same way.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace sparseyolo {
namespace ops {

inline void check_box_iou_inputs(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 4,
              "sparseyolo::box_iou: boxes1 should be a [N, 4] tensor of (x1, y1, x2, y2), got shape ",
              boxes1.sizes());
  TORCH_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 4,
              "sparseyolo::box_iou: boxes2 should be a [M, 4] tensor of (x1, y1, x2, y2), got shape ",
              boxes2.sizes());
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(),
              "sparseyolo::box_iou: boxes1 and boxes2 should have the same dtype, got ",
              boxes1.scalar_type(), " and ", boxes2.scalar_type());
  TORCH_CHECK(boxes1.device() == boxes2.device(),
              "sparseyolo::box_iou: boxes1 and boxes2 should be on the same device, got ", boxes1.device(),
              " and ", boxes2.device());
  const auto t = boxes1.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "sparseyolo::box_iou: boxes should be float32, float64, float16 or bfloat16, got ", t,
              "; convert them with .float()");
}

}  // namespace ops
}  // namespace sparseyolo
