// CPU unit tests of the torch-free NMS rules (csrc/kernels/nms_rules.h) and algorithms (csrc/kernels/cpu/nms_cpu.h):
// key order, the float IoU cutoff, and yolo_nms_image / nms_boxes against a brute-force greedy.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/nms_cpu.h"

namespace k = sparseyolo::kernels;

static int failures = 0;
#define EXPECT(cond, ...)                  \
  do {                                     \
    if (!(cond)) {                         \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);            \
      std::printf("\n");                   \
      ++failures;                          \
    }                                      \
  } while (0)

static void test_keys() {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // Expected order (ascending key): NaN, +inf, 1, 0.5, +0/-0 (tie by index), -1, -inf.
  const float scores[] = {nan, inf, 1.f, 0.5f, 0.f, -0.f, -1.f, -inf};
  for (int i = 0; i + 1 < 8; ++i)
    EXPECT(k::candidate_key(scores[i], i) < k::candidate_key(scores[i + 1], i + 1), "order at %d", i);
  EXPECT(k::candidate_key(0.25f, 3) < k::candidate_key(0.25f, 4), "ties by index");
  EXPECT(k::candidate_key(0.f, 9) > k::candidate_key(-0.f, 2), "-0 and +0 tie, then index");
  for (float s : {0.001f, 0.3f, 1.f, 12345.f, -2.5f, inf})
    EXPECT(k::key_score(k::candidate_key(s, 7)) == s && k::key_index(k::candidate_key(s, 7)) == 7, "roundtrip %g", s);
  EXPECT(std::isnan(k::key_score(k::candidate_key(nan, 1))), "nan roundtrip");
}

static void test_cutoff() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (double t : {0.0, 0.3, 0.45, 0.5, 0.7, 1.0, 0.1234567891}) {
    const float c = k::iou_cutoff(t);
    std::vector<float> xs = {static_cast<float>(t), std::nextafter(static_cast<float>(t), 2.f),
                             std::nextafter(static_cast<float>(t), -2.f), c, std::nextafter(c, -2.f)};
    for (int i = 0; i < 1000; ++i) xs.push_back(u(rng));
    for (float x : xs) EXPECT((static_cast<double>(x) > t) == (x >= c), "t=%.17g x=%.9g", t, x);
    EXPECT(!(std::numeric_limits<float>::quiet_NaN() >= c), "NaN never passes");
  }
}

// Brute force: all candidates, stable sort by score, greedy with suppressed flags over the whole list.
static std::vector<std::vector<float>> brute_yolo(const std::vector<float>& pred, int64_t n, int64_t nc,
                                                  const k::YoloNmsParams& p) {
  struct Cand { float conf; int64_t idx; };
  std::vector<Cand> c;
  for (int64_t a = 0; a < n; ++a) {
    const float* row = &pred[a * (5 + nc)];
    if (!(row[4] > p.conf_thres)) continue;
    if (p.multi_label) {
      for (int64_t j = 0; j < nc; ++j)
        if (row[4] * row[5 + j] > p.conf_thres) c.push_back({row[4] * row[5 + j], a * nc + j});
    } else {
      int64_t best = 0;
      for (int64_t j = 1; j < nc; ++j) if (row[5 + j] * row[4] > row[5 + best] * row[4]) best = j;
      if (row[4] * row[5 + best] > p.conf_thres) c.push_back({row[4] * row[5 + best], a * nc + best});
    }
  }
  std::stable_sort(c.begin(), c.end(), [](const Cand& x, const Cand& y) { return x.conf > y.conf; });
  if (static_cast<int64_t>(c.size()) > p.max_nms) c.resize(p.max_nms);
  std::vector<char> sup(c.size(), 0);
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < c.size() && static_cast<int64_t>(out.size()) < p.max_det; ++i) {
    if (sup[i]) continue;
    auto box = [&](size_t q, float* xyxy) {
      const float* row = &pred[(c[q].idx / nc) * (5 + nc)];
      k::xywh_to_xyxy(row[0], row[1], row[2], row[3], xyxy);
      return k::offset_nms_box(xyxy, static_cast<uint32_t>(c[q].idx % nc), p.agnostic);
    };
    float bi[4], bj[4];
    const k::NmsBox ki = box(i, bi);
    out.push_back({bi[0], bi[1], bi[2], bi[3], c[i].conf, static_cast<float>(c[i].idx % nc)});
    for (size_t j = i + 1; j < c.size(); ++j)
      if (!sup[j] && k::suppresses(ki, box(j, bj), p.iou_cutoff)) sup[j] = 1;
  }
  return out;
}

static void test_yolo_image() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const int64_t nc = 5;
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t n = 1 + trial * 7;
    std::vector<float> pred(n * (5 + nc));
    for (int64_t a = 0; a < n; ++a) {
      float* r = &pred[a * (5 + nc)];
      r[0] = u(rng) * 100; r[1] = u(rng) * 100; r[2] = 1 + u(rng) * 40; r[3] = 1 + u(rng) * 40;
      for (int j = 4; j < 5 + nc; ++j) r[j] = u(rng);
    }
    k::YoloNmsParams p;
    p.num_anchors = n;
    p.num_classes = nc;
    p.conf_thres = 0.1f * (trial % 4);
    p.iou_cutoff = k::iou_cutoff(0.3 + 0.1 * (trial % 3));
    p.agnostic = trial % 2;
    p.multi_label = trial % 3 != 0;
    p.max_det = trial % 5 == 0 ? 3 : 300;
    p.max_nms = trial % 7 == 0 ? 10 : 30000;
    const auto want = brute_yolo(pred, n, nc, p);
    const int64_t width = std::min<int64_t>(p.max_det, 1000);
    std::vector<float> got(width * 6, 0.f);
    k::cpu::NmsScratch s;
    const int64_t kept = k::cpu::yolo_nms_image<float>(
        pred.data(), p, width, [](float v) { return v; },
        [&](int64_t r, int c, float v) { got[r * 6 + c] = v; }, s);
    EXPECT(kept == static_cast<int64_t>(want.size()), "trial %d: kept %lld, want %zu", trial,
           static_cast<long long>(kept), want.size());
    for (int64_t r = 0; r < std::min<int64_t>(kept, want.size()); ++r)
      for (int c = 0; c < 6; ++c) EXPECT(got[r * 6 + c] == want[r][c], "trial %d row %lld col %d", trial, (long long)r, c);
  }
}

static void test_nms_boxes() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const int64_t n = 300;
  std::vector<float> boxes(4 * n), scores(n);
  for (int64_t i = 0; i < n; ++i) {
    boxes[4 * i] = u(rng) * 200; boxes[4 * i + 1] = u(rng) * 200;
    boxes[4 * i + 2] = boxes[4 * i] + u(rng) * 50; boxes[4 * i + 3] = boxes[4 * i + 1] + u(rng) * 50;
    scores[i] = std::floor(u(rng) * 20) / 20;  // many ties
  }
  std::vector<int64_t> keep(n);
  const float cutoff = k::iou_cutoff(0.5);
  const int64_t kept = k::cpu::nms_boxes<float>(boxes.data(), scores.data(), n, cutoff, [](float v) { return v; },
                                                keep.data());
  // Brute force with a stable order.
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  std::vector<char> sup(n, 0);
  std::vector<int64_t> want;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = order[i];
    if (sup[a]) continue;
    want.push_back(a);
    const k::NmsBox ka = k::make_nms_box(boxes[4 * a], boxes[4 * a + 1], boxes[4 * a + 2], boxes[4 * a + 3]);
    for (int64_t j = i + 1; j < n; ++j) {
      const int64_t b = order[j];
      if (k::suppresses(ka, k::make_nms_box(boxes[4 * b], boxes[4 * b + 1], boxes[4 * b + 2], boxes[4 * b + 3]), cutoff))
        sup[b] = 1;
    }
  }
  EXPECT(kept == static_cast<int64_t>(want.size()), "nms kept %lld want %zu", (long long)kept, want.size());
  for (size_t i = 0; i < want.size() && static_cast<int64_t>(i) < kept; ++i) EXPECT(keep[i] == want[i], "nms rank %zu", i);
}

int main() {
  test_keys();
  test_cutoff();
  test_yolo_image();
  test_nms_boxes();
  if (failures == 0) std::printf("test_nms: all passed\n");
  return failures == 0 ? 0 : 1;
}
