// CUDA backend of sparseyolo::sparse_conv2d_24: torch checks, device guard, stream and layouts here; the
// mma.sp kernels are torch-free in kernels/cuda/sparse_conv2d_24_device.cuh.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../../kernels/cuda/sparse_conv2d_24.h"
#include "../sparse_conv2d_24.h"
#include "cuda_utils.h"

namespace sparseyolo {
namespace ops {
namespace {

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

at::Tensor sparse_conv2d_24_cuda(const at::Tensor& input, const at::Tensor& values, const at::Tensor& meta,
                                 int64_t out_channels, at::IntArrayRef kernel_size,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, c10::string_view activation, c10::string_view kernel,
                                 int64_t in_channels) {
  const char* op = "sparseyolo::sparse_conv2d_24";
  const bool silu = check_sparse_conv2d_24_inputs(input, values, meta, out_channels, kernel_size, bias, stride,
                                                  padding, activation, kernel, in_channels);
  TORCH_CHECK(input.is_cuda(), op, ": the CUDA kernel got a ", input.device(), " tensor");
  const c10::cuda::CUDAGuard guard(input.device());
  TORCH_CHECK(kernels::sparse_conv24_supported(input.get_device()), op,
              ": needs a GPU with sparse tensor cores (compute capability 8.0 or newer); run the layer dense");
  at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  if (!aligned16(x)) x = x.clone(at::MemoryFormat::ChannelsLast);  // a view at an odd offset
  at::Tensor v = values.contiguous(), md = meta.contiguous();
  if (!aligned16(v)) v = v.clone();
  if (!aligned16(md)) md = md.clone();  // the tile128 kernel copies metadata 16 bytes at a time
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ho = (h + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  const int64_t wo = (w + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  auto out = at::empty({n, out_channels, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  TORCH_CHECK(x.numel() < (int64_t(1) << 31) * 8 && n * ho * wo < (int64_t(1) << 31), op,
              ": input too large for one launch");
  kernels::SparseConv24Params p{};
  p.input = x.const_data_ptr();
  p.values = v.const_data_ptr();
  p.meta = reinterpret_cast<const uint32_t*>(md.const_data_ptr<int32_t>());
  p.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  p.output = out.mutable_data_ptr();
  p.n = static_cast<int>(n);
  p.h = static_cast<int>(h);
  p.w = static_cast<int>(w);
  p.cin = static_cast<int>(cin);
  p.cout = static_cast<int>(out_channels);
  p.kh = static_cast<int>(kernel_size[0]);
  p.kw = static_cast<int>(kernel_size[1]);
  p.stride_h = static_cast<int>(stride[0]);
  p.stride_w = static_cast<int>(stride[1]);
  p.pad_h = static_cast<int>(padding[0]);
  p.pad_w = static_cast<int>(padding[1]);
  p.ho = static_cast<int>(ho);
  p.wo = static_cast<int>(wo);
  p.silu = silu;
  p.variant = sparse_conv2d_24_variant(kernel);
  TORCH_CHECK(kernels::sparse_conv24_variant_supported(p.variant, input.get_device()), op, ": kernel '",
              std::string(kernel), "' needs an sm_90 GPU (Hopper); use 'tile64' ('default') on this one");
  TORCH_CHECK(kernels::sparse_conv24_variant_built(p.variant), op, ": kernel '", std::string(kernel),
              "' is experimental (not yet run correctly on a GPU) and not in this build; rebuild with "
              "SPARSEYOLO_EXPERIMENTAL_GPU=1, or use 'tile64' ('default')");
  check_launch(kernels::sparse_conv24_cuda(p, to_kernel_dtype(x.scalar_type()), c10::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CUDA, m) {
  m.impl("sparse_conv2d_24", TORCH_FN(sparse_conv2d_24_cuda));
}

}  // namespace ops
}  // namespace sparseyolo
