// CPU backend of sparseyolo::sparse_conv2d_24: the reference. It decodes the mma.sp fragment-order weight
// (format in kernels/cuda/sparse_conv2d_24.h) back to a dense float32 weight, bit by bit as the tensor cores
// read it, and runs a float32 dense convolution; the result is rounded once to the input's dtype, as the CUDA
// kernel's fp32 accumulators are. Slow by design: it exists so the op can be tested and traced without a GPU.
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>

#include "../sparse_conv2d_24.h"

namespace sparseyolo {
namespace ops {
namespace {

// Every 4-bit code of the metadata names the two kept positions of a group of 4, ascending: 0b0100 (0, 1),
// 0b1000, 0b1100, 0b1001, 0b1101, 0b1110. Other codes (equal or descending positions) are undefined for
// mma.sp, and decoding them would silently drop or overwrite values, so the reference refuses them.
void check_meta_codes(const at::Tensor& meta) {
  const auto md = meta.contiguous();
  const int32_t* mp = md.const_data_ptr<int32_t>();
  for (int64_t i = 0; i < md.numel(); ++i) {
    const uint32_t word = static_cast<uint32_t>(mp[i]);
    for (int nib = 0; nib < 8; ++nib) {
      const uint32_t code = (word >> (4 * nib)) & 0xFu;
      TORCH_CHECK((code & 3u) < (code >> 2), "sparseyolo::sparse_conv2d_24: meta should hold ascending 2-bit "
                  "position pairs (pack with sparseyolo.sparse.pack_mma_sp_weight), got the code ", code,
                  " in word ", i, " (", word, ")");
    }
  }
}

// values [MT, KB, 32, 8], meta [MT, KB, 16] -> dense [Cout, Cin, KH, KW] float32.
at::Tensor decode_mma_sp_weight(const at::Tensor& values, const at::Tensor& meta, int64_t cout, int64_t cin,
                                int64_t kh, int64_t kw) {
  const auto v = values.to(at::kFloat).contiguous();
  const auto md = meta.contiguous();
  const int64_t mt_count = v.size(0), kb_count = v.size(1), cin_pad = (cin + 31) / 32 * 32;
  const float* vp = v.const_data_ptr<float>();
  const int32_t* mp = md.const_data_ptr<int32_t>();
  auto w = at::zeros({cout, cin, kh, kw}, v.options());
  float* wp = w.mutable_data_ptr<float>();
  for (int64_t mt = 0; mt < mt_count; ++mt) {
    for (int64_t kb = 0; kb < kb_count; ++kb) {
      const int64_t frag = mt * kb_count + kb;
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int e = 0; e < 8; ++e) {
          const int r = e >> 1, h = e & 1;
          const int row = g + 8 * (r & 1);           // A fragment row of register r
          const int ccol = 2 * t + h + 8 * (r >> 1);  // compressed column
          const int group = ccol >> 1;                // dense 4-column group within the 32-column block
          // Selector 0: lane 4*(row % 8) + group / 4 supplies this row's metadata for these columns.
          const uint32_t word = static_cast<uint32_t>(mp[frag * 16 + 2 * (row & 7) + (group >> 2)]);
          const int bit = 16 * (row >= 8) + 4 * (group & 3) + 2 * (ccol & 1);
          const int idx = static_cast<int>((word >> bit) & 3u);
          const int64_t co = mt * 16 + row;
          const int64_t k = kb * 32 + 4 * group + idx;  // dense k = tap * Cin_pad + c
          const int64_t tap = k / cin_pad, c = k % cin_pad;
          if (co >= cout || c >= cin) continue;  // padding
          wp[((co * cin + c) * kh + tap / kw) * kw + tap % kw] = vp[(frag * 32 + lane) * 8 + e];
        }
      }
    }
  }
  return w;
}

at::Tensor sparse_conv2d_24_cpu(const at::Tensor& input, const at::Tensor& values, const at::Tensor& meta,
                                int64_t out_channels, at::IntArrayRef kernel_size,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, c10::string_view activation, c10::string_view kernel,
                                int64_t in_channels) {
  // `kernel` picks among the CUDA kernels; this reference backend checks it and has only one way to compute.
  const bool silu = check_sparse_conv2d_24_inputs(input, values, meta, out_channels, kernel_size, bias, stride,
                                                  padding, activation, kernel, in_channels);
  check_meta_codes(meta);
  const auto w = decode_mma_sp_weight(values, meta, out_channels, input.size(1), kernel_size[0], kernel_size[1]);
  auto y = at::conv2d(input.to(at::kFloat), w, bias, stride, padding);
  if (silu) y = at::silu(y);
  return y.to(input.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("sparse_conv2d_24", TORCH_FN(sparse_conv2d_24_cpu));
}

}  // namespace ops
}  // namespace sparseyolo
