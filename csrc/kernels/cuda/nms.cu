// Torch-free CUDA kernels of sparseyolo::yolo_nms and sparseyolo::nms. All images of a batch go through
// the same handful of launches, with no host synchronisation:
//
//   count    one warp per anchor: obj prefilter, conf = obj * cls, single/multi-label candidates
//            (lanes over classes), per-image candidate counts;
//   select   only when an image can have more than max_nms candidates: an exact radix select (8 passes
//            of 8 bits) of the max_nms-th smallest 64-bit candidate key per image, recomputing the
//            candidates from `pred` instead of storing them, so the buffers are B x max_nms, not B x N x nc;
//   emit     candidates with key <= that threshold, compacted into each image's segment (warp-aggregated
//            atomics: the order is arbitrary, the keys are unique);
//   sort     CUB segmented radix sort of the 64-bit keys: score descending, ties by (anchor, class);
//   gather   sorted keys -> offset boxes (nms_rules.h);
//   greedy   one 1024-thread block per image walks its sorted candidates in tiles of 32: a 32 x 32 IoU
//            bitmask of the tile (one ballot per warp), the greedy pass inside the tile on one thread
//            (32 bit operations), then the tile's kept boxes mark every later candidate they suppress.
//            No n x n mask and no host round trip; stops at max_det kept boxes.
#include "nms_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

namespace sparseyolo {
namespace kernels {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kEnumThreads = 256;  // 8 warps, one anchor per warp at a time
constexpr int kGreedyThreads = 1024;  // 32 warps = one 32 x 32 IoU tile per step
constexpr int kTile = 32;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 64 / kRadixBits;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

#define SPARSEYOLO_RETURN_IF_ERROR(expr)  \
  do {                                    \
    const cudaError_t e_ = (expr);        \
    if (e_ != cudaSuccess) return e_;     \
  } while (0)

// ---- workspace -----------------------------------------------------------------------------------
size_t align_up(size_t x) { return (x + 255) & ~size_t(255); }

struct YoloWorkspace {
  uint32_t* count;      // [B] candidates per image
  uint32_t* fill;       // [B] emit cursor
  uint64_t* prefix;     // [B] radix-select prefix, at the end the max_nms-th smallest key
  uint32_t* remaining;  // [B] rank still to find inside the current prefix
  uint32_t* hist;       // [B, 256]
  int* seg_begin;       // [B]
  int* seg_end;         // [B]
  uint8_t* allowed;     // [nc]
  uint64_t* keys_in;    // [B * cap]
  uint64_t* keys_out;   // [B * cap]
  NmsBox* boxes;        // [B * cap]
  uint8_t* removed;     // [B * cap]
  void* sort_temp;
  size_t sort_temp_bytes;
  size_t total;
};

int64_t labels_per_anchor(const YoloNmsParams& p) { return p.multi_label && p.num_classes > 1 ? p.num_classes : 1; }

YoloWorkspace yolo_workspace_layout(int64_t batch, const YoloNmsParams& p, char* base) {
  const int64_t cap = yolo_nms_cuda_capacity(p);
  const size_t items = static_cast<size_t>(batch * cap);
  YoloWorkspace w{};
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* ptr = base ? base + off : nullptr;
    off += align_up(bytes);
    return ptr;
  };
  w.count = reinterpret_cast<uint32_t*>(take(batch * sizeof(uint32_t)));
  w.fill = reinterpret_cast<uint32_t*>(take(batch * sizeof(uint32_t)));
  w.prefix = reinterpret_cast<uint64_t*>(take(batch * sizeof(uint64_t)));
  w.remaining = reinterpret_cast<uint32_t*>(take(batch * sizeof(uint32_t)));
  w.hist = reinterpret_cast<uint32_t*>(take(batch * kRadixBins * sizeof(uint32_t)));
  w.seg_begin = reinterpret_cast<int*>(take(batch * sizeof(int)));
  w.seg_end = reinterpret_cast<int*>(take(batch * sizeof(int)));
  w.allowed = reinterpret_cast<uint8_t*>(take(static_cast<size_t>(p.num_classes)));
  w.keys_in = reinterpret_cast<uint64_t*>(take(items * sizeof(uint64_t)));
  w.keys_out = reinterpret_cast<uint64_t*>(take(items * sizeof(uint64_t)));
  w.boxes = reinterpret_cast<NmsBox*>(take(items * sizeof(NmsBox)));
  w.removed = reinterpret_cast<uint8_t*>(take(items));
  w.sort_temp_bytes = 0;
  cub::DeviceSegmentedRadixSort::SortKeys(nullptr, w.sort_temp_bytes, static_cast<const uint64_t*>(nullptr),
                                          static_cast<uint64_t*>(nullptr), static_cast<int>(items),
                                          static_cast<int>(batch), static_cast<const int*>(nullptr),
                                          static_cast<const int*>(nullptr), 0, 64);
  w.sort_temp = take(w.sort_temp_bytes);
  w.total = off;
  return w;
}

// ---- candidate enumeration -----------------------------------------------------------------------
// Called by the 32 lanes of a warp for one anchor row. `f(pass, conf, cls)` is called by every lane the
// same number of times (so it may use warp collectives); `pass` says whether (conf, cls) is a candidate.
template <typename T, typename F>
__device__ __forceinline__ void for_each_candidate(const T* __restrict__ row, const YoloNmsParams& p,
                                                   const uint8_t* __restrict__ allowed, bool filter, F&& f) {
  const int lane = threadIdx.x & 31;
  const float obj = to_float(row[4]);
  if (!(obj > p.conf_thres)) return;  // warp-uniform; NaN never passes
  const int64_t nc = p.num_classes;
  if (p.multi_label) {
    for (int64_t k0 = 0; k0 < nc; k0 += 32) {
      const int64_t k = k0 + lane;
      bool pass = false;
      float conf = 0.f;
      if (k < nc) {
        conf = f_mul(obj, to_float(row[5 + k]));
        pass = conf > p.conf_thres && (!filter || allowed[k]);
      }
      f(pass, conf, static_cast<uint32_t>(k));
    }
  } else {
    // torch.max(dim=1): the first maximum, or the first NaN. Sentinel: ranks below any real class.
    BestClass best{-INFINITY, 0xffffffffu};
    for (int64_t k = lane; k < nc; k += 32) {
      const BestClass c{f_mul(obj, to_float(row[5 + k])), static_cast<uint32_t>(k)};
      if (better_class(c, best)) best = c;
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const BestClass o{__shfl_xor_sync(kFullMask, best.conf, d), __shfl_xor_sync(kFullMask, best.cls, d)};
      if (better_class(o, best)) best = o;
    }
    const bool pass = lane == 0 && best.conf > p.conf_thres && (!filter || allowed[best.cls]);
    f(pass, best.conf, best.cls);
  }
}

// Warp w of block blockIdx.x handles anchors of image b = blockIdx.x / blocks_per_image.
struct AnchorRange {
  int64_t b, first, stride;
};
__device__ __forceinline__ AnchorRange anchor_range(int blocks_per_image) {
  const int64_t b = blockIdx.x / blocks_per_image;
  const int64_t blk = blockIdx.x % blocks_per_image;
  const int64_t warps = kEnumThreads / 32;
  return {b, blk * warps + (threadIdx.x >> 5), static_cast<int64_t>(blocks_per_image) * warps};
}

__global__ void init_kernel(YoloWorkspace w, uint32_t max_nms) {
  const int b = blockIdx.x;
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) w.hist[b * kRadixBins + i] = 0;
  if (threadIdx.x == 0) {
    w.count[b] = 0;
    w.fill[b] = 0;
    w.prefix[b] = 0;
    w.remaining[b] = max_nms;
  }
}

__global__ void class_mask_kernel(const int64_t* __restrict__ classes, int64_t n, int64_t nc,
                                  uint8_t* __restrict__ allowed) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const int64_t c = classes[i];
    if (c >= 0 && c < nc) allowed[c] = 1;  // out-of-range indices match nothing, as in the reference
  }
}

template <typename T>
__global__ void __launch_bounds__(kEnumThreads)
    count_kernel(const T* __restrict__ pred, YoloNmsParams p, YoloWorkspace w, bool filter, int blocks_per_image) {
  const AnchorRange r = anchor_range(blocks_per_image);
  const int64_t stride = 5 + p.num_classes;
  uint32_t total = 0;
  for (int64_t n = r.first; n < p.num_anchors; n += r.stride) {
    for_each_candidate(pred + (r.b * p.num_anchors + n) * stride, p, w.allowed, filter,
                       [&](bool pass, float, uint32_t) { total += __popc(__ballot_sync(kFullMask, pass)); });
  }
  if ((threadIdx.x & 31) == 0 && total) atomicAdd(&w.count[r.b], total);
}

// One radix-select pass: histogram of digit `pass` of the keys that share the prefix found so far.
template <typename T>
__global__ void __launch_bounds__(kEnumThreads)
    select_histogram_kernel(const T* __restrict__ pred, YoloNmsParams p, YoloWorkspace w, bool filter,
                            int blocks_per_image, int pass) {
  __shared__ uint32_t hist[kRadixBins];
  const AnchorRange r = anchor_range(blocks_per_image);
  if (w.count[r.b] <= static_cast<uint64_t>(p.max_nms)) return;  // block-uniform: nothing to select
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  const int shift = 64 - kRadixBits * (pass + 1);
  const uint64_t hi_mask = pass == 0 ? 0ull : (~0ull << (shift + kRadixBits));
  const uint64_t prefix = w.prefix[r.b] & hi_mask;
  const int64_t stride = 5 + p.num_classes;
  for (int64_t n = r.first; n < p.num_anchors; n += r.stride) {
    const uint32_t base = static_cast<uint32_t>(n * p.num_classes);
    for_each_candidate(pred + (r.b * p.num_anchors + n) * stride, p, w.allowed, filter,
                       [&](bool pass_, float conf, uint32_t cls) {
                         if (!pass_) return;
                         const uint64_t key = candidate_key(conf, base + cls);
                         if ((key & hi_mask) == prefix) atomicAdd(&hist[(key >> shift) & (kRadixBins - 1)], 1u);
                       });
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x)
    if (hist[i]) atomicAdd(&w.hist[r.b * kRadixBins + i], hist[i]);
}

// Picks the digit holding the remaining rank, then clears the histogram for the next pass.
__global__ void select_digit_kernel(YoloNmsParams p, YoloWorkspace w, int pass) {
  const int b = blockIdx.x;
  if (w.count[b] <= static_cast<uint64_t>(p.max_nms)) return;
  uint32_t* hist = w.hist + b * kRadixBins;
  if (threadIdx.x == 0) {
    const int shift = 64 - kRadixBits * (pass + 1);
    const uint32_t need = w.remaining[b];
    uint32_t below = 0;
    for (int d = 0; d < kRadixBins; ++d) {
      if (below + hist[d] >= need) {
        w.prefix[b] |= static_cast<uint64_t>(d) << shift;
        w.remaining[b] = need - below;
        break;
      }
      below += hist[d];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) hist[i] = 0;
}

template <typename T>
__global__ void __launch_bounds__(kEnumThreads)
    emit_kernel(const T* __restrict__ pred, YoloNmsParams p, YoloWorkspace w, bool filter, int blocks_per_image,
                int cap) {
  const AnchorRange r = anchor_range(blocks_per_image);
  const int lane = threadIdx.x & 31;
  const uint32_t count = w.count[r.b];
  const bool overflow = count > static_cast<uint64_t>(p.max_nms);
  const uint64_t kth = w.prefix[r.b];
  if (blockIdx.x % blocks_per_image == 0 && threadIdx.x == 0) {
    w.seg_begin[r.b] = static_cast<int>(r.b * cap);
    w.seg_end[r.b] = static_cast<int>(r.b * cap + (overflow ? p.max_nms : count));
  }
  uint64_t* out = w.keys_in + r.b * cap;
  const int64_t stride = 5 + p.num_classes;
  for (int64_t n = r.first; n < p.num_anchors; n += r.stride) {
    const uint32_t base = static_cast<uint32_t>(n * p.num_classes);
    for_each_candidate(pred + (r.b * p.num_anchors + n) * stride, p, w.allowed, filter,
                       [&](bool pass, float conf, uint32_t cls) {
                         const uint64_t key = pass ? candidate_key(conf, base + cls) : 0ull;
                         const bool take = pass && (!overflow || key <= kth);
                         const uint32_t mask = __ballot_sync(kFullMask, take);
                         if (!mask) return;
                         const int leader = __ffs(mask) - 1;
                         uint32_t pos = 0;
                         if (lane == leader) pos = atomicAdd(&w.fill[r.b], static_cast<uint32_t>(__popc(mask)));
                         pos = __shfl_sync(kFullMask, pos, leader) + __popc(mask & ((1u << lane) - 1u));
                         if (take && pos < static_cast<uint32_t>(cap)) out[pos] = key;
                       });
  }
}

template <typename T>
__global__ void yolo_gather_kernel(const T* __restrict__ pred, YoloNmsParams p, YoloWorkspace w,
                                   int blocks_per_image) {
  const int b = blockIdx.x / blocks_per_image;
  const int i = (blockIdx.x % blocks_per_image) * blockDim.x + threadIdx.x;
  const int begin = w.seg_begin[b];
  if (i >= w.seg_end[b] - begin) return;
  const uint64_t key = w.keys_out[begin + i];
  const uint32_t idx = key_index(key);
  const uint32_t nc = static_cast<uint32_t>(p.num_classes);
  const uint32_t n = idx / nc, cls = idx % nc;
  const T* row = pred + (b * p.num_anchors + n) * (5 + p.num_classes);
  float xyxy[4];
  xywh_to_xyxy(to_float(row[0]), to_float(row[1]), to_float(row[2]), to_float(row[3]), xyxy);
  w.boxes[begin + i] = offset_nms_box(xyxy, cls, p.agnostic);
  w.removed[begin + i] = 0;
}

// ---- greedy --------------------------------------------------------------------------------------
// `out.keep(b, rank, sorted_pos)` records the rank-th kept box of image b (sorted_pos indexes the
// sorted arrays); `out.finish(b, kept)` the count.
template <typename Out>
__global__ void __launch_bounds__(kGreedyThreads)
    greedy_kernel(const NmsBox* __restrict__ boxes, uint8_t* __restrict__ removed, const int* __restrict__ seg_begin,
                  const int* __restrict__ seg_end, int64_t max_keep, float cutoff, Out out) {
  __shared__ uint32_t tile_mask[kTile];
  __shared__ uint32_t tile_alive;
  __shared__ int kept_pos[kTile];
  __shared__ int tile_kept;
  __shared__ NmsBox kept_box[kTile];
  const int b = blockIdx.x;
  const int begin = seg_begin[b];
  const int m = seg_end[b] - begin;
  const NmsBox* bx = boxes + begin;
  uint8_t* rm = removed + begin;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t kept = 0;  // identical in every thread
  for (int s = 0; s < m && kept < max_keep; s += kTile) {
    // Row `warp` of the tile's bitmask: does candidate s + warp suppress s + lane (lane > warp)?
    const int i = s + warp, j = s + lane;
    const bool sup = j > i && j < m && suppresses(bx[i], bx[j], cutoff);
    const uint32_t row = __ballot_sync(kFullMask, sup);
    if (lane == 0) tile_mask[warp] = row;
    if (warp == 0) {
      const uint32_t alive = __ballot_sync(kFullMask, j < m && !rm[j]);
      if (lane == 0) tile_alive = alive;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t alive = tile_alive;
      int nk = 0;
      for (int t = 0; t < kTile && alive && kept + nk < max_keep; ++t) {
        if (!((alive >> t) & 1u)) continue;
        kept_pos[nk++] = t;
        alive &= ~tile_mask[t];
      }
      tile_kept = nk;
    }
    __syncthreads();
    const int nk = tile_kept;
    if (static_cast<int>(threadIdx.x) < nk) {
      const int pos = s + kept_pos[threadIdx.x];
      kept_box[threadIdx.x] = bx[pos];
      out.keep(b, kept + threadIdx.x, begin + pos);
    }
    __syncthreads();
    if (nk > 0) {
      for (int q = s + kTile + threadIdx.x; q < m; q += blockDim.x) {
        if (rm[q]) continue;
        const NmsBox c = bx[q];
        for (int t = 0; t < nk; ++t) {
          if (suppresses(kept_box[t], c, cutoff)) {
            rm[q] = 1;
            break;
          }
        }
      }
    }
    kept += nk;
    __syncthreads();  // removed flags and shared tiles are complete before the next tile
  }
  if (threadIdx.x == 0) out.finish(b, kept);
}

template <typename T>
struct YoloOut {
  const T* pred;
  YoloNmsParams p;
  const uint64_t* keys;
  T* dets;
  int64_t width;
  int64_t* counts;
  __device__ void keep(int b, int64_t rank, int sorted_pos) const {
    const uint64_t key = keys[sorted_pos];
    const uint32_t idx = key_index(key);
    const uint32_t nc = static_cast<uint32_t>(p.num_classes);
    const uint32_t n = idx / nc, cls = idx % nc;
    const T* row = pred + (b * p.num_anchors + n) * (5 + p.num_classes);
    float xyxy[4];
    xywh_to_xyxy(to_float(row[0]), to_float(row[1]), to_float(row[2]), to_float(row[3]), xyxy);
    T* d = dets + (b * width + rank) * 6;
    d[0] = from_float<T>(xyxy[0]);
    d[1] = from_float<T>(xyxy[1]);
    d[2] = from_float<T>(xyxy[2]);
    d[3] = from_float<T>(xyxy[3]);
    d[4] = from_float<T>(key_score(key));
    d[5] = from_float<T>(static_cast<float>(cls));
  }
  __device__ void finish(int b, int64_t kept) const { counts[b] = kept; }
};

template <typename T>
cudaError_t launch_yolo(const YoloNmsCudaArgs& a, YoloWorkspace w, cudaStream_t stream) {
  const T* pred = static_cast<const T*>(a.pred);
  YoloNmsParams p = a.params;
  p.multi_label = labels_per_anchor(p) > 1;
  p.class_allowed = nullptr;
  const int64_t batch = a.batch;
  const int cap = static_cast<int>(yolo_nms_cuda_capacity(p));
  const bool filter = a.classes != nullptr;
  // ~4 anchors per warp: enough blocks to fill the GPU at batch 1, few enough to amortise the block setup.
  const int warps = kEnumThreads / 32;
  const int blocks_per_image = static_cast<int>(std::max<int64_t>(1, (p.num_anchors + 4 * warps - 1) / (4 * warps)));
  const int64_t enum_blocks = batch * blocks_per_image;
  if (enum_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;

  init_kernel<<<static_cast<unsigned>(batch), kRadixBins, 0, stream>>>(w, static_cast<uint32_t>(std::min<int64_t>(p.max_nms, 0xffffffffll)));
  SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
  if (filter) {
    SPARSEYOLO_RETURN_IF_ERROR(cudaMemsetAsync(w.allowed, 0, static_cast<size_t>(p.num_classes), stream));
    if (a.num_classes_filter > 0) {
      class_mask_kernel<<<static_cast<unsigned>((a.num_classes_filter + 255) / 256), 256, 0, stream>>>(
          a.classes, a.num_classes_filter, p.num_classes, w.allowed);
      SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
    }
  }
  count_kernel<T><<<static_cast<unsigned>(enum_blocks), kEnumThreads, 0, stream>>>(pred, p, w, filter, blocks_per_image);
  SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
  // Only images with more than max_nms candidates need the select; whether any can is known here.
  if (p.num_anchors * labels_per_anchor(p) > p.max_nms) {
    for (int pass = 0; pass < kRadixPasses; ++pass) {
      select_histogram_kernel<T><<<static_cast<unsigned>(enum_blocks), kEnumThreads, 0, stream>>>(
          pred, p, w, filter, blocks_per_image, pass);
      SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
      select_digit_kernel<<<static_cast<unsigned>(batch), kRadixBins, 0, stream>>>(p, w, pass);
      SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
    }
  }
  emit_kernel<T><<<static_cast<unsigned>(enum_blocks), kEnumThreads, 0, stream>>>(pred, p, w, filter,
                                                                                  blocks_per_image, cap);
  SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
  size_t temp_bytes = w.sort_temp_bytes;
  SPARSEYOLO_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortKeys(
      w.sort_temp, temp_bytes, w.keys_in, w.keys_out, static_cast<int>(batch * cap), static_cast<int>(batch),
      w.seg_begin, w.seg_end, 0, 64, stream));
  const int gather_blocks = (cap + 255) / 256;
  yolo_gather_kernel<T><<<static_cast<unsigned>(batch * gather_blocks), 256, 0, stream>>>(pred, p, w, gather_blocks);
  SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
  const YoloOut<T> out{pred, p, w.keys_out, static_cast<T*>(a.dets), a.out_width, a.counts};
  greedy_kernel<<<static_cast<unsigned>(batch), kGreedyThreads, 0, stream>>>(
      w.boxes, w.removed, w.seg_begin, w.seg_end, std::min(p.max_det, a.out_width), p.iou_cutoff, out);
  return cudaGetLastError();
}

// ---- plain nms -----------------------------------------------------------------------------------
struct NmsWorkspace {
  uint64_t* keys_in;
  uint64_t* keys_out;
  NmsBox* boxes;
  uint8_t* removed;
  int* seg;  // [2]: begin, end of the single segment
  void* sort_temp;
  size_t sort_temp_bytes;
  size_t total;
};

NmsWorkspace nms_workspace_layout(int64_t n, char* base) {
  NmsWorkspace w{};
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* ptr = base ? base + off : nullptr;
    off += align_up(bytes);
    return ptr;
  };
  const size_t items = static_cast<size_t>(n);
  w.keys_in = reinterpret_cast<uint64_t*>(take(items * sizeof(uint64_t)));
  w.keys_out = reinterpret_cast<uint64_t*>(take(items * sizeof(uint64_t)));
  w.boxes = reinterpret_cast<NmsBox*>(take(items * sizeof(NmsBox)));
  w.removed = reinterpret_cast<uint8_t*>(take(items));
  w.seg = reinterpret_cast<int*>(take(2 * sizeof(int)));
  w.sort_temp_bytes = 0;
  cub::DeviceRadixSort::SortKeys(nullptr, w.sort_temp_bytes, static_cast<const uint64_t*>(nullptr),
                                 static_cast<uint64_t*>(nullptr), static_cast<int>(items), 0, 64);
  w.sort_temp = take(w.sort_temp_bytes);
  w.total = off;
  return w;
}

template <typename T>
__global__ void nms_keys_kernel(const T* __restrict__ scores, int n, uint64_t* __restrict__ keys) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) keys[i] = candidate_key(to_float(scores[i]), static_cast<uint32_t>(i));
}

template <typename T>
__global__ void nms_gather_kernel(const T* __restrict__ boxes, int n, NmsWorkspace w) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i == 0) {
    w.seg[0] = 0;
    w.seg[1] = n;
  }
  if (i < n) {
    const T* bx = boxes + 4 * static_cast<int64_t>(key_index(w.keys_out[i]));
    w.boxes[i] = make_nms_box(to_float(bx[0]), to_float(bx[1]), to_float(bx[2]), to_float(bx[3]));
    w.removed[i] = 0;
  }
}

struct KeepOut {
  const uint64_t* keys;
  int64_t* indices;
  int64_t* num_kept;
  __device__ void keep(int, int64_t rank, int sorted_pos) const { indices[rank] = key_index(keys[sorted_pos]); }
  __device__ void finish(int, int64_t kept) const { *num_kept = kept; }
};

template <typename T>
cudaError_t launch_nms(const void* boxes, const void* scores, int n, float cutoff, int64_t* keep, int64_t* num_kept,
                       NmsWorkspace w, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
  nms_keys_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<const T*>(scores), n, w.keys_in);
  SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
  size_t temp_bytes = w.sort_temp_bytes;
  SPARSEYOLO_RETURN_IF_ERROR(cub::DeviceRadixSort::SortKeys(w.sort_temp, temp_bytes, w.keys_in, w.keys_out, n, 0, 64,
                                                            stream));
  nms_gather_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<const T*>(boxes), n, w);
  SPARSEYOLO_RETURN_IF_ERROR(cudaGetLastError());
  greedy_kernel<<<1, kGreedyThreads, 0, stream>>>(w.boxes, w.removed, w.seg, w.seg + 1, static_cast<int64_t>(n),
                                                  cutoff, KeepOut{w.keys_out, keep, num_kept});
  return cudaGetLastError();
}

}  // namespace

int64_t yolo_nms_cuda_capacity(const YoloNmsParams& params) {
  return std::min<int64_t>(params.max_nms, params.num_anchors * labels_per_anchor(params));
}

size_t yolo_nms_cuda_workspace_bytes(int64_t batch, const YoloNmsParams& params) {
  return yolo_workspace_layout(batch, params, nullptr).total;
}

cudaError_t yolo_nms_cuda(const YoloNmsCudaArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (args.batch == 0 || args.out_width == 0 || args.params.num_anchors == 0) return cudaSuccess;
  const YoloWorkspace w = yolo_workspace_layout(args.batch, args.params, static_cast<char*>(workspace));
  if (workspace_bytes < w.total) return cudaErrorInvalidValue;
  if (args.batch * yolo_nms_cuda_capacity(args.params) > 0x7fffffffll) return cudaErrorInvalidValue;
  switch (args.dtype) {
    case DType::kFloat32: return launch_yolo<float>(args, w, stream);
    case DType::kFloat16: return launch_yolo<__half>(args, w, stream);
    case DType::kBFloat16: return launch_yolo<__nv_bfloat16>(args, w, stream);
    case DType::kFloat64: break;
  }
  return cudaErrorInvalidValue;
}

size_t nms_cuda_workspace_bytes(int64_t n) { return nms_workspace_layout(n, nullptr).total; }

cudaError_t nms_cuda(const void* boxes, const void* scores, int64_t n, DType dtype, float iou_cutoff, int64_t* keep,
                     int64_t* num_kept, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (n <= 0) return cudaMemsetAsync(num_kept, 0, sizeof(int64_t), stream);
  if (n > 0x7fffffffll) return cudaErrorInvalidValue;
  const NmsWorkspace w = nms_workspace_layout(n, static_cast<char*>(workspace));
  if (workspace_bytes < w.total) return cudaErrorInvalidValue;
  const int ni = static_cast<int>(n);
  switch (dtype) {
    case DType::kFloat32: return launch_nms<float>(boxes, scores, ni, iou_cutoff, keep, num_kept, w, stream);
    case DType::kFloat16: return launch_nms<__half>(boxes, scores, ni, iou_cutoff, keep, num_kept, w, stream);
    case DType::kBFloat16: return launch_nms<__nv_bfloat16>(boxes, scores, ni, iou_cutoff, keep, num_kept, w, stream);
    case DType::kFloat64: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace kernels
}  // namespace sparseyolo
