// Input checks shared by every backend of the N:M sparsity ops, so CPU and CUDA fail the same way (the
// fake kernels in sparseyolo/_meta_registrations.py repeat them with the same messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../kernels/nm_sparsity.h"

namespace sparseyolo {
namespace ops {

inline void check_nm_pattern(int64_t n, int64_t m, const char* op) {
  TORCH_CHECK(n >= 1 && n < m && m <= kernels::kNmMaxM, op, ": need 1 <= n < m <= ", kernels::kNmMaxM,
              " (keep n of every m), got n=", n, ", m=", m);
}

inline void check_nm_float(const at::Tensor& t, const char* what, const char* op) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op, ": ", what,
              " should be float32, float64, float16 or bfloat16, got ", s);
}

inline void check_nm_mask_inputs(const at::Tensor& weight, int64_t n, int64_t m) {
  const char* op = "sparseyolo::nm_mask";
  check_nm_pattern(n, m, op);
  check_nm_float(weight, "weight", op);
  TORCH_CHECK(weight.dim() >= 2, op, ": weight should have at least 2 dims (groups run along dim 1), got ",
              weight.dim(), "D");
  TORCH_CHECK(weight.size(1) % m == 0, op, ": weight.size(1) (input channels) = ", weight.size(1),
              " is not a multiple of m = ", m);
}

inline void check_nm_compress_inputs(const at::Tensor& weight, int64_t n, int64_t m,
                                     const c10::optional<at::Tensor>& mask) {
  const char* op = "sparseyolo::nm_compress";
  check_nm_pattern(n, m, op);
  check_nm_float(weight, "weight", op);
  TORCH_CHECK(weight.dim() >= 1, op, ": weight should have at least 1 dim (groups run along the last), got 0D");
  TORCH_CHECK(weight.size(-1) % m == 0, op, ": weight.size(-1) = ", weight.size(-1), " is not a multiple of m = ", m);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask should be a bool tensor, got ", mask->scalar_type());
    TORCH_CHECK(mask->sizes() == weight.sizes(), op, ": mask should have the shape of weight ", weight.sizes(),
                ", got ", mask->sizes());
    TORCH_CHECK(mask->device() == weight.device(), op, ": mask and weight should be on the same device, got ",
                mask->device(), " and ", weight.device());
  }
}

inline void check_nm_decompress_inputs(const at::Tensor& values, const at::Tensor& indices, int64_t n, int64_t m) {
  const char* op = "sparseyolo::nm_decompress";
  check_nm_pattern(n, m, op);
  TORCH_CHECK(values.dim() >= 1, op, ": values should have at least 1 dim, got 0D");
  TORCH_CHECK(indices.scalar_type() == at::kByte, op, ": indices should be uint8, got ", indices.scalar_type());
  TORCH_CHECK(indices.sizes() == values.sizes(), op, ": indices should have the shape of values ", values.sizes(),
              ", got ", indices.sizes());
  TORCH_CHECK(values.size(-1) % n == 0, op, ": values.size(-1) = ", values.size(-1), " is not a multiple of n = ", n);
  TORCH_CHECK(indices.device() == values.device(), op, ": values and indices should be on the same device, got ",
              values.device(), " and ", indices.device());
  const auto es = values.element_size();
  TORCH_CHECK(es == 1 || es == 2 || es == 4 || es == 8, op, ": values of dtype ", values.scalar_type(),
              " are not supported");
  if (values.numel() == 0) return;
  // Positions must lie in [0, m) and increase within a group (a valid nm_compress output); checked on a host
  // copy so both backends agree (decompression runs at load time; the copy is a fraction of the weight).
  const auto idx = indices.reshape({-1, n}).cpu();
  TORCH_CHECK(idx.max().item<int64_t>() < m, op, ": indices should be positions in [0, m) = [0, ", m,
              "), got ", idx.max().item<int64_t>());
  if (n > 1) {
    TORCH_CHECK(idx.narrow(1, 1, n - 1).gt(idx.narrow(1, 0, n - 1)).all().item<bool>(), op,
                ": indices should increase within each group of n = ", n, " (as nm_compress writes them)");
  }
}

inline void check_apply_masks_inputs(at::TensorList tensors, at::TensorList masks) {
  const char* op = "sparseyolo::apply_masks_";
  TORCH_CHECK(tensors.size() == masks.size(), op, ": got ", tensors.size(), " tensors but ", masks.size(), " masks");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const auto& mk = masks[i];
    TORCH_CHECK(mk.scalar_type() == at::kBool, op, ": masks[", i, "] should be a bool tensor, got ", mk.scalar_type());
    TORCH_CHECK(mk.sizes() == t.sizes(), op, ": masks[", i, "] should have the shape of tensors[", i, "] ", t.sizes(),
                ", got ", mk.sizes());
    TORCH_CHECK(mk.device() == t.device(), op, ": tensors[", i, "] and masks[", i,
                "] should be on the same device, got ", t.device(), " and ", mk.device());
    TORCH_CHECK(t.device() == tensors[0].device(), op, ": all tensors should be on one device, got ",
                tensors[0].device(), " and ", t.device());
    const auto es = t.element_size();
    TORCH_CHECK(es == 1 || es == 2 || es == 4 || es == 8, op, ": tensors[", i, "] of dtype ", t.scalar_type(),
                " is not supported");
  }
}

}  // namespace ops
}  // namespace sparseyolo
