// Input checks of sparseyolo::block_sparse_conv2d, shared by its backends (the fake kernel in
// sparseyolo/_meta_registrations.py repeats them with the same messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "conv_checks.h"

namespace sparseyolo {
namespace ops {

constexpr int64_t kBlockSparseBlock = 16;  // output channels per block (kernels::kBsBlock)

// Returns the gather (0 plain, 1 pairs24, 2 tiles32: kernels::BsGather); *silu for the activation.
inline int check_block_sparse_conv2d_inputs(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& taps,
                                             const at::Tensor& block_ptr, int64_t in_channels, int64_t out_channels,
                                             at::IntArrayRef kernel_size, const c10::optional<at::Tensor>& bias,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             c10::string_view activation, c10::string_view gather, bool* silu) {
  const char* op = "sparseyolo::block_sparse_conv2d";
  TORCH_CHECK(input.dim() == 4, op, ": input should be a 4D tensor [N, Cin, H, W], got ", input.dim(), "D");
  const bool bf16 = input.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || input.scalar_type() == at::kFloat, op, ": input should be float32 or bfloat16, got ",
              input.scalar_type());
  TORCH_CHECK(in_channels >= 1 && out_channels >= 1, op, ": in_channels and out_channels should be positive, got ",
              in_channels, " and ", out_channels);
  TORCH_CHECK(input.size(1) == in_channels, op, ": input has ", input.size(1), " channels, the packed weight expects ",
              in_channels);
  TORCH_CHECK(gather == "plain" || gather == "pairs24" || gather == "tiles32", op,
              ": gather should be 'plain', 'pairs24' or 'tiles32', got '", std::string(gather), "'");
  const int mode = gather == "plain" ? 0 : gather == "pairs24" ? 1 : 2;
  TORCH_CHECK(mode == 0 || bf16, op, ": gather '", std::string(gather), "' is for bfloat16 inputs, got ",
              input.scalar_type());
  const int64_t multiple = mode == 1 ? 4 : 2;
  TORCH_CHECK(!bf16 || mode == 2 || in_channels % multiple == 0, op, ": bfloat16 with gather '", std::string(gather),
              "' needs in_channels divisible by ", multiple, ", got ", in_channels);
  const at::ScalarType wtype = bf16 ? at::kBFloat16 : at::kFloat;
  // fp32 [U, 16]; bf16 [U, 16, 2] (pairs); tiles32 [U, 16, 16, 2] (16 pairs of 16 channels, AMX's B tile)
  const char* wshape = !bf16 ? "[units, 16]" : mode == 2 ? "[units, 16, 16, 2]" : "[units, 16, 2]";
  const bool shape_ok = !bf16   ? weight.dim() == 2 && weight.size(1) == kBlockSparseBlock
                        : mode == 2 ? weight.dim() == 4 && weight.size(1) == 16 && weight.size(2) == kBlockSparseBlock &&
                                          weight.size(3) == 2
                                    : weight.dim() == 3 && weight.size(1) == kBlockSparseBlock && weight.size(2) == 2;
  TORCH_CHECK(weight.scalar_type() == wtype && shape_ok, op, ": weight should be ", wtype, " ", wshape,
              " for a ", input.scalar_type(), " input with gather '", std::string(gather), "', got ",
              weight.scalar_type(), " ", weight.sizes());
  TORCH_CHECK(taps.dim() == 1 && taps.scalar_type() == at::kInt && taps.numel() == weight.size(0), op,
              ": taps should be a 1D int32 tensor of one entry per weight unit (", weight.size(0), "), got ",
              taps.dim(), "D ", taps.scalar_type(), " with ", taps.numel(), " entries");
  const int64_t nb = (out_channels + kBlockSparseBlock - 1) / kBlockSparseBlock;
  TORCH_CHECK(block_ptr.dim() == 1 && block_ptr.scalar_type() == at::kLong && block_ptr.numel() == nb + 1, op,
              ": block_ptr should be a 1D int64 tensor of ceil(out_channels / 16) + 1 = ", nb + 1, " entries, got ",
              block_ptr.dim(), "D ", block_ptr.scalar_type(), " with ", block_ptr.numel(), " entries");
  *silu = check_conv_geometry(op, kernel_size, stride, padding, activation);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == out_channels && bias->scalar_type() == at::kFloat, op,
                ": bias should be a float32 tensor of out_channels = ", out_channels, " entries, got ", bias->sizes(),
                " ", bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), op, ": bias should be on the input's device ", input.device(),
                ", got ", bias->device());
  }
  for (const at::Tensor* t : {&weight, &taps, &block_ptr}) {
    TORCH_CHECK(t->device() == input.device(), op, ": packed weights should be on the input's device ",
                input.device(), ", got ", t->device());
  }
  const int64_t hp = input.size(2) + 2 * padding[0], wp = input.size(3) + 2 * padding[1];
  TORCH_CHECK(hp >= kernel_size[0] && wp >= kernel_size[1], op, ": padded input ", hp, "x", wp,
              " is smaller than the kernel ", kernel_size[0], "x", kernel_size[1]);
  return mode;
}

}  // namespace ops
}  // namespace sparseyolo
