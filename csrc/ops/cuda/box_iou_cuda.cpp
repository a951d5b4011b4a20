// CUDA backend of sparseyolo::box_iou: torch checks, device guard and stream here; the kernel itself
// is torch-free in kernels/cuda/box_iou.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../kernels/cuda/box_iou.h"
#include "../box_iou.h"
#include "cuda_utils.h"

namespace sparseyolo {
namespace ops {
namespace {

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_inputs(boxes1, boxes2);
  TORCH_CHECK(boxes1.is_cuda(), "sparseyolo::box_iou: the CUDA kernel got a ", boxes1.device(), " tensor");
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const auto a = boxes1.contiguous();
  const auto b = boxes2.contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  auto out = at::empty({n, m}, a.options());
  if (n == 0 || m == 0) return out;
  TORCH_CHECK(n <= int64_t(65535) * 32, "sparseyolo::box_iou: boxes1 has ", n,
              " boxes; the CUDA kernel takes at most 2097120, split the call");
  const auto err = kernels::box_iou_cuda(a.const_data_ptr(), n, b.const_data_ptr(), m, out.mutable_data_ptr(),
                                         to_kernel_dtype(a.scalar_type()), c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::box_iou");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CUDA, m) {
  m.impl("box_iou", TORCH_FN(box_iou_cuda));
}

}  // namespace ops
}  // namespace sparseyolo
