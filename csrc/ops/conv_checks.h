// Geometry and epilogue checks shared by the convolution ops (sparse_conv2d, sparse_conv2d_24), so every
// conv op words the same mistake the same way.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace sparseyolo {
namespace ops {

// Checks kernel_size / stride / padding (two ints each) and the fused activation; returns true for "silu",
// false for "identity".
inline bool check_conv_geometry(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, c10::string_view activation) {
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] >= 1 && kernel_size[1] >= 1, op,
              ": kernel_size should be two positive ints, got ", kernel_size);
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, op, ": stride should be two positive ints, got ",
              stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": padding should be two non-negative ints, got ", padding);
  TORCH_CHECK(activation == "identity" || activation == "silu", op,
              ": activation should be 'identity' or 'silu', got '", std::string(activation), "'");
  return activation == "silu";
}

// The packed weight's input channels, when the caller knows them (in_channels >= 0): the packed formats
// cannot tell Cin apart from a larger input whose extra channels the weight never reads, so without this check
// an input with more channels than the weight would be accepted, where a dense conv raises.
inline void check_conv_in_channels(const char* op, const at::Tensor& input, int64_t in_channels) {
  TORCH_CHECK(in_channels >= -1, op, ": in_channels should be the packed weight's Cin, or -1 (not checked), got ",
              in_channels);
  TORCH_CHECK(in_channels < 0 || input.size(1) == in_channels, op, ": input has ", input.size(1),
              " channels but the packed weight expects in_channels = ", in_channels,
              " (was the weight packed for another layer?)");
}

}  // namespace ops
}  // namespace sparseyolo
