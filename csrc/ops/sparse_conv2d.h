// Input checks of sparseyolo::sparse_conv2d, shared by its backends (the fake kernel in
// sparseyolo/_meta_registrations.py repeats them with the same messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "conv_checks.h"

namespace sparseyolo {
namespace ops {

// Returns true for activation "silu", false for "identity".
inline bool check_sparse_conv2d_inputs(const at::Tensor& input, const at::Tensor& values, const at::Tensor& columns,
                                       const at::Tensor& row_ptr, at::IntArrayRef kernel_size,
                                       const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, c10::string_view activation,
                                       int64_t in_channels) {
  const char* op = "sparseyolo::sparse_conv2d";
  TORCH_CHECK(input.dim() == 4, op, ": input should be a 4D tensor [N, Cin, H, W], got ", input.dim(), "D");
  check_conv_in_channels(op, input, in_channels);
  TORCH_CHECK(input.scalar_type() == at::kFloat, op, ": input should be float32, got ", input.scalar_type());
  TORCH_CHECK(values.dim() == 1 && values.scalar_type() == at::kFloat, op,
              ": values should be a 1D float32 tensor (the packed nonzeros), got ", values.dim(), "D ",
              values.scalar_type());
  TORCH_CHECK(columns.dim() == 1 && columns.scalar_type() == at::kInt, op,
              ": columns should be a 1D int32 tensor, got ", columns.dim(), "D ", columns.scalar_type());
  TORCH_CHECK(columns.numel() == values.numel(), op, ": columns and values should have one entry per nonzero, got ",
              columns.numel(), " and ", values.numel());
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.scalar_type() == at::kLong && row_ptr.numel() >= 2, op,
              ": row_ptr should be a 1D int64 tensor of Cout + 1 >= 2 entries, got ", row_ptr.dim(), "D ",
              row_ptr.scalar_type(), " with ", row_ptr.numel(), " entries");
  const bool silu = check_conv_geometry(op, kernel_size, stride, padding, activation);
  const int64_t cout = row_ptr.numel() - 1;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == cout && bias->scalar_type() == at::kFloat, op,
                ": bias should be a float32 tensor of Cout = ", cout, " entries, got ", bias->sizes(), " ",
                bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), op, ": bias should be on the input's device ", input.device(),
                ", got ", bias->device());
  }
  for (const at::Tensor* t : {&values, &columns, &row_ptr}) {
    TORCH_CHECK(t->device() == input.device(), op, ": packed weights should be on the input's device ",
                input.device(), ", got ", t->device());
  }
  const int64_t hp = input.size(2) + 2 * padding[0], wp = input.size(3) + 2 * padding[1];
  TORCH_CHECK(hp >= kernel_size[0] && wp >= kernel_size[1], op, ": padded input ", hp, "x", wp,
              " is smaller than the kernel ", kernel_size[0], "x", kernel_size[1]);
  TORCH_CHECK(input.size(1) * kernel_size[0] * kernel_size[1] < (int64_t(1) << 31), op,
              ": Cin * KH * KW should fit int32");
  return silu;
}

}  // namespace ops
}  // namespace sparseyolo
