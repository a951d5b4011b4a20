// Input checks of sparseyolo::sparse_conv2d_24, shared by its backends (the fake kernel in
// sparseyolo/_meta_registrations.py repeats them with the same messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "conv_checks.h"

namespace sparseyolo {
namespace ops {

inline int64_t sparse_conv2d_24_row_tiles(int64_t cout) { return (cout + 63) / 64 * 4; }
inline int64_t sparse_conv2d_24_k_blocks(int64_t cin, int64_t kh, int64_t kw) { return kh * kw * ((cin + 31) / 32); }

// The CUDA kernel named by the op's `kernel` argument: its index is kernels::kVariant* (kernels/cuda/
// sparse_conv2d_24.h), in this order.
constexpr const char* kSparseConv2d24Kernels[] = {"default",     "tile64", "tile128",       "tile128x256",
                                                  "tile256x128", "wgmma",  "wgmma_overlap", "wgmma64"};

inline int sparse_conv2d_24_variant(c10::string_view kernel) {
  for (int i = 0; i < 8; ++i)
    if (kernel == kSparseConv2d24Kernels[i]) return i;
  TORCH_CHECK(false, "sparseyolo::sparse_conv2d_24: kernel should be one of 'default', 'tile64', 'tile128', "
              "'tile128x256', 'tile256x128', 'wgmma', 'wgmma_overlap', 'wgmma64', got '", std::string(kernel), "'");
  return 0;
}

// Returns true for activation "silu", false for "identity".
inline bool check_sparse_conv2d_24_inputs(const at::Tensor& input, const at::Tensor& values, const at::Tensor& meta,
                                          int64_t out_channels, at::IntArrayRef kernel_size,
                                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                          at::IntArrayRef padding, c10::string_view activation,
                                          c10::string_view kernel, int64_t in_channels) {
  const char* op = "sparseyolo::sparse_conv2d_24";
  sparse_conv2d_24_variant(kernel);
  TORCH_CHECK(input.dim() == 4, op, ": input should be a 4D tensor [N, Cin, H, W], got ", input.dim(), "D");
  check_conv_in_channels(op, input, in_channels);
  TORCH_CHECK(input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16, op,
              ": input should be float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK(input.size(1) % 8 == 0, op, ": input channels should be a multiple of 8, got ", input.size(1),
              " (run such a layer dense)");
  const bool silu = check_conv_geometry(op, kernel_size, stride, padding, activation);
  TORCH_CHECK(out_channels >= 1, op, ": out_channels should be positive, got ", out_channels);
  const int64_t mt = sparse_conv2d_24_row_tiles(out_channels);
  const int64_t kb = sparse_conv2d_24_k_blocks(input.size(1), kernel_size[0], kernel_size[1]);
  TORCH_CHECK(values.dim() == 4 && values.size(0) == mt && values.size(1) == kb && values.size(2) == 32 &&
                  values.size(3) == 8,
              op, ": values should be [", mt, ", ", kb, ", 32, 8] for out_channels ", out_channels,
              ", Cin ", input.size(1), " and kernel ", kernel_size, " (pack with sparseyolo.sparse.pack_mma_sp_weight), "
              "got ", values.sizes());
  TORCH_CHECK(values.scalar_type() == input.scalar_type(), op, ": values should have the input's dtype ",
              input.scalar_type(), ", got ", values.scalar_type());
  TORCH_CHECK(meta.dim() == 3 && meta.size(0) == mt && meta.size(1) == kb && meta.size(2) == 16 &&
                  meta.scalar_type() == at::kInt,
              op, ": meta should be an int32 tensor [", mt, ", ", kb, ", 16], got ", meta.sizes(), " ",
              meta.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == out_channels && bias->scalar_type() == at::kFloat, op,
                ": bias should be a float32 tensor of Cout = ", out_channels, " entries, got ", bias->sizes(), " ",
                bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), op, ": bias should be on the input's device ", input.device(),
                ", got ", bias->device());
  }
  for (const at::Tensor* t : {&values, &meta}) {
    TORCH_CHECK(t->device() == input.device(), op, ": packed weights should be on the input's device ",
                input.device(), ", got ", t->device());
  }
  const int64_t hp = input.size(2) + 2 * padding[0], wp = input.size(3) + 2 * padding[1];
  TORCH_CHECK(hp >= kernel_size[0] && wp >= kernel_size[1], op, ": padded input ", hp, "x", wp,
              " is smaller than the kernel ", kernel_size[0], "x", kernel_size[1]);
  return silu;
}

}  // namespace ops
}  // namespace sparseyolo
