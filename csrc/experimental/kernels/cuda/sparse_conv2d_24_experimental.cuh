// EXPERIMENTAL: kernels of the 2:4 sparse convolution that have NOT yet run correctly on a GPU (only under the CPU
// SIMT emulator of tests/cpp): the big-tile mma.sp kernels (kVariantTile128, kVariantTile128x256,
// kVariantTile256x128) and the Hopper wgmma.mma_async.sp kernels (kVariantWgmma, kVariantWgmmaOverlap,
// kVariantWgmma64), with the wgmma primitives and operand conventions only they use.
//
// Compiled only with -DSPARSEYOLO_EXPERIMENTAL_GPU (setup.py: SPARSEYOLO_EXPERIMENTAL_GPU=1; CMake:
// -DSPARSEYOLO_EXPERIMENTAL_GPU=ON), included by csrc/kernels/cuda/sparse_conv2d_24_device.cuh after the proven
// tile64 kernel and the helpers these kernels reuse (primitives, epilogue, store_output_tile, Launch, tile_count).
//
//   kVariantTile128, kVariantTile128x256, kVariantTile256x128: one templated kernel (sparse_conv24_bigtile) with
//                    a 128 x 128, 128 x 256 or 256 x 128 (Cout x pixels) tile and 8 warps (warp tiles 64 x 32 or
//                    64 x 64), k-step 64 (two mma k-blocks per barrier), a 4-stage cp.async pipeline (3 or 2 where
//                    the GPU gives a block less shared memory) carrying both the activations and the compressed
//                    weights + metadata through shared memory, one barrier per k-step, activation rows
//                    XOR-swizzled for conflict-free ldmatrix, blocks ordered Cout-tile-fastest so that the blocks
//                    running at once share their activation tile in L2.
//   kVariantWgmma, kVariantWgmmaOverlap: the 128 x 256 pipeline feeding wgmma.mma_async.sp (sparse_conv24_wgmma),
//                    waiting for each k-step's MMAs or keeping one k-step in flight.
//   kVariantWgmma64: the same kernel with a 64 x 256 tile, one warpgroup, 3 stages, two blocks per SM (one
//                    block's barriers and loads overlap the other's MMAs; Cout = 160 fills 3 tiles of 64 better
//                    than 2 of 128).
#pragma once

#ifndef SPARSEYOLO_EXPERIMENTAL_GPU
#error "sparse_conv2d_24_experimental.cuh is built only with -DSPARSEYOLO_EXPERIMENTAL_GPU"
#endif

namespace sparseyolo {
namespace kernels {
namespace spconv24 {

#ifndef SPARSEYOLO_SIMT_EMULATION  // the emulator provides the same names
// ---- sm_90a warpgroup MMA (wgmma) ------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SPARSEYOLO_WGMMA 1
#endif

// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before later async-proxy reads
// (wgmma operands).
__device__ __forceinline__ void fence_proxy_async_shared() {
#ifdef SPARSEYOLO_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#ifdef SPARSEYOLO_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef SPARSEYOLO_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef SPARSEYOLO_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// d[128] += A(64 x 32, 2:4 sparse; this warp's 16 rows as register fragment `a` + metadata `e`, selector 0, in
// the order wgmma_a_fragment / wgmma_meta_word give) * B(32 x 256 in shared memory, `desc_b`; imm-trans-b
// kTransB), fp32 accumulate, across the warpgroup.
template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_sp_m64n256k32(float (&d)[128], const uint4& a, uint32_t e, uint64_t desc_b);

#define SPARSEYOLO_WGMMA_SP(TY)                                                                                       \
  asm volatile(                                                                                                       \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %134, 0;\n"                                                                   \
      "wgmma.mma_async.sp.sync.aligned.m64n256k32.f32." TY "." TY " "                                                 \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                                                           \
      "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                                                  \
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "                                                  \
      "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                                                  \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "                                                  \
      "%60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, "                                                  \
      "%72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, "                                                  \
      "%84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                                                  \
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, "                                          \
      "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, "                                      \
      "%120, %121, %122, %123, %124, %125, %126, %127}, "                                                             \
      "{%128, %129, %130, %131}, %132, %133, 0, p, 1, 1, %135;\n}\n"                                                  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),                                       \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),                                     \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),                                 \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),                                 \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),                                 \
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),                                 \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),                                 \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),                                 \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),                                 \
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),                                 \
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),                                 \
        "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),                                 \
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),                                 \
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),                                 \
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),                                 \
        "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),                                 \
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),                               \
        "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]),                           \
        "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]),                           \
        "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),                           \
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),                           \
        "+f"(d[126]), "+f"(d[127])                                                                                    \
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(desc_b), "r"(e), "r"(1), "n"(kTransB))

template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_sp_m64n256k32(float (&d)[128], const uint4& a, uint32_t e, uint64_t desc_b) {
#ifdef SPARSEYOLO_WGMMA
  if constexpr (std::is_same_v<T, __half>) {
    SPARSEYOLO_WGMMA_SP("f16");
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "wgmma.sp: fp16 or bf16");
    SPARSEYOLO_WGMMA_SP("bf16");
  }
#endif
}
#undef SPARSEYOLO_WGMMA_SP
#endif  // !SPARSEYOLO_SIMT_EMULATION

// ---- wgmma.sp operand conventions --------------------------------------------------------------------------
// How the kernel hands wgmma.mma_async.sp its register A fragment and its metadata, and which imm-trans-b reads
// the K-major B. The defaults are this project's reading of the PTX ISA: per warp, the mma.sp m16n8k32 A fragment
// and metadata layout (the packed weight's order, checked on an H200 for mma.sp), and imm-trans-b 0. They have
// not run on hardware. tests/cpp/cuda_test_wgmma_sp_layout.cu tries the alternatives on an sm_90 GPU and prints
// the -D flags of one that works; benchmarks/device_check.sh builds with those flags when they differ from these
// defaults, so that a single device run tests and times the kernel either way. Change a default only to what the
// probe reported (and the emulator's SIMT_WGMMA_HW_* with it).
//   SPARSEYOLO_WGMMA_META_SLOTS  four hex digits, for the 16-bit slots {lane t = 0 bits 0-15, t = 0 bits 16-31,
//                                t = 1 bits 0-15, t = 1 bits 16-31} of each quad's metadata: which half goes
//                                there, numbered 2 * (rows g + 8) + (dense columns 16-31). mma.sp's is 0x0213.
//   SPARSEYOLO_WGMMA_A_SWAP12    1: A registers 1 and 2 exchanged (rows g + 8 <-> compressed columns + 8).
//   SPARSEYOLO_WGMMA_TRANS_B     the imm-trans-b operand.
#ifndef SPARSEYOLO_WGMMA_META_SLOTS
#define SPARSEYOLO_WGMMA_META_SLOTS 0x0213
#endif
#ifndef SPARSEYOLO_WGMMA_A_SWAP12
#define SPARSEYOLO_WGMMA_A_SWAP12 0
#endif
#ifndef SPARSEYOLO_WGMMA_TRANS_B
#define SPARSEYOLO_WGMMA_TRANS_B 0
#endif
constexpr uint32_t kWgmmaMetaSlots = SPARSEYOLO_WGMMA_META_SLOTS;
constexpr int kWgmmaTransB = SPARSEYOLO_WGMMA_TRANS_B;
constexpr bool wgmma_meta_slots_valid(uint32_t slots) {
  uint32_t seen = 0;
  for (int s = 0; s < 4; ++s) seen |= 1u << ((slots >> (4 * (3 - s))) & 0xF);
  return seen == 0xF && slots <= 0xFFFF;
}
static_assert(wgmma_meta_slots_valid(kWgmmaMetaSlots),
              "SPARSEYOLO_WGMMA_META_SLOTS: four hex digits, a permutation of 0-3, e.g. 0x0213");
static_assert(SPARSEYOLO_WGMMA_A_SWAP12 == 0 || SPARSEYOLO_WGMMA_A_SWAP12 == 1, "SPARSEYOLO_WGMMA_A_SWAP12: 0 or 1");
static_assert(kWgmmaTransB == 0 || kWgmmaTransB == 1, "SPARSEYOLO_WGMMA_TRANS_B: 0 or 1");

// A warp's register A fragment for wgmma from its packed (mma.sp m16n8k32 order) fragment.
__device__ __forceinline__ uint4 wgmma_a_fragment(const uint4& packed) {
  return SPARSEYOLO_WGMMA_A_SWAP12 ? make_uint4(packed.x, packed.z, packed.y, packed.w) : packed;
}

// The metadata word of a lane with t = `t` (t & 1 counts: selector 0 reads lanes 0 and 1 of each quad) from its
// quad's packed words w0, w1 (mma.sp order: word t holds half t in bits 0-15 and half 2 + t in bits 16-31).
__device__ __forceinline__ uint32_t wgmma_meta_word(uint32_t w0, uint32_t w1, int t) {
  const uint64_t both = static_cast<uint64_t>(w1) << 32 | w0;
  const int s = 2 * (t & 1);  // this lane's low slot
  const uint32_t lo = (kWgmmaMetaSlots >> (4 * (3 - s))) & 0xF, hi = (kWgmmaMetaSlots >> (4 * (2 - s))) & 0xF;
  const auto half = [both](uint32_t h) {  // half h is in word h & 1, bits 16 (h >> 1)
    return static_cast<uint32_t>(both >> (32 * (h & 1) + 16 * (h >> 1))) & 0xFFFFu;
  };
  return half(lo) | half(hi) << 16;
}

// Shared-memory matrix descriptor (wgmma; plain arithmetic, shared with the emulator) of a K-major operand in
// the canonical 128-byte-swizzle layout: rows of 128 bytes, 8-row groups 1024 bytes apart (stride byte offset),
// leading byte offset unused for this layout (set to 1), base offset 0 (the swizzle atoms are 1024-byte aligned).
// Bits: start address >> 4 in 0-13, leading byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45, base
// offset in 49-51, layout type in 62-63 (1: 128B swizzle).
__device__ __forceinline__ uint64_t wgmma_desc_k_major_sw128(uint32_t smem_address) {
  uint64_t desc = static_cast<uint64_t>((smem_address & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>(1) << 16;
  desc |= static_cast<uint64_t>(1024 >> 4) << 32;
  desc |= static_cast<uint64_t>(1) << 62;
  return desc;
}

// ---- kVariantTile128 / Tile128x256 / Tile256x128: big tiles, k-step 64, multi-stage cp.async pipeline -------
//
// Block tile BM (Cout) x BN (pixels) = (kWarpsM * kTilesM * 16) x (kWarpsN * kTilesN * 8); warp w = (w % kWarpsM,
// w / kWarpsM) owns kTilesM row tiles of 16 channels x kTilesN column tiles of 8 pixels.
// Shared memory per stage (k-step ks covers k-blocks kb = 2ks, 2ks+1 of 32 dense weight columns each):
//   B  [BN pixels][64 channels]: 128-byte rows, 16-byte chunk c of row r stored at chunk c ^ (r & 7), so the 8
//      rows an ldmatrix phase reads sit in 8 different bank groups. Chunks 0-3 hold k-block 2ks (its tap and
//      32-channel block), 4-7 k-block 2ks+1; a gather job is one pixel's half row (4 cp.async).
//   A  [BM/16 row tiles][2 k-blocks][32 lanes] uint4: the packed fragments, copied as they are (16 contiguous
//      bytes per lane), then meta [BM/16][2][16] words. Row tiles past the packed weight (Cout rounded to 64) and
//      k-blocks past K get zero-filled values and a real fragment's (valid) metadata.
// Per k-block a warp issues kTilesM x kTilesN mma.sp between kTilesM A loads (LDS.128 + LDS.32) and kTilesN
// ldmatrix.x4. One __syncthreads per k-step. Blocks are ordered Cout-tile-fastest, so the blocks resident at
// once share their activation tile in L2.
template <int kWarpsM, int kWarpsN, int kTilesM, int kTilesN>
struct BigTile {
  static constexpr int kWarpsM_ = kWarpsM, kTilesM_ = kTilesM, kTilesN_ = kTilesN;
  static constexpr int kBM = kWarpsM * kTilesM * 16, kBN = kWarpsN * kTilesN * 8;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kRowTiles = kBM / 16;
  static constexpr int kRowBytes = 128;                    // 64 channels, swizzled, no padding
  static constexpr int kBBytes = kBN * kRowBytes;
  static constexpr int kAValBytes = kRowTiles * 2 * 32 * 16;
  static constexpr int kAMetaBytes = kRowTiles * 2 * 16 * 4;
  static constexpr int kStageBytes = kBBytes + kAValBytes + kAMetaBytes;
  static constexpr int kOutStride = kBM + 8;               // halves per staged output row
  // Blocks per SM the register allocation must allow: 2 for 64 x 32 warp tiles (<= 128 registers; ptxas gave
  // 141 on sm_80 otherwise), 1 for 64 x 64 (128 fp32 accumulators per thread).
  static constexpr int kMinBlocks = kTilesN <= 4 ? 2 : 1;
  static constexpr int kGatherJobs = kBN * 2 / kThreads;   // (pixel, half row) jobs per thread
  static constexpr int kAValChunks = kAValBytes / 16 / kThreads;
  static constexpr int kMetaChunks = kAMetaBytes / 16;     // <= kThreads
  static_assert(kBN * 2 % kThreads == 0 && kGatherJobs >= 1, "gather jobs must divide evenly");
  static_assert(kAValBytes / 16 % kThreads == 0 && kAValChunks >= 1, "weight chunks must divide evenly");
  static_assert(kMetaChunks <= kThreads, "one metadata chunk per thread at most");
  static constexpr int smem_bytes(int stages) {
    return stages * kStageBytes > kBN * kOutStride * 2 ? stages * kStageBytes : kBN * kOutStride * 2;
  }
};
using Tile128 = BigTile<2, 4, 4, 4>;     // 128 x 128, 8 warps of 64 x 32
using Tile128x256 = BigTile<2, 4, 4, 8>; // 128 x 256, 8 warps of 64 x 64
using Tile256x128 = BigTile<4, 2, 4, 8>; // 256 x 128, 8 warps of 64 x 64

// One block's share of the pipeline: which output tile it computes, and the cp.async loads of a k-step into a
// stage laid out as described above (activations, then weights, then metadata).
template <typename T, typename Cfg>
struct BigTileStager {
  const SparseConv24Params& p;
  int tid, cout0, cin_blocks, num_k, num_steps, packed_tiles, mt_block, my_half;
  int64_t npix, pix0;
  int img[Cfg::kGatherJobs], hi0[Cfg::kGatherJobs], wi0[Cfg::kGatherJobs];
  bool pix_ok[Cfg::kGatherJobs];

  __device__ __forceinline__ BigTileStager(const SparseConv24Params& params, int thread) : p(params), tid(thread) {
    npix = static_cast<int64_t>(p.n) * p.ho * p.wo;
    const int cout_tiles = (p.cout + Cfg::kBM - 1) / Cfg::kBM;
    const int64_t bid = blockIdx.x;
    cout0 = static_cast<int>(bid % cout_tiles) * Cfg::kBM;  // Cout tile fastest: neighbours share pixels
    pix0 = (bid / cout_tiles) * Cfg::kBN;
    cin_blocks = (p.cin + 31) >> 5;
    num_k = p.kh * p.kw * cin_blocks;  // k-blocks of 32
    num_steps = (num_k + 1) >> 1;      // k-steps of 64
    packed_tiles = (p.cout + 63) / 64 * 4;  // sparse_conv24_row_tiles (host-only)
    mt_block = cout0 >> 4;
    // Gather jobs: job j of this thread is pixel row (tid >> 1) + j * (kThreads / 2), half (tid & 1).
    my_half = tid & 1;
#pragma unroll
    for (int j = 0; j < Cfg::kGatherJobs; ++j) {
      const int64_t pix = pix0 + (tid >> 1) + j * (Cfg::kThreads / 2);
      pix_ok[j] = pix < npix;
      img[j] = hi0[j] = wi0[j] = 0;
      if (pix_ok[j]) {
        const int64_t hw = static_cast<int64_t>(p.ho) * p.wo;
        img[j] = static_cast<int>(pix / hw);
        const int rem = static_cast<int>(pix - static_cast<int64_t>(img[j]) * hw);
        hi0[j] = (rem / p.wo) * p.stride_h - p.pad_h;
        wi0[j] = (rem % p.wo) * p.stride_w - p.pad_w;
      }
    }
  }

  // Issues the copies of k-step `ks` into the stage at shared address `sb` (no commit).
  __device__ __forceinline__ void load(int ks, uint32_t sb) const {
    const T* x = static_cast<const T*>(p.input);
    {  // B: this thread's half rows
      const int kb = 2 * ks + my_half;
      const int tap = kb / cin_blocks, cb = kb - tap * cin_blocks;
      const int r = tap / p.kw, s = tap - r * p.kw;
#pragma unroll
      for (int j = 0; j < Cfg::kGatherJobs; ++j) {
        const int row = (tid >> 1) + j * (Cfg::kThreads / 2);
        const int hi = hi0[j] + r, wi = wi0[j] + s;
        const bool ok = pix_ok[j] && kb < num_k && hi >= 0 && hi < p.h && wi >= 0 && wi < p.w;
        const T* src_row = x + ((static_cast<int64_t>(img[j]) * p.h + hi) * p.w + wi) * p.cin;
        const uint32_t dst_row = sb + row * Cfg::kRowBytes;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int c = cb * 32 + q * 8;
          const bool in = ok && c < p.cin;  // Cin % 8 == 0: a 16-byte chunk is all in or all out
          const int chunk = (my_half * 4 + q) ^ (row & 7);
          cp_async16(dst_row + chunk * 16, in ? static_cast<const void*>(src_row + c) : static_cast<const void*>(x),
                     in ? 16 : 0);
        }
      }
    }
    // A values: chunk i = (row tile i / 64, k-block (i / 32) & 1, lane i % 32).
    const uint4* vals = static_cast<const uint4*>(p.values);
#pragma unroll
    for (int j = 0; j < Cfg::kAValChunks; ++j) {
      const int i = tid + j * Cfg::kThreads;
      const int mt = i >> 6, sub = (i >> 5) & 1, ln = i & 31;
      const int kb = 2 * ks + sub;
      const bool in = mt_block + mt < packed_tiles && kb < num_k;
      const int64_t frag = static_cast<int64_t>(mt_block + mt) * num_k + kb;
      cp_async16(sb + Cfg::kBBytes + i * 16, in ? static_cast<const void*>(vals + frag * 32 + ln) : p.values,
                 in ? 16 : 0);
    }
    // Metadata: chunk i = (row tile i / 8, k-block (i / 4) & 1, words 4 (i & 3) .. +3). Row tiles past the packed
    // weight and the padding k-block take a real fragment's metadata instead of zeros: zero metadata names position
    // 0 twice, which PTX leaves undefined, while a valid pattern times their zero-filled values adds exactly 0.
    if (tid < Cfg::kMetaChunks) {
      const int mt = tid >> 3, sub = (tid >> 2) & 1, q = tid & 3;
      const int mt_src = min(mt_block + mt, packed_tiles - 1), kb_src = min(2 * ks + sub, num_k - 1);
      const int64_t frag = static_cast<int64_t>(mt_src) * num_k + kb_src;
      cp_async16(sb + Cfg::kBBytes + Cfg::kAValBytes + tid * 16, p.meta + frag * 16 + q * 4, 16);
    }
  }

  __device__ __forceinline__ void store(const T* tile) const {
    store_output_tile<T, Cfg::kBM, Cfg::kBN, Cfg::kThreads>(p, tile, tid, pix0, cout0, npix);
  }
};

template <typename T, typename Cfg, int kStages>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks) sparse_conv24_bigtile(SparseConv24Params p) {
#ifdef SPARSEYOLO_SPCONV24_BODY
  static_assert(kStages >= 2, "at least double buffering");
  constexpr int kRowBytes = Cfg::kRowBytes, kBBytes = Cfg::kBBytes, kAValBytes = Cfg::kAValBytes;
  constexpr int kStageBytes = Cfg::kStageBytes;
  constexpr int kTilesM = Cfg::kTilesM_, kTilesN = Cfg::kTilesN_, kWarpsM = Cfg::kWarpsM_;
  SPARSEYOLO_DYNAMIC_SMEM(smem);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp % kWarpsM, wn = warp / kWarpsM;
  const BigTileStager<T, Cfg> st(p, tid);
  const int num_k = st.num_k, num_steps = st.num_steps;
  const uint32_t smem_base = smem_addr(smem);

  float acc[kTilesM][kTilesN][4];
#pragma unroll
  for (int mt = 0; mt < kTilesM; ++mt)
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;

  // Prologue: stages 0 .. kStages-2 in flight. One commit group per k-step, empty past the end, so that
  // wait_group<kStages - 2> always means "k-step ks has landed".
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_steps) st.load(s, smem_base + s * kStageBytes);
    cp_async_commit();
  }

  // This lane's ldmatrix row within a stage: pixel wn * kTilesN * 8 + nt * 8 + (lane & 7) (so row & 7 = lane & 7),
  // logical chunk 4 * sub + (lane >> 3).
  const uint32_t b_row = (wn * kTilesN * 8 + (lane & 7)) * kRowBytes;
  const int b_swz = lane & 7;

#pragma unroll 1
  for (int ks = 0; ks < num_steps; ++ks) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // k-step ks is visible to all; every warp is done with the stage loaded next
    const int next = ks + kStages - 1;
    if (next < num_steps) st.load(next, smem_base + (next % kStages) * kStageBytes);
    cp_async_commit();

    const uint32_t sb = smem_base + (ks % kStages) * kStageBytes;
#pragma unroll
    for (int sub = 0; sub < 2; ++sub) {
      if (2 * ks + sub >= num_k) break;  // odd K: the last step has one k-block (same for the whole block)
      uint4 a[kTilesM];
      uint32_t e[kTilesM];
#pragma unroll
      for (int mt = 0; mt < kTilesM; ++mt) {
        const int frag = (wm * kTilesM + mt) * 2 + sub;
        a[mt] = lds128(sb + kBBytes + (frag * 32 + lane) * 16);
        e[mt] = lds32(sb + kBBytes + kAValBytes + (frag * 16 + g * 2 + (t & 1)) * 4);
      }
#pragma unroll
      for (int nt = 0; nt < kTilesN; ++nt) {
        uint32_t b[4];
        ldmatrix_x4(b, sb + b_row + nt * 8 * kRowBytes + (((sub * 4 + (lane >> 3)) ^ b_swz) * 16));
#pragma unroll
        for (int mt = 0; mt < kTilesM; ++mt) mma_sp_16832<T>(acc[mt][nt], a[mt], b, e[mt]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // all warps are done with the operand stages: the epilogue reuses them

  T* tile = reinterpret_cast<T*>(smem);
#pragma unroll
  for (int mt = 0; mt < kTilesM; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = (wm * kTilesM + mt) * 16 + g + 8 * half;  // channel within the block
      const int co = st.cout0 + row;
      const float bv = (p.bias != nullptr && co < p.cout) ? p.bias[co] : 0.f;
#pragma unroll
      for (int nt = 0; nt < kTilesN; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int col = (wn * kTilesN + nt) * 8 + 2 * t + j;  // pixel within the block
          tile[col * Cfg::kOutStride + row] = Traits<T>::from_float(epilogue(acc[mt][nt][2 * half + j], bv, p.silu));
        }
      }
    }
  }
  __syncthreads();
  st.store(tile);
#endif
}

// ---- kVariantWgmma: the Tile128x256 pipeline feeding wgmma.mma_async.sp (sm_90a) ------------------------------
//
// Same block tile (128 x 256, or 64 x 256), stage layout and loads as sparse_conv24_bigtile<Tile128x256>, but the
// math is two warpgroups (one), each issuing one wgmma.mma_async.sp.m64n256k32 per k-block for its 64 output
// channels:
//   * A (weights) from registers: warp w of a warpgroup holds row tile 4 * wg + w, one LDS.128 of the packed
//     weight (mma.sp m16n8k32 fragment order) + its quad's two metadata words, put into the order the
//     "wgmma.sp operand conventions" above define (by default the same: wgmma's register A fragment read as the
//     per-warp m16 fragment, stacked by warp, with mma.sp's metadata layout, selector 0).
//   * B (activations) from shared memory through a matrix descriptor: the stage's [256 pixels][64 channels]
//     rows are the canonical K-major layout with 128-byte swizzle (8-row groups 1024 bytes apart: SBO = 1024;
//     16-byte chunk c of row r at c ^ (r & 7), which is the hardware's XOR of address bits 4-6 with 7-9 when the
//     stage is 1024-byte aligned). K-block `sub` starts 64 bytes into the rows.
//   * Accumulator: 128 fp32 per thread, element i of warp w, lane (g, t) = channel 16 w + g + 8 ((i / 2) & 1),
//     pixel 8 (i / 4) + 2 t + (i & 1).
// Each k-step: wait for its cp.async group, fence.proxy.async (the copies are generic-proxy writes that wgmma
// reads through the async proxy), barrier, issue the next stage's copies, wgmma.fence, the wgmmas, commit, and
// wait for them before the next barrier lets anyone overwrite this stage.
using TileWgmma = Tile128x256;             // two warpgroups
using TileWgmma64 = BigTile<1, 4, 4, 8>;   // 64 x 256, one warpgroup
constexpr int kWgmmaAlign = 1024;  // 128-byte swizzle atoms must start 1024-byte aligned
// A wgmma pipeline's stages, padded to the swizzle-atom alignment, and its shared memory (+ alignment slack).
template <typename Cfg>
struct WgmmaStages {
  static constexpr int kStride = (Cfg::kStageBytes + kWgmmaAlign - 1) / kWgmmaAlign * kWgmmaAlign;
  static constexpr int smem_bytes(int stages) { return stages * kStride + kWgmmaAlign; }
};

template <typename T, typename Cfg, int kStages, bool kOverlap>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kBM == 64 ? 2 : 1) sparse_conv24_wgmma(SparseConv24Params p) {
#if defined(SPARSEYOLO_SIMT_EMULATION) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
  static_assert(Cfg::kBM == 64 * (Cfg::kThreads / 128) && Cfg::kBN == 256, "one warpgroup per 64 x 256 of tile");
  // kOverlap keeps one k-step's MMAs in flight while the next is issued: the stage they read is then free only a
  // step later, so copies run kStages - 2 steps ahead instead of kStages - 1, and the A registers alternate
  // between two sets (a wgmma may read its registers until its wait_group).
  constexpr int kAhead = kOverlap ? kStages - 2 : kStages - 1;
  static_assert(kAhead >= 1, "at least one stage ahead");
  static_assert(Cfg::kBBytes % kWgmmaAlign == 0, "B must stay 1024-byte aligned in every stage");
  static_assert(Cfg::kBN * Cfg::kOutStride * 2 <= kStages * WgmmaStages<Cfg>::kStride, "epilogue tile must fit");
  constexpr int kBBytes = Cfg::kBBytes, kAValBytes = Cfg::kAValBytes, kStageBytes = WgmmaStages<Cfg>::kStride;
  SPARSEYOLO_DYNAMIC_SMEM(smem);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wg = warp >> 2, wq = warp & 3;  // warpgroup (64 channels each), warp within it (16 channels)
  const BigTileStager<T, Cfg> st(p, tid);
  const int num_k = st.num_k, num_steps = st.num_steps;
  const uint32_t raw = smem_addr(smem);
  const uint32_t smem_base = (raw + kWgmmaAlign - 1) & ~static_cast<uint32_t>(kWgmmaAlign - 1);

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;

#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < num_steps) st.load(s, smem_base + s * kStageBytes);
    cp_async_commit();
  }

  uint4 a[2][2];  // [register set][k-block]
  uint32_t e[2][2];
  // One k-step with register set P (a compile-time constant, so the sets stay in registers).
  auto step = [&](int ks, auto set) {
    constexpr int P = decltype(set)::value;
    cp_async_wait<kAhead - 1>();
    fence_proxy_async_shared();
    // k-step ks is visible to all (and to the async proxy). Every warpgroup has waited for the MMAs of step
    // ks - 1 (ks - 2 with kOverlap), so the stage loaded next is free.
    __syncthreads();
    const int next = ks + kAhead;
    if (next < num_steps) st.load(next, smem_base + (next % kStages) * kStageBytes);
    cp_async_commit();

    const uint32_t sb = smem_base + (ks % kStages) * kStageBytes;
#pragma unroll
    for (int sub = 0; sub < 2; ++sub) {
      const int frag = (wg * 4 + wq) * 2 + sub;
      a[P][sub] = wgmma_a_fragment(lds128(sb + kBBytes + (frag * 32 + lane) * 16));
      const uint32_t quad_meta = sb + kBBytes + kAValBytes + (frag * 16 + g * 2) * 4;
      e[P][sub] = wgmma_meta_word(lds32(quad_meta), lds32(quad_meta + 4), t);  // valid also past K (stager)
    }
    wgmma_fence();
#pragma unroll
    for (int sub = 0; sub < 2; ++sub) {
      // Without kOverlap, both k-blocks, also when K is odd: the stager zero-filled the last step's second one
      // (values and activations), so it adds 0, and ptxas chains the two wgmmas (with the branch it injected a
      // warpgroup.arrive before each, and a dummy HGMMA at the commit). With kOverlap the branch stays: without
      // it ptxas serializes every wgmma (C7513), which costs the overlap.
      if (kOverlap && 2 * ks + sub >= num_k) break;
      wgmma_sp_m64n256k32<T, kWgmmaTransB>(acc, a[P][sub], e[P][sub], wgmma_desc_k_major_sw128(sb + sub * 64));
    }
    wgmma_commit();
    wgmma_wait<kOverlap ? 1 : 0>();
  };
#pragma unroll 1
  for (int ks = 0; ks < num_steps; ks += 2) {
    step(ks, std::integral_constant<int, 0>{});
    if (ks + 1 < num_steps) step(ks + 1, std::integral_constant<int, 1>{});
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
  __syncthreads();  // all warps are done with the operand stages: the epilogue reuses them

  T* tile = reinterpret_cast<T*>(smem);  // the epilogue needs no alignment beyond 16 bytes
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = wg * 64 + wq * 16 + g + 8 * half;  // channel within the block
    const int co = st.cout0 + row;
    const float bv = (p.bias != nullptr && co < p.cout) ? p.bias[co] : 0.f;
#pragma unroll
    for (int nt = 0; nt < 32; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = nt * 8 + 2 * t + j;  // pixel within the block
        tile[col * Cfg::kOutStride + row] = Traits<T>::from_float(epilogue(acc[4 * nt + 2 * half + j], bv, p.silu));
      }
    }
  }
  __syncthreads();
  st.store(tile);
#elif defined(__CUDA_ARCH__)
  __trap();  // built without sm_90a (TORCH_CUDA_ARCH_LIST needs "9.0a"); the dispatcher never launches this
#endif
}

// The deepest pipeline (4, 3 or 2 stages) whose shared memory fits `max_smem_bytes` (the device's opt-in limit
// per block: 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on sm_86/sm_89).
template <typename T, typename Cfg>
inline Launch big_tile_launch(const SparseConv24Params& p, int max_smem_bytes) {
  Launch l;
  if (Cfg::smem_bytes(4) <= max_smem_bytes) {
    l.kernel = sparse_conv24_bigtile<T, Cfg, 4>;
    l.stages = 4;
  } else if (Cfg::smem_bytes(3) <= max_smem_bytes) {
    l.kernel = sparse_conv24_bigtile<T, Cfg, 3>;
    l.stages = 3;
  } else {
    l.kernel = sparse_conv24_bigtile<T, Cfg, 2>;
    l.stages = 2;
  }
  l.blocks_x = tile_count(p, Cfg::kBM, Cfg::kBN);
  l.block = dim3(Cfg::kThreads);
  l.smem_bytes = Cfg::smem_bytes(l.stages);
  return l;
}

// The launch of an experimental variant (kernel null for another variant).
template <typename T>
inline Launch experimental_launch_for(const SparseConv24Params& p, int variant, int max_smem_bytes) {
  Launch l;
  switch (variant) {
    case kVariantTile128: l = big_tile_launch<T, Tile128>(p, max_smem_bytes); break;
    case kVariantTile128x256: l = big_tile_launch<T, Tile128x256>(p, max_smem_bytes); break;
    case kVariantTile256x128: l = big_tile_launch<T, Tile256x128>(p, max_smem_bytes); break;
    case kVariantWgmma:
    case kVariantWgmmaOverlap: {
      // kVariantWgmma: 4 stages (165 KiB) where allowed, else 3; kVariantWgmmaOverlap: 5 (206 KiB), else 4, so
      // that as many stages are loading ahead.
      const bool overlap = variant == kVariantWgmmaOverlap;
      const int deep = overlap ? 5 : 4;
      l.stages = WgmmaStages<TileWgmma>::smem_bytes(deep) <= max_smem_bytes ? deep : deep - 1;
      if (overlap)
        l.kernel = l.stages == 5 ? sparse_conv24_wgmma<T, TileWgmma, 5, true>
                                 : sparse_conv24_wgmma<T, TileWgmma, 4, true>;
      else
        l.kernel = l.stages == 4 ? sparse_conv24_wgmma<T, TileWgmma, 4, false>
                                 : sparse_conv24_wgmma<T, TileWgmma, 3, false>;
      l.blocks_x = tile_count(p, TileWgmma::kBM, TileWgmma::kBN);
      l.block = dim3(TileWgmma::kThreads);
      l.smem_bytes = WgmmaStages<TileWgmma>::smem_bytes(l.stages);
      break;
    }
    case kVariantWgmma64:
      // 3 stages (112 KiB): two blocks fit an SM's 228 KiB.
      l.stages = 3;
      l.kernel = sparse_conv24_wgmma<T, TileWgmma64, 3, false>;
      l.blocks_x = tile_count(p, TileWgmma64::kBM, TileWgmma64::kBN);
      l.block = dim3(TileWgmma64::kThreads);
      l.smem_bytes = WgmmaStages<TileWgmma64>::smem_bytes(l.stages);
      break;
    default: break;
  }
  return l;
}

}  // namespace spconv24
}  // namespace kernels
}  // namespace sparseyolo
