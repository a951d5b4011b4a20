// Host-side entry point of the torch-free 2:4 sparse implicit-GEMM convolution on the sparse tensor cores
// (sparse_conv2d_24.cu). The Python packing (sparseyolo/sparse/mma_sp.py) and the CPU reference backend
// (ops/cpu/sparse_conv2d_24_kernel.cpp) share the weight format described here.
//
// GEMM view: D[Cout, P] = W[Cout, K] * X[K, P], P = N*Ho*Wo output pixels, K = KH*KW*Cin_pad with Cin fastest
// (NHWC), Cin_pad = Cin rounded up to 32. W is the sparse operand A of `mma.sp.m16n8k32` (2:4 along Cin),
// the activations are the dense operand B, gathered tap by tap from NHWC memory (no im2col buffer).
//
// Weight format ("mma.sp fragment order"), for MT = ceil(Cout / 64) * 4 row tiles of 16 output channels and
// KB = KH*KW*Cin_pad/32 k-blocks (k-block kb = tap * Cin_pad/32 + cin_block, tap = r*KW + s):
//   values [MT, KB, 32 lanes, 8] fp16/bf16: lane l = 4*g + t holds, in register order, the compressed A
//     fragment of PTX's sparse m16n8k32 (same layout as dense m16n8k16 A): element e -> row g + 8*((e/2)&1),
//     compressed column 2*t + (e&1) + 8*(e/4); compressed column j of a row is the (j&1)-th kept value of its
//     dense group j/2 (dense columns 4*(j/2) .. +3 of the k-block), lower position first.
//   meta   [MT, KB, 16] int32: word 2*g + h = row g's 4-bit group codes for dense columns 16h .. 16h+15 in
//     bits 0..15 and row g+8's in bits 16..31; group j of the half at bits 4j..4j+3 as (pos0 | pos1 << 2),
//     pos0 < pos1 (PTX "sparse mma metadata for m16n8k32 .f16/.bf16", sparsity selector 0: lanes 4g and
//     4g+1 supply it). Padded rows/channels hold zeros with code 0b0100 (positions 0 and 1).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "../dtype.h"

namespace sparseyolo {
namespace kernels {

struct SparseConv24Params {
  const void* input;   // [N, H, W, Cin] (channels_last), fp16 or bf16, 16-byte aligned, Cin % 8 == 0
  const void* values;  // [MT, KB, 32, 8], same dtype as input
  const uint32_t* meta;  // [MT, KB, 16]
  const float* bias;   // [Cout] or null
  void* output;        // [N, Ho, Wo, Cout] (channels_last), same dtype, 16-byte aligned
  int n, h, w, cin;
  int cout, kh, kw;
  int stride_h, stride_w, pad_h, pad_w;
  int ho, wo;
  bool silu;
  int variant;  // kVariant*: which kernel (sparse_conv2d_24_device.cuh); kVariantDefault lets the library pick
};

// Kernels of the 2:4 convolution (described in sparse_conv2d_24_device.cuh). Both read the same weight format.
constexpr int kVariantDefault = 0;   // currently kVariantTile64, the kernel checked on hardware
constexpr int kVariantTile64 = 1;    // 64 x 128 tile, k-step 32, 2 stages, weights from L1/L2
constexpr int kVariantTile128 = 2;      // 128 x 128 tile, k-step 64, up to 4-stage cp.async pipeline, weights via smem
constexpr int kVariantTile128x256 = 3;  // the same with a 128 (Cout) x 256 (pixel) tile
constexpr int kVariantTile256x128 = 4;  // the same with a 256 (Cout) x 128 (pixel) tile
constexpr int kVariantWgmma = 5;        // 128 x 256 tile on wgmma.mma_async.sp (sm_90 only, built for sm_90a)
constexpr int kVariantWgmmaOverlap = 6; // the same, one k-step of MMAs in flight while the next is issued
constexpr int kVariantWgmma64 = 7;      // 64 x 256 tile, one warpgroup, two blocks per SM (sm_90 only)

// The variants built on wgmma (compute capability 9.0 only).
constexpr bool is_wgmma_variant(int variant) {
  return variant == kVariantWgmma || variant == kVariantWgmmaOverlap || variant == kVariantWgmma64;
}

// Row tiles of 16 output channels the packed weight must have for `cout` (a multiple of the 64-channel
// block tile, so a block never reads past the weight).
inline int sparse_conv24_row_tiles(int cout) { return (cout + 63) / 64 * 4; }
inline int sparse_conv24_k_blocks(int cin, int kh, int kw) { return kh * kw * ((cin + 31) / 32); }

// True when this build has the sparse tensor-core kernel for the device's architecture (sm_80 or newer).
bool sparse_conv24_supported(int device);

// What `variant` needs beyond sparse_conv24_supported: the wgmma variants need compute capability 9.0 (their code
// is built for sm_90a); the others nothing more.
bool sparse_conv24_variant_supported(int variant, int device);

// True when this build has `variant`'s kernel: the hardware-proven one (kVariantDefault, kVariantTile64) always,
// the experimental ones (csrc/experimental/kernels/cuda) only when built with SPARSEYOLO_EXPERIMENTAL_GPU.
bool sparse_conv24_variant_built(int variant);

// Launches the kernel; returns the launch error (cudaSuccess when fine). Does not synchronise.
cudaError_t sparse_conv24_cuda(const SparseConv24Params& p, DType dtype, cudaStream_t stream);

}  // namespace kernels
}  // namespace sparseyolo
