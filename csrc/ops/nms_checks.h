// Input checks shared by every backend of sparseyolo::nms and sparseyolo::yolo_nms, so CPU and CUDA
// fail the same way (the fake kernels in sparseyolo/_meta_registrations.py repeat them).
#pragma once

#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace sparseyolo {
namespace ops {

// Candidate indices (anchor * nc + class, or box index) are packed into 32 bits of the sort key.
constexpr int64_t kMaxCandidateIndex = (int64_t(1) << 32) - 1;

inline bool is_nms_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "sparseyolo::nms: boxes should be a [N, 4] tensor of (x1, y1, x2, y2), got shape ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, "sparseyolo::nms: scores should be a [N] tensor, got shape ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), "sparseyolo::nms: boxes and scores should have the same N, got ",
              boxes.size(0), " and ", scores.size(0));
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(),
              "sparseyolo::nms: boxes and scores should have the same dtype, got ", boxes.scalar_type(), " and ",
              scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "sparseyolo::nms: boxes and scores should be on the same device, got ",
              boxes.device(), " and ", scores.device());
  TORCH_CHECK(is_nms_float(boxes.scalar_type()),
              "sparseyolo::nms: boxes should be float32, float16 or bfloat16, got ", boxes.scalar_type(),
              "; convert them with .float()");
  TORCH_CHECK(boxes.size(0) <= kMaxCandidateIndex, "sparseyolo::nms: at most 2^32 - 1 boxes are supported, got ",
              boxes.size(0));
}

// Effective number of candidates per anchor (YOLOv5 turns multi_label off when nc == 1).
inline int64_t yolo_nms_labels_per_anchor(int64_t nc, bool multi_label) {
  return multi_label && nc > 1 ? nc : 1;
}

// Width W of the padded output [B, W, 6]: nothing beyond max_det, max_nms or the candidates possible.
inline int64_t yolo_nms_out_width(int64_t num_anchors, int64_t nc, bool multi_label, int64_t max_det,
                                  int64_t max_nms) {
  return std::min({max_det, max_nms, num_anchors * yolo_nms_labels_per_anchor(nc, multi_label)});
}

inline void check_yolo_nms_inputs(const at::Tensor& pred, double conf_thres, double iou_thres,
                                  const c10::optional<at::Tensor>& classes, int64_t max_det, int64_t max_nms) {
  TORCH_CHECK(pred.dim() == 3,
              "sparseyolo::yolo_nms: pred should be a [B, N, 5 + nc] tensor of (cx, cy, w, h, obj, class scores), "
              "got shape ", pred.sizes());
  TORCH_CHECK(pred.size(2) >= 6, "sparseyolo::yolo_nms: pred needs at least one class (nc >= 1), so pred.size(2) >= 6, "
              "got shape ", pred.sizes());
  TORCH_CHECK(is_nms_float(pred.scalar_type()),
              "sparseyolo::yolo_nms: pred should be float32, float16 or bfloat16, got ", pred.scalar_type(),
              "; convert it with .float()");
  TORCH_CHECK(conf_thres >= 0.0 && conf_thres <= 1.0, "sparseyolo::yolo_nms: conf_thres should be in [0, 1], got ",
              conf_thres);
  TORCH_CHECK(iou_thres >= 0.0 && iou_thres <= 1.0, "sparseyolo::yolo_nms: iou_thres should be in [0, 1], got ",
              iou_thres);
  TORCH_CHECK(max_det >= 1, "sparseyolo::yolo_nms: max_det should be >= 1, got ", max_det);
  TORCH_CHECK(max_nms >= 1, "sparseyolo::yolo_nms: max_nms should be >= 1, got ", max_nms);
  const int64_t nc = pred.size(2) - 5;
  TORCH_CHECK(pred.size(1) * nc <= kMaxCandidateIndex, "sparseyolo::yolo_nms: N * nc should be < 2^32, got ",
              pred.size(1), " * ", nc, "; split the anchors");
  if (classes.has_value()) {
    const at::Tensor& c = *classes;
    TORCH_CHECK(c.dim() == 1, "sparseyolo::yolo_nms: classes should be a 1D tensor of class indices, got shape ",
                c.sizes());
    TORCH_CHECK(c.scalar_type() == at::kLong || c.scalar_type() == at::kInt,
                "sparseyolo::yolo_nms: classes should be int64 or int32, got ", c.scalar_type());
    TORCH_CHECK(c.device() == pred.device(), "sparseyolo::yolo_nms: classes should be on the device of pred (",
                pred.device(), "), got ", c.device());
  }
}

}  // namespace ops
}  // namespace sparseyolo
