// CPU backend of sparseyolo::nms and sparseyolo::yolo_nms: images split over at::parallel_for threads;
// the per-image algorithms are torch-free in kernels/cpu/nms_cpu.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

#include "../../kernels/cpu/nms_cpu.h"
#include "../nms_checks.h"

namespace sparseyolo {
namespace ops {
namespace {

namespace k = kernels;

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  const int64_t n = boxes.size(0);
  auto keep = at::empty({n}, boxes.options().dtype(at::kLong));
  if (n == 0) return keep;
  const auto b = boxes.contiguous();
  const auto s = scores.contiguous();
  const float cutoff = k::iou_cutoff(iou_threshold);
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "nms_cpu", [&] {
    kept = k::cpu::nms_boxes<scalar_t>(b.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), n, cutoff,
                                       [](scalar_t v) { return static_cast<float>(v); },
                                       keep.mutable_data_ptr<int64_t>());
  });
  return keep.narrow(0, 0, kept);
}

std::tuple<at::Tensor, at::Tensor> yolo_nms_cpu(const at::Tensor& pred, double conf_thres, double iou_thres,
                                                const c10::optional<at::Tensor>& classes, bool agnostic,
                                                bool multi_label, int64_t max_det, int64_t max_nms) {
  check_yolo_nms_inputs(pred, conf_thres, iou_thres, classes, max_det, max_nms);
  const int64_t bs = pred.size(0), num_anchors = pred.size(1), nc = pred.size(2) - 5;
  const int64_t width = yolo_nms_out_width(num_anchors, nc, multi_label, max_det, max_nms);
  auto dets = at::zeros({bs, width, 6}, pred.options());
  auto counts = at::zeros({bs}, pred.options().dtype(at::kLong));
  if (bs == 0 || width == 0) return {dets, counts};

  // Class filter as a [nc] mask; indices outside [0, nc) match nothing, as in the reference.
  std::vector<uint8_t> allowed;
  if (classes.has_value()) {
    allowed.assign(static_cast<size_t>(nc), 0);
    const auto c = classes->to(at::kLong).contiguous();
    const int64_t* pc = c.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < c.numel(); ++i)
      if (pc[i] >= 0 && pc[i] < nc) allowed[pc[i]] = 1;
  }
  k::YoloNmsParams p;
  p.num_anchors = num_anchors;
  p.num_classes = nc;
  p.conf_thres = static_cast<float>(conf_thres);
  p.iou_cutoff = k::iou_cutoff(iou_thres);
  p.agnostic = agnostic;
  p.multi_label = yolo_nms_labels_per_anchor(nc, multi_label) > 1;
  p.max_det = max_det;
  p.max_nms = max_nms;
  p.class_allowed = classes.has_value() ? allowed.data() : nullptr;

  const auto x = pred.contiguous();
  int64_t* pcounts = counts.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "yolo_nms_cpu", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* pd = dets.mutable_data_ptr<scalar_t>();
    // One image is ~N * (5 + nc) reads: a thread per image is the right grain.
    at::parallel_for(0, bs, 1, [&](int64_t begin, int64_t end) {
      k::cpu::NmsScratch scratch;
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* out = pd + b * width * 6;
        pcounts[b] = k::cpu::yolo_nms_image<scalar_t>(
            px + b * num_anchors * (5 + nc), p, width, [](scalar_t v) { return static_cast<float>(v); },
            [out](int64_t row, int col, float v) { out[row * 6 + col] = static_cast<scalar_t>(v); }, scratch);
      }
    });
  });
  return {dets, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
  m.impl("yolo_nms", TORCH_FN(yolo_nms_cpu));
}

}  // namespace ops
}  // namespace sparseyolo
