// Schemas of sparseyolo::nms and sparseyolo::yolo_nms. Backends: ops/cpu/nms_kernel.cpp,
// ops/cuda/nms_cuda.cpp; fake (meta) kernels: sparseyolo/_meta_registrations.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  // torchvision.ops.nms semantics: indices of the kept boxes, by decreasing score.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // Raw YOLOv5 output [B, N, 5 + nc] -> (dets [B, W, 6] zero-padded, counts [B] int64), where
  // W = min(max_det, max_nms, N * (nc if multi_label else 1)); image b's detections are dets[b, :counts[b]].
  m.def(
      "yolo_nms(Tensor pred, float conf_thres, float iou_thres, Tensor? classes, bool agnostic, "
      "bool multi_label, int max_det, int max_nms) -> (Tensor dets, Tensor counts)");
}
