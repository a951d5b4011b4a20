// The 2:4 sparse-tensor-core convolution kernels (kernels/cuda/sparse_conv2d_24_device.cuh), every variant and
// pipeline depth, fp16 and bf16, run on the CPU under the SIMT emulator (simt_emulator.h) and compared with a
// double-precision convolution: awkward Cin (40: a padded k-block; 80: an odd number of k-blocks; 104 = 96 + 8)
// and Cout (72, 75: not a multiple of 8; 160, 264: a big tile past the packed weight), 3x3 stride 2 padding 1,
// 5x5 padding 2, 1x1 stride 1 and 2, odd spatial sizes, pixels not a multiple of the tile and more than one pixel tile, bias + SiLU, the output
// poisoned with NaN first. Every case runs with
// cp.async copies landing at once and landing only at their wait, under different fiber schedules.
// This checks the kernels' indexing, pipelining and fragment handling, not the hardware: the GPU test of the
// same kernels is cuda_test_sparse_conv.cpp, run by benchmarks/device_check.sh.
#include <string>

#include "simt_emulator.h"

#include "kernels/cuda/sparse_conv2d_24_device.cuh"
#include "sparse_conv24_host.h"

namespace k = sparseyolo::kernels;
using namespace sparse_conv24_test;

namespace {

// max_smem: the shared memory a block may have (227 KiB on an H200, 99 KiB on sm_86: tile128 with 3 stages).
template <typename T>
int run(const Case& c, int variant, simt::Mode mode, std::mt19937& rng, int max_smem = 227 * 1024) {
  Problem<T> pr(c, rng);
  std::vector<T> values;
  std::vector<uint32_t> meta;
  pack(pr.w, c, values, meta);
  simt::Buffer<T> x(pr.x_t()), v(values);
  simt::Buffer<uint32_t> m(meta);
  simt::Buffer<float> b(pr.bias);
  const size_t out_n = static_cast<size_t>(c.n) * c.ho() * c.wo() * c.cout;
  simt::Buffer<T> out(out_n, 0xFF);  // NaN in fp16 and bf16
  k::SparseConv24Params p = params(c, variant);
  p.input = x.data();
  p.values = v.data();
  p.meta = m.data();
  p.bias = b.data();
  p.output = out.data();
  simt::state().mode = mode;
  const cudaError_t err =
      k::spconv24::dispatch(p, std::is_same_v<T, __half> ? k::DType::kFloat16 : k::DType::kBFloat16, max_smem, 90,
                            [&](const k::spconv24::Launch& l) {
                              simt::launch(l.kernel, l.grid, l.block, l.smem_bytes, p);
                              return cudaSuccess;
                            });
  if (err != cudaSuccess) {
    std::printf("FAIL dispatch returned %d\n", static_cast<int>(err));
    return 1;
  }
  char label[80];
  std::snprintf(label, sizeof(label), "%-13s %s %s smem<=%dK", variant_name(variant),
                std::is_same_v<T, __half> ? "fp16" : "bf16", mode == simt::Mode::kEager ? "eager" : "lazy ",
                max_smem / 1024);
  return check(pr, out.to_host(), label, tolerance<T>());
}

}  // namespace

// With the argument "wgmma", only the wgmma kernels run (the ctest builds with other wgmma operand conventions).
int main(int argc, char** argv) {
  const bool wgmma_only = argc > 1 && std::string(argv[1]) == "wgmma";
  const Case cases[] = {
      {2, 40, 13, 11, 72, 3, 3, 2, 1, true},     // padded k-block, stride 2, Cout % 64 != 0
      {1, 64, 9, 7, 75, 1, 1, 1, 0, false},      // Cout % 8 != 0 (scalar stores)
      {1, 80, 17, 15, 160, 1, 1, 1, 0, true},    // odd k-block count, 2 Cout tiles, 255 pixels
      {1, 104, 7, 9, 160, 3, 3, 1, 1, false},    // 96 + 8 channels, 3x3 stride 1
      {1, 8, 5, 5, 16, 3, 3, 2, 0, true},        // Cin = 8, tiny
      {1, 48, 23, 13, 264, 1, 1, 1, 0, true},    // 299 pixels: two 256-pixel tiles; 264 = 256 + 8 channels
      {1, 16, 9, 10, 40, 5, 5, 1, 2, true},      // 5x5 taps, padding 2
      {2, 24, 8, 7, 32, 1, 1, 2, 0, false},      // strided 1x1
  };
  std::mt19937 rng(0);
  int failures = 0, n = 0;
  for (const Case& c : cases)
    for (int variant : kVariants) {
      const bool wgmma = k::is_wgmma_variant(variant);
      if (wgmma_only && !wgmma) continue;
      simt::state().rng.seed(1000 + n);
      failures += run<__half>(c, variant, simt::Mode::kEager, rng);
      failures += run<__half>(c, variant, simt::Mode::kLazy, rng);
      failures += run<__nv_bfloat16>(c, variant, (n & 1) ? simt::Mode::kEager : simt::Mode::kLazy, rng);
      // Shallower pipelines where a block gets less shared memory: sm_80 (163 KiB), sm_86/sm_89 (99 KiB). The
      // wgmma kernels are sm_90 only (227 KiB a block): the plain one at 3 stages stands in for that case.
      if (!wgmma || variant == k::kVariantWgmma) {
        failures += run<__half>(c, variant, simt::Mode::kLazy, rng, 163 * 1024);
        ++n;
      }
      if (!wgmma) {
        failures += run<__half>(c, variant, simt::Mode::kLazy, rng, 99 * 1024);
        ++n;
      }
      n += 3;
    }
  std::printf("test_sparse_conv24_emulated: %d cases, %s\n", n, failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
