// CUDA backend of the N:M sparsity ops: torch checks, device guard and stream here; the kernels are
// torch-free in kernels/cuda/nm_sparsity.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../../kernels/cuda/nm_sparsity.h"
#include "../nm_sparsity.h"
#include "cuda_utils.h"

namespace sparseyolo {
namespace ops {
namespace {

void check_on_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.is_cuda(), op, ": the CUDA kernel got a ", t.device(), " tensor");
}

at::Tensor nm_mask_cuda(const at::Tensor& weight, int64_t n, int64_t m) {
  check_nm_mask_inputs(weight, n, m);
  check_on_cuda(weight, "sparseyolo::nm_mask");
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto w = weight.contiguous();
  auto mask = at::empty(w.sizes(), w.options().dtype(at::kBool));
  if (w.numel() == 0) return mask;
  const int64_t rows = w.size(0), groups = w.size(1) / m, inner = w.numel() / (w.size(0) * w.size(1));
  const auto err = kernels::nm_mask_cuda(w.const_data_ptr(), mask.mutable_data_ptr<bool>(), rows, groups, inner,
                                         static_cast<int>(n), static_cast<int>(m), to_kernel_dtype(w.scalar_type()),
                                         c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::nm_mask");
  return mask;
}

std::tuple<at::Tensor, at::Tensor> nm_compress_cuda(const at::Tensor& weight, int64_t n, int64_t m,
                                                    const c10::optional<at::Tensor>& mask) {
  check_nm_compress_inputs(weight, n, m, mask);
  check_on_cuda(weight, "sparseyolo::nm_compress");
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto w = weight.contiguous();
  std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
  shape.back() = shape.back() / m * n;
  auto values = at::empty(shape, w.options());
  auto indices = at::empty(shape, w.options().dtype(at::kByte));
  if (w.numel() == 0) return {values, indices};
  at::Tensor prio;
  if (mask.has_value()) prio = mask->contiguous();
  const int64_t k = w.size(-1), rows = w.numel() / k;
  const auto err = kernels::nm_compress_cuda(
      w.const_data_ptr(), prio.defined() ? prio.const_data_ptr<bool>() : nullptr, rows, k, static_cast<int>(n),
      static_cast<int>(m), values.mutable_data_ptr(), indices.mutable_data_ptr<uint8_t>(),
      to_kernel_dtype(w.scalar_type()), c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::nm_compress");
  return {values, indices};
}

at::Tensor nm_decompress_cuda(const at::Tensor& values, const at::Tensor& indices, int64_t n, int64_t m) {
  check_on_cuda(values, "sparseyolo::nm_decompress");
  const c10::cuda::CUDAGuard guard(values.device());
  check_nm_decompress_inputs(values, indices, n, m);
  const auto v = values.contiguous();
  const auto idx = indices.contiguous();
  std::vector<int64_t> shape(v.sizes().begin(), v.sizes().end());
  shape.back() = shape.back() / n * m;
  auto out = at::empty(shape, v.options());
  if (v.numel() == 0) return out;
  const int64_t k = out.size(-1), rows = out.numel() / k;
  const auto err = kernels::nm_decompress_cuda(v.const_data_ptr(), idx.const_data_ptr<uint8_t>(), rows, k,
                                               static_cast<int>(n), static_cast<int>(m), out.mutable_data_ptr(),
                                               static_cast<int>(v.element_size()), c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::nm_decompress");
  return out;
}

void apply_masks_cuda(at::TensorList tensors, at::TensorList masks) {
  check_apply_masks_inputs(tensors, masks);
  if (tensors.empty()) return;
  check_on_cuda(tensors[0], "sparseyolo::apply_masks_");
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  // Keep contiguous copies (of non-contiguous tensors, and of masks) alive until the launch is queued.
  std::vector<at::Tensor> work, mask_work;
  std::vector<kernels::MaskedTensor> items;
  work.reserve(tensors.size());
  mask_work.reserve(tensors.size());
  items.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    work.push_back(tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous());
    mask_work.push_back(masks[i].contiguous());
    items.push_back({work.back().mutable_data_ptr(), mask_work.back().const_data_ptr<bool>(), work.back().numel(),
                     static_cast<int>(work.back().element_size())});
  }
  const auto err = kernels::apply_masks_cuda(items.data(), static_cast<int64_t>(items.size()),
                                             c10::cuda::getCurrentCUDAStream());
  check_launch(err, "sparseyolo::apply_masks_");
  // Non-contiguous tensors (rare: a channels_last weight) get their masked copy back, one copy each.
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) {
      at::Tensor t = tensors[i];
      t.copy_(work[i]);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CUDA, m) {
  m.impl("nm_mask", TORCH_FN(nm_mask_cuda));
  m.impl("nm_compress", TORCH_FN(nm_compress_cuda));
  m.impl("nm_decompress", TORCH_FN(nm_decompress_cuda));
  m.impl("apply_masks_", TORCH_FN(apply_masks_cuda));
}

}  // namespace ops
}  // namespace sparseyolo
