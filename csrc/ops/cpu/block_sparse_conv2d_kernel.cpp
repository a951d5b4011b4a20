// CPU backend of sparseyolo::block_sparse_conv2d: the input is laid out once per call (kernels/cpu/
// block_sparse_conv2d.h: padded, stride phases, bf16 pairs when the weight needs them), then at::parallel_for
// threads run over (image, pixel-tile range) items, each computing every output block of its tiles. The SIMD path
// (AVX-512 BF16, AVX-512, AVX2/FMA, portable) is chosen per call from cpuid and SPARSEYOLO_CPU_ISA.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "../../kernels/cpu/block_sparse_conv2d.h"
#include "../block_sparse_conv2d.h"

namespace sparseyolo {
namespace ops {
namespace {

namespace k = kernels;

// Work items per thread: enough to even out the last, partly empty, items.
constexpr int64_t kItemsPerThread = 4;

k::CpuIsa current_isa(const char* op) {
  k::CpuIsa cap;
  TORCH_CHECK(k::cpu_isa_env_cap(&cap), op, ": SPARSEYOLO_CPU_ISA should be one of amx, avx512_bf16, avx512, "
              "avx2, portable (or unset), got '", std::getenv("SPARSEYOLO_CPU_ISA"), "'");
  return k::cpu_isa_min(k::cpu_isa_detected(), cap);
}

at::Tensor block_sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& taps,
                                   const at::Tensor& block_ptr, int64_t in_channels, int64_t out_channels,
                                   at::IntArrayRef kernel_size, const c10::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view activation,
                                   c10::string_view gather) {
  const char* op = "sparseyolo::block_sparse_conv2d";
  bool silu = false;
  const auto mode = static_cast<k::BsGather>(check_block_sparse_conv2d_inputs(
      input, weight, taps, block_ptr, in_channels, out_channels, kernel_size, bias, stride, padding, activation,
      gather, &silu));
  const bool bf16 = input.scalar_type() == at::kBFloat16;
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto w = weight.contiguous();
  const auto tp = taps.contiguous();
  const auto bp = block_ptr.contiguous();
  const int64_t n = x.size(0), units = w.size(0);
  const k::BsGeometry g = k::bs_geometry(in_channels, x.size(2), x.size(3), kernel_size[0], kernel_size[1], stride[0],
                                         stride[1], padding[0], padding[1], bf16, mode);
  TORCH_CHECK(g.image_units < (int64_t(1) << 31), op, ": one image needs ", g.image_units,
              " 4-byte units of input buffer, more than int32 offsets address");

  const int64_t* pbp = bp.const_data_ptr<int64_t>();
  const int64_t nb = bp.numel() - 1;
  TORCH_CHECK(pbp[0] == 0 && pbp[nb] == units, op, ": block_ptr should start at 0 and end at the number of units ",
              units, ", got ", pbp[0], " and ", pbp[nb]);
  for (int64_t b = 0; b < nb; ++b) {
    TORCH_CHECK(pbp[b] <= pbp[b + 1], op, ": block_ptr should be non-decreasing, got block_ptr[", b, "] = ", pbp[b],
                " > block_ptr[", b + 1, "] = ", pbp[b + 1]);
  }
  std::vector<int32_t> offsets(static_cast<size_t>(units));
  TORCH_CHECK(k::bs_unit_offsets(g, tp.const_data_ptr<int32_t>(), units, offsets.data()), op,
              ": taps should lie in [0, KH*KW*units_per_tap) = [0, ", g.kh * g.kw * g.cu / k::bs_unit_width(mode),
              ") for this layer; was the weight packed for another layer?");

  int tile = 0;
  const k::CpuIsa isa = current_isa(op);
  k::BsTileFn twin = nullptr;
  const k::BsTileFn fn = k::bs_select(isa, bf16, mode, &tile, &twin);
  // tiles32 off AMX: each unit is 16 pair units at consecutive offsets, its panel already [16][16] pairs.
  std::vector<int64_t> expanded_ptr;
  if (mode == k::BsGather::kTiles32 && tile != 64) {
    std::vector<int32_t> pairs(static_cast<size_t>(units * 16));
    for (int64_t u = 0; u < units; ++u)
      for (int r = 0; r < 16; ++r) pairs[u * 16 + r] = offsets[u] + r;
    offsets.swap(pairs);
    expanded_ptr.resize(static_cast<size_t>(nb + 1));
    for (int64_t i = 0; i <= nb; ++i) expanded_ptr[i] = pbp[i] * 16;
  }

  // Neighbouring blocks with the same units run as twins (two weight vectors per broadcast) where the ISA has it.
  std::vector<uint8_t> twin_start;
  if (twin != nullptr) {
    twin_start.resize(static_cast<size_t>(nb));
    k::bs_twin_starts(expanded_ptr.empty() ? pbp : expanded_ptr.data(), offsets.data(), nb, twin_start.data());
  }

  auto out = at::empty({n, out_channels, g.ho, g.wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();

  // The input laid out on the wide grid (not for 1x1 stride-1 unpadded convs with plain gather: `direct`), by each
  // work item for the rows its own tiles read, into its thread's buffer, just before it computes them: the copy is
  // then read back from L2. A whole-image pass before the tiles wrote the copy out to memory and read it back (on a
  // 64->128 3x3 stride-2 layer at 160x160 the pass alone took a fifth of the layer's time). Each thread keeps its
  // buffer (the largest image layout it has needed) from call to call, allocated without being zeroed: only the
  // pages of the rows its items lay out are ever touched, so with the same split of tiles from call to call the
  // threads together hold about one image's layout, not one each.
  const int64_t in_elem = bf16 ? 2 : 4;
  const char* xin = static_cast<const char*>(x.const_data_ptr());
  const int64_t image_bytes = in_channels * g.h * g.w * in_elem;
  const int64_t tiles = (g.wide_pixels() + tile - 1) / tile;
  const int64_t want = kItemsPerThread * at::get_num_threads();
  // Chunks of tiles / n_chunks tiles, give or take one: the last chunks are never empty, so parallel_for's
  // contiguous share of items is an even share of tiles (a 20x20 layer has 17 tiles of 24 pixels: chunks of
  // ceil(17/8) = 3 left 12 tiles to one thread and 5 to the other, 1.36x from 2 threads where oneDNN got 1.7x).
  const int64_t n_chunks = std::min(tiles, std::max<int64_t>(1, (want + n - 1) / n));

  k::BsArgs args;
  args.g = g;
  args.weight = reinterpret_cast<const uint32_t*>(w.const_data_ptr());
  args.offsets = offsets.data();
  args.block_ptr = expanded_ptr.empty() ? pbp : expanded_ptr.data();
  args.twin_start = twin_start.empty() ? nullptr : twin_start.data();
  args.cout = out_channels;
  args.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  args.silu = silu;
  char* po = static_cast<char*>(out.mutable_data_ptr());
  const int64_t out_image_bytes = out_channels * g.ho * g.wo * in_elem;
  at::parallel_for(0, n * n_chunks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::unique_ptr<uint32_t[]> layout;
    thread_local int64_t layout_units = 0;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t img = item / n_chunks, ch = item % n_chunks;
      const int64_t t0 = ch * tiles / n_chunks, t1 = (ch + 1) * tiles / n_chunks;
      if (t0 >= t1) continue;
      const char* src = xin + img * image_bytes;
      const uint32_t* image = reinterpret_cast<const uint32_t*>(src);
      if (!g.direct) {
        if (layout_units < g.image_units) {
          layout.reset(new uint32_t[static_cast<size_t>(g.image_units)]);  // default-initialised: not touched
          layout_units = g.image_units;
        }
        const auto [r0, r1] = k::bs_tile_rows(g, t0 * tile, t1 * tile);
        for (int64_t phase = 0; phase < g.pa * g.pb; ++phase) {
          if (bf16) {
            k::bs_prepare_rows(g, reinterpret_cast<const uint16_t*>(src), layout.get(), phase * g.hq + r0,
                               phase * g.hq + r1);
          } else {
            k::bs_prepare_rows(g, reinterpret_cast<const float*>(src), layout.get(), phase * g.hq + r0,
                               phase * g.hq + r1);
          }
        }
        image = layout.get();
      }
      k::BsArgs a = args;
      a.output = po + img * out_image_bytes;
      k::bs_run(a, image, t0, t1, fn, tile, twin);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("block_sparse_conv2d", TORCH_FN(block_sparse_conv2d_cpu));
}

}  // namespace ops
}  // namespace sparseyolo
