// Scalar rules of sparseyolo's NMS ops, shared by the CPU kernel, the CUDA kernels and the CMake unit
// tests. Torch-free.
//
// Exactness contract (float32): the rules below reproduce, bit for bit, what YOLOv5's reference
// (pure torch + torchvision.ops.nms on CPU) computes:
//   * thresholds on scores compare in float: torch casts a Python scalar to the tensor's dtype, so
//     `conf > conf_thres` is `conf > float(conf_thres)`;
//   * torchvision's CPU nms compares a float IoU against a double threshold (`ovr > iou_threshold`);
//     `iou_cutoff()` turns that into a float comparison `ovr >= cutoff` with the same outcome;
//   * the IoU is torchvision's expression, in its order, with its std::max/std::min argument order
//     (it decides what NaN coordinates do) and without FMA contraction (device code uses the _rn
//     intrinsics, which nvcc never fuses; host builds target baseline x86-64, which has no FMA);
//   * boxes are decoded as `cx - w / 2` etc. and offset per class by `cls * 7680` before the IoU, as
//     the reference does, so the rounding of the offset coordinates is the same.
// Ordering: candidates are ranked by score descending, ties by ascending candidate index. A
// candidate's index is `anchor * nc + class` in yolo_nms and the box index in nms. Both are encoded
// in one unique 64-bit key, so sorting keys ascending gives the order, on any backend, with any sort.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define SPARSEYOLO_NMS_HD __host__ __device__ __forceinline__
#else
#define SPARSEYOLO_NMS_HD inline
#endif

namespace sparseyolo {
namespace kernels {

// Per-class offset of the reference (YOLOv5's max_wh): 8K width. Boxes of different classes can only
// interact in the reference when a box is wider than this; the kernels treat classes as independent.
constexpr float kClassOffset = 7680.f;

// ---- float arithmetic that is never contracted into an FMA -------------------------------------
SPARSEYOLO_NMS_HD float f_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
SPARSEYOLO_NMS_HD float f_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
SPARSEYOLO_NMS_HD float f_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SPARSEYOLO_NMS_HD float f_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

SPARSEYOLO_NMS_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}
SPARSEYOLO_NMS_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// ---- ordering ----------------------------------------------------------------------------------
// Monotone map float -> uint32: -inf < ... < -0 == +0 < ... < +inf < NaN. Every NaN ranks above +inf
// (torch.sort(descending=True) puts NaN first) and the two zeros tie, as they do in torch.
SPARSEYOLO_NMS_HD uint32_t score_order_bits(float s) {
  uint32_t u = float_bits(s);
  if (s != s) u = 0x7fc00000u;  // canonical NaN
  else if (s == 0.f) u = 0u;    // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Unique sort key: ascending keys = descending score, ties by ascending index.
SPARSEYOLO_NMS_HD uint64_t candidate_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(~score_order_bits(score)) << 32) | index;
}
SPARSEYOLO_NMS_HD uint32_t key_index(uint64_t key) { return static_cast<uint32_t>(key); }
// The score a key was made from (a NaN comes back as the canonical NaN, -0 as +0).
SPARSEYOLO_NMS_HD float key_score(uint64_t key) {
  const uint32_t o = ~static_cast<uint32_t>(key >> 32);
  return bits_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// ---- thresholds --------------------------------------------------------------------------------
// The smallest float c such that, for every float x, `(double)x > t` <=> `x >= c`. NaN means "never".
inline float iou_cutoff(double t) {
  if (t != t || t == std::numeric_limits<double>::infinity()) return std::numeric_limits<float>::quiet_NaN();
  if (t == -std::numeric_limits<double>::infinity()) return -std::numeric_limits<float>::infinity();
  const float f = static_cast<float>(t);
  if (static_cast<double>(f) > t) return f;
  return std::nextafter(f, std::numeric_limits<float>::infinity());
}

// ---- boxes -------------------------------------------------------------------------------------
// A box as the NMS sees it: offset corners and their (unclamped) area, computed like torchvision's
// `areas = (x2 - x1) * (y2 - y1)`.
struct NmsBox {
  float x1, y1, x2, y2, area;
};

SPARSEYOLO_NMS_HD NmsBox make_nms_box(float x1, float y1, float x2, float y2) {
  return NmsBox{x1, y1, x2, y2, f_mul(f_sub(x2, x1), f_sub(y2, y1))};
}

// (cx, cy, w, h) -> (x1, y1, x2, y2), as sparseyolo.utils.boxes.xywh2xyxy (w / 2 is exact).
SPARSEYOLO_NMS_HD void xywh_to_xyxy(float cx, float cy, float w, float h, float* out) {
  const float hw = f_div(w, 2.f), hh = f_div(h, 2.f);
  out[0] = f_sub(cx, hw);
  out[1] = f_sub(cy, hh);
  out[2] = f_add(cx, hw);
  out[3] = f_add(cy, hh);
}

// The box of class `cls` that the reference feeds to the NMS: xyxy + cls * 7680 (0 when agnostic).
SPARSEYOLO_NMS_HD NmsBox offset_nms_box(const float* xyxy, uint32_t cls, bool agnostic) {
  const float off = agnostic ? 0.f : f_mul(static_cast<float>(cls), kClassOffset);
  return make_nms_box(f_add(xyxy[0], off), f_add(xyxy[1], off), f_add(xyxy[2], off), f_add(xyxy[3], off));
}

// Does the kept box `k` suppress the later candidate `c`? torchvision's CPU expression:
//   xx1 = max(k.x1, c.x1) ... w = max(0, xx2 - xx1) ... ovr = inter / (k.area + c.area - inter)
// and `ovr > iou_threshold` (double), i.e. `ovr >= cutoff`. A zero union gives NaN (or inf), as there.
SPARSEYOLO_NMS_HD bool suppresses(const NmsBox& k, const NmsBox& c, float cutoff) {
  const float xx1 = k.x1 < c.x1 ? c.x1 : k.x1;  // std::max(k, c)
  const float yy1 = k.y1 < c.y1 ? c.y1 : k.y1;
  const float xx2 = c.x2 < k.x2 ? c.x2 : k.x2;  // std::min(k, c)
  const float yy2 = c.y2 < k.y2 ? c.y2 : k.y2;
  const float dw = f_sub(xx2, xx1), dh = f_sub(yy2, yy1);
  const float w = 0.f < dw ? dw : 0.f;  // std::max(0, dw)
  const float h = 0.f < dh ? dh : 0.f;
  const float inter = f_mul(w, h);
  const float ovr = f_div(inter, f_sub(f_add(k.area, c.area), inter));
  return ovr >= cutoff;
}

// ---- yolo_nms parameters -----------------------------------------------------------------------
struct YoloNmsParams {
  int64_t num_anchors = 0;   // N
  int64_t num_classes = 0;   // nc (row stride is 5 + nc)
  float conf_thres = 0.f;    // float(conf_thres): obj > it and obj * cls > it
  float iou_cutoff = 0.f;    // iou_cutoff(iou_thres)
  bool agnostic = false;
  bool multi_label = false;  // already false when nc == 1
  int64_t max_det = 300;     // kept boxes per image (the output is padded to out_width <= max_det)
  int64_t max_nms = 30000;   // candidates per image fed to the greedy pass
  const uint8_t* class_allowed = nullptr;  // [nc] 0/1, or nullptr for every class
};

// Best class of a row of confidences, as torch.max(dim) does: the first maximum, and the first NaN
// if there is one (the candidate is then dropped, since NaN never passes the threshold).
struct BestClass {
  float conf;
  uint32_t cls;
};
// `better(a, b)`: would torch.max pick the class of a over that of b (a.cls != b.cls)?
SPARSEYOLO_NMS_HD bool better_class(const BestClass& a, const BestClass& b) {
  const bool an = a.conf != a.conf, bn = b.conf != b.conf;
  if (an != bn) return an;
  if (an || a.conf == b.conf) return a.cls < b.cls;
  return a.conf > b.conf;
}

}  // namespace kernels
}  // namespace sparseyolo
