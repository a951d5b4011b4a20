// CPU algorithms of sparseyolo's NMS ops, torch-free (the torch glue in ops/cpu/nms_kernel.cpp threads
// them over images; tests/cpp/test_nms.cpp checks them against a brute-force greedy).
//
// yolo_nms per image, with no n x n matrix:
//   1. one pass over the anchors: obj prefilter, conf = obj * cls, candidate keys (nms_rules.h);
//   2. keep the max_nms smallest keys (nth_element) and sort them: the reference's order;
//   3. greedy in that order: a candidate is kept iff no already-kept box *of its class* suppresses it.
//      That is exactly torchvision's greedy (only kept boxes suppress), but each candidate is checked
//      against at most the kept boxes of its class (<= max_det, a few KB that stay in L1), and the pass
//      stops at max_det kept boxes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../nms_rules.h"

namespace sparseyolo {
namespace kernels {
namespace cpu {

// Reusable per-thread buffers (one per image in flight).
struct NmsScratch {
  std::vector<uint64_t> keys;
  std::vector<NmsBox> kept;          // kept boxes, offset, in keep order
  std::vector<int32_t> kept_next;    // next kept box of the same class (-1: end)
  std::vector<int32_t> class_head;   // first kept box of each class (-1: none)
  std::vector<float> row_conf;       // one row of obj * cls
};

// Writes the first `out_width` detections of one image as rows (x1, y1, x2, y2, conf, cls) through
// `store(row, col, value)` and returns how many there are. `pred` is this image's [N, 5 + nc] block.
template <typename scalar_t, typename ToFloat, typename Store>
int64_t yolo_nms_image(const scalar_t* pred, const YoloNmsParams& p, int64_t out_width, ToFloat to_float,
                       Store store, NmsScratch& s) {
  const int64_t nc = p.num_classes, stride = 5 + nc;
  const float thr = p.conf_thres;
  s.keys.clear();
  s.row_conf.resize(static_cast<size_t>(nc));
  for (int64_t n = 0; n < p.num_anchors; ++n) {
    const scalar_t* row = pred + n * stride;
    const float obj = to_float(row[4]);
    if (!(obj > thr)) continue;  // NaN objectness never passes
    const uint32_t base = static_cast<uint32_t>(n * nc);
    if (p.multi_label) {
      for (int64_t k = 0; k < nc; ++k) {
        const float conf = f_mul(obj, to_float(row[5 + k]));
        if (conf > thr && (!p.class_allowed || p.class_allowed[k]))
          s.keys.push_back(candidate_key(conf, base + static_cast<uint32_t>(k)));
      }
    } else {
      BestClass best{f_mul(obj, to_float(row[5])), 0};
      for (int64_t k = 1; k < nc; ++k) {
        const BestClass c{f_mul(obj, to_float(row[5 + k])), static_cast<uint32_t>(k)};
        if (better_class(c, best)) best = c;
      }
      if (best.conf > thr && (!p.class_allowed || p.class_allowed[best.cls]))
        s.keys.push_back(candidate_key(best.conf, base + best.cls));
    }
  }
  if (static_cast<int64_t>(s.keys.size()) > p.max_nms) {
    std::nth_element(s.keys.begin(), s.keys.begin() + p.max_nms, s.keys.end());
    s.keys.resize(static_cast<size_t>(p.max_nms));
  }
  std::sort(s.keys.begin(), s.keys.end());

  const int64_t limit = std::min(p.max_det, out_width);
  s.kept.clear();
  s.kept_next.clear();
  const int64_t lists = p.agnostic ? 1 : nc;
  s.class_head.assign(static_cast<size_t>(lists), -1);
  int64_t kept = 0;
  for (const uint64_t key : s.keys) {
    if (kept >= limit) break;
    const uint32_t idx = key_index(key);
    const uint32_t n = idx / static_cast<uint32_t>(nc), cls = idx % static_cast<uint32_t>(nc);
    const scalar_t* row = pred + static_cast<int64_t>(n) * stride;
    float xyxy[4];
    xywh_to_xyxy(to_float(row[0]), to_float(row[1]), to_float(row[2]), to_float(row[3]), xyxy);
    const NmsBox box = offset_nms_box(xyxy, cls, p.agnostic);
    const uint32_t list = p.agnostic ? 0u : cls;
    bool suppressed = false;
    for (int32_t j = s.class_head[list]; j >= 0; j = s.kept_next[j]) {
      if (suppresses(s.kept[j], box, p.iou_cutoff)) {
        suppressed = true;
        break;
      }
    }
    if (suppressed) continue;
    s.kept.push_back(box);
    s.kept_next.push_back(s.class_head[list]);
    s.class_head[list] = static_cast<int32_t>(s.kept.size() - 1);
    store(kept, 0, xyxy[0]);
    store(kept, 1, xyxy[1]);
    store(kept, 2, xyxy[2]);
    store(kept, 3, xyxy[3]);
    store(kept, 4, key_score(key));
    store(kept, 5, static_cast<float>(cls));
    ++kept;
  }
  return kept;
}

// torchvision-style nms over n boxes (xyxy) and scores: writes the kept indices, by decreasing score
// (ties: lower index first), to `keep` and returns how many. Boxes are copied in sorted order so the
// inner loop streams through contiguous memory; `suppressed` flags replace torchvision's n x n work
// only where needed (a suppressed box is never compared again).
template <typename scalar_t, typename ToFloat>
int64_t nms_boxes(const scalar_t* boxes, const scalar_t* scores, int64_t n, float cutoff, ToFloat to_float,
                  int64_t* keep) {
  std::vector<uint64_t> keys(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) keys[i] = candidate_key(to_float(scores[i]), static_cast<uint32_t>(i));
  std::sort(keys.begin(), keys.end());
  std::vector<NmsBox> sorted(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = boxes + 4 * static_cast<int64_t>(key_index(keys[i]));
    sorted[i] = make_nms_box(to_float(b[0]), to_float(b[1]), to_float(b[2]), to_float(b[3]));
  }
  std::vector<uint8_t> suppressed(static_cast<size_t>(n), 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    keep[kept++] = key_index(keys[i]);
    const NmsBox k = sorted[i];
    for (int64_t j = i + 1; j < n; ++j) {
      if (!suppressed[j] && suppresses(k, sorted[j], cutoff)) suppressed[j] = 1;
    }
  }
  return kept;
}

}  // namespace cpu
}  // namespace kernels
}  // namespace sparseyolo
