// CUDA backend of sparseyolo::nms and sparseyolo::yolo_nms: torch checks, device guard, stream and the
// workspace (from the caching allocator) here; the kernels are torch-free in kernels/cuda/nms.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../kernels/cuda/nms_cuda.h"
#include "../nms_checks.h"
#include "cuda_utils.h"

namespace sparseyolo {
namespace ops {
namespace {

namespace k = kernels;

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  TORCH_CHECK(boxes.is_cuda(), "sparseyolo::nms: the CUDA kernel got a ", boxes.device(), " tensor");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  auto keep = at::empty({n}, boxes.options().dtype(at::kLong));
  if (n == 0) return keep;
  TORCH_CHECK(n <= int64_t(0x7fffffff), "sparseyolo::nms: the CUDA kernel takes at most 2^31 - 1 boxes, got ", n);
  const auto b = boxes.contiguous();
  const auto s = scores.contiguous();
  auto num_kept = at::empty({1}, keep.options());
  auto workspace = at::empty({static_cast<int64_t>(k::nms_cuda_workspace_bytes(n))}, b.options().dtype(at::kByte));
  const auto err = k::nms_cuda(b.const_data_ptr(), s.const_data_ptr(), n, to_kernel_dtype(b.scalar_type()),
                               k::iou_cutoff(iou_threshold), keep.mutable_data_ptr<int64_t>(),
                               num_kept.mutable_data_ptr<int64_t>(), workspace.mutable_data_ptr(), workspace.numel(),
                               c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::nms");
  // The output size is data-dependent: one device-to-host copy, as torchvision's nms has.
  return keep.narrow(0, 0, num_kept.item<int64_t>());
}

std::tuple<at::Tensor, at::Tensor> yolo_nms_cuda(const at::Tensor& pred, double conf_thres, double iou_thres,
                                                 const c10::optional<at::Tensor>& classes, bool agnostic,
                                                 bool multi_label, int64_t max_det, int64_t max_nms) {
  check_yolo_nms_inputs(pred, conf_thres, iou_thres, classes, max_det, max_nms);
  TORCH_CHECK(pred.is_cuda(), "sparseyolo::yolo_nms: the CUDA kernel got a ", pred.device(), " tensor");
  const c10::cuda::CUDAGuard guard(pred.device());
  const int64_t bs = pred.size(0), num_anchors = pred.size(1), nc = pred.size(2) - 5;
  const int64_t width = yolo_nms_out_width(num_anchors, nc, multi_label, max_det, max_nms);
  auto dets = at::zeros({bs, width, 6}, pred.options());
  auto counts = at::zeros({bs}, pred.options().dtype(at::kLong));
  if (bs == 0 || width == 0) return {dets, counts};

  k::YoloNmsParams p;
  p.num_anchors = num_anchors;
  p.num_classes = nc;
  p.conf_thres = static_cast<float>(conf_thres);
  p.iou_cutoff = k::iou_cutoff(iou_thres);
  p.agnostic = agnostic;
  p.multi_label = yolo_nms_labels_per_anchor(nc, multi_label) > 1;
  p.max_det = max_det;
  p.max_nms = max_nms;
  const int64_t cap = k::yolo_nms_cuda_capacity(p);
  TORCH_CHECK(bs * cap <= int64_t(0x7fffffff), "sparseyolo::yolo_nms: the CUDA kernel buffers B * min(max_nms, N * "
              "labels) = ", bs * cap, " candidates, at most 2^31 - 1; lower max_nms or split the batch");

  at::Tensor cls;
  if (classes.has_value()) {
    if (classes->numel() == 0) return {dets, counts};  // an empty class filter keeps nothing
    cls = classes->to(at::kLong).contiguous();
  }
  const auto x = pred.contiguous();
  k::YoloNmsCudaArgs a;
  a.pred = x.const_data_ptr();
  a.dtype = to_kernel_dtype(x.scalar_type());
  a.batch = bs;
  a.params = p;
  a.classes = cls.defined() ? cls.const_data_ptr<int64_t>() : nullptr;
  a.num_classes_filter = cls.defined() ? cls.numel() : 0;
  a.out_width = width;
  a.dets = dets.mutable_data_ptr();
  a.counts = counts.mutable_data_ptr<int64_t>();
  auto workspace = at::empty({static_cast<int64_t>(k::yolo_nms_cuda_workspace_bytes(bs, p))},
                             x.options().dtype(at::kByte));
  const auto err = k::yolo_nms_cuda(a, workspace.mutable_data_ptr(), workspace.numel(),
                                    c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::yolo_nms");
  return {dets, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
  m.impl("yolo_nms", TORCH_FN(yolo_nms_cuda));
}

}  // namespace ops
}  // namespace sparseyolo
