// CPU backend of sparseyolo::sparse_conv2d: the input is laid out once per call (kernels/cpu/sparse_conv2d.h,
// "wide grid"), then at::parallel_for threads run over (image, pixel block, output-channel block) items; each
// item walks its 32-pixel tiles and, per tile, every output channel of its block (the tile's input stays in
// L1/L2 while the block's nonzeros stream by). AVX2/FMA is chosen at run time, a portable path otherwise.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "../../kernels/cpu/cpu_isa.h"
#include "../../kernels/cpu/sparse_conv2d.h"
#include "../sparse_conv2d.h"

namespace sparseyolo {
namespace ops {
namespace {

namespace k = kernels;

// Nonzeros of one output-channel block: 32K nonzeros are 256 KiB of values + offsets, which stay in L2
// while the block's tiles go by (one pass over them per 32-pixel tile).
constexpr int64_t kBlockNonzeros = 32768;
// Work items per thread: unstructured rows differ in length, so a few items per thread balance the load.
constexpr int64_t kItemsPerThread = 8;

// The AVX2/FMA path runs when the CPU has it and SPARSEYOLO_CPU_ISA (kernels/cpu/cpu_isa.h) does not cap below it.
bool use_avx2(const char* op) {
  k::CpuIsa cap;
  TORCH_CHECK(k::cpu_isa_env_cap(&cap), op, ": SPARSEYOLO_CPU_ISA should be one of amx, avx512_bf16, avx512, "
              "avx2, portable (or unset), got '", std::getenv("SPARSEYOLO_CPU_ISA"), "'");
  return k::spconv_cpu_has_avx2() && static_cast<int>(cap) >= static_cast<int>(k::CpuIsa::kAvx2);
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values, const at::Tensor& columns,
                             const at::Tensor& row_ptr, at::IntArrayRef kernel_size,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             c10::string_view activation, int64_t in_channels) {
  const char* op = "sparseyolo::sparse_conv2d";
  const bool silu = check_sparse_conv2d_inputs(input, values, columns, row_ptr, kernel_size, bias, stride, padding,
                                               activation, in_channels);
  const auto x = input.contiguous();
  const auto vals = values.contiguous();
  const auto cols = columns.contiguous();
  const auto rp = row_ptr.contiguous();
  const int64_t n = x.size(0), cin = x.size(1), cout = rp.numel() - 1, nnz = vals.numel();
  const k::SpconvGeometry g = k::spconv_geometry(cin, x.size(2), x.size(3), kernel_size[0], kernel_size[1],
                                                 stride[0], stride[1], padding[0], padding[1]);
  TORCH_CHECK(g.buffer_size < (int64_t(1) << 31), op, ": one image needs ", g.buffer_size,
              " floats of input buffer, more than int32 offsets address");

  const int64_t* prp = rp.const_data_ptr<int64_t>();
  TORCH_CHECK(prp[0] == 0 && prp[cout] == nnz, op, ": row_ptr should start at 0 and end at the number of nonzeros ",
              nnz, ", got ", prp[0], " and ", prp[cout]);
  for (int64_t c = 0; c < cout; ++c) {
    TORCH_CHECK(prp[c] <= prp[c + 1], op, ": row_ptr should be non-decreasing, got row_ptr[", c, "] = ", prp[c],
                " > row_ptr[", c + 1, "] = ", prp[c + 1]);
  }

  auto out = at::empty({n, cout, g.ho, g.wo}, x.options());
  if (out.numel() == 0) return out;
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();

  // Column -> offset for this input size, and each row's nonzero range per reduction block.
  const int64_t table_size = cin * g.kh * g.kw;
  std::vector<int32_t> table(static_cast<size_t>(table_size));
  k::spconv_offset_table(g, table.data());
  const int64_t nkb = (cin + g.kblock - 1) / g.kblock;
  std::vector<int32_t> offsets(static_cast<size_t>(nnz));
  std::vector<int64_t> seg(static_cast<size_t>(cout * (nkb + 1)));
  std::atomic<bool> columns_ok{true};
  at::parallel_for(0, cout, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, nnz / cout)), [&](int64_t r0, int64_t r1) {
    if (!k::spconv_index_rows(g, table.data(), prp, cols.const_data_ptr<int32_t>(), offsets.data(), seg.data(), r0,
                              r1)) {
      columns_ok = false;
    }
  });
  TORCH_CHECK(columns_ok.load(), op, ": columns should increase within each row and lie in [0, Cin*KH*KW) = [0, ",
              table_size, ") for this input (Cin = ", cin, "); was the weight packed for another layer?");
  // Groups of 4 output channels with identical columns run together (one input load, 4 FMAs).
  std::vector<uint8_t> block4(static_cast<size_t>((cout + 3) / 4));
  k::spconv_find_blocks(prp, cols.const_data_ptr<int32_t>(), cout, block4.data());

  // Input laid out on the wide grid (skipped for 1x1 stride-1 unpadded convs).
  at::Tensor buffer;
  const float* base = x.const_data_ptr<float>();
  if (!g.direct) {
    buffer = at::empty({n, g.buffer_size}, x.options());
    float* pb = buffer.mutable_data_ptr<float>();
    at::parallel_for(0, n * cin, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t img = i / cin, c = i % cin;
        float* buf = pb + img * g.buffer_size;
        k::spconv_prepare_input(g, base + img * cin * g.h * g.w, buf, c, c + 1);
        if (c == cin - 1) std::fill(buf + cin * g.channel_stride, buf + g.buffer_size, 0.f);
      }
    });
    base = buffer.const_data_ptr<float>();
  }
  const int64_t in_stride = g.direct ? cin * g.h * g.w : g.buffer_size;

  // Work items: (image, pixel block, channel block).
  const int64_t avg_row = std::max<int64_t>(1, nnz / cout);
  int64_t n_chunks = std::max<int64_t>(1, (cout * avg_row + kBlockNonzeros - 1) / kBlockNonzeros);
  n_chunks = std::min(n_chunks, cout);
  const int64_t chunk = ((cout + n_chunks - 1) / n_chunks + 3) / 4 * 4;  // whole output-channel blocks
  n_chunks = (cout + chunk - 1) / chunk;
  const int64_t tiles = g.tiles();
  const int64_t want = kItemsPerThread * at::get_num_threads();
  const int64_t n_blocks = std::min(tiles, std::max<int64_t>(1, (want + n * n_chunks - 1) / (n * n_chunks)));

  const bool avx2 = use_avx2(op);
  k::SpconvArgs args;
  args.g = g;
  args.values = vals.const_data_ptr<float>();
  args.offsets = offsets.data();
  args.seg = seg.data();
  args.nkb = nkb;
  args.block4 = block4.data();
  args.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  args.act = silu ? k::SpconvAct::kSilu : k::SpconvAct::kIdentity;
  float* po = out.mutable_data_ptr<float>();
  at::parallel_for(0, n * n_blocks * n_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ch = item % n_chunks, blk = (item / n_chunks) % n_blocks, img = item / (n_chunks * n_blocks);
      k::SpconvArgs a = args;
      a.input = base + img * in_stride;
      a.output = po + img * cout * g.ho * g.wo;
      // tiles / n_blocks tiles each, give or take one (ceil-sized blocks left the last ones empty and one thread
      // idle for part of a small layer)
      const int64_t t0 = blk * tiles / n_blocks, t1 = (blk + 1) * tiles / n_blocks;
      const int64_t c0 = ch * chunk, c1 = std::min(cout, c0 + chunk);
      if (t0 < t1) k::spconv_block(a, c0, c1, t0, t1, avx2);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("sparse_conv2d", TORCH_FN(sparse_conv2d_cpu));
}

}  // namespace ops
}  // namespace sparseyolo
