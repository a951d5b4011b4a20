// CPU unit tests of the torch-free sparse convolution (csrc/kernels/cpu/sparse_conv2d.h): geometry, the
// wide-grid input layout, and both compute paths (portable; AVX2/FMA when the CPU has it) against a naive
// dense convolution of the same masked weight, over odd sizes, strides, paddings and sparsities.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cpu/sparse_conv2d.h"

namespace k = sparseyolo::kernels;

static int failures = 0;
#define EXPECT(cond, ...)                                \
  do {                                                   \
    if (!(cond)) {                                       \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);   \
      std::printf(__VA_ARGS__);                          \
      std::printf("\n");                                 \
      ++failures;                                        \
    }                                                    \
  } while (0)

struct Case {
  int cin, cout, h, w, kh, kw, s, p;
  double sparsity;
  bool silu;
  bool shared = false;  // zeros shared by groups of 4 output channels (the blocked 4-row path)
};

static void naive(const Case& c, const std::vector<float>& x, const std::vector<float>& wt,
                  const std::vector<float>& bias, int ho, int wo, std::vector<double>& y) {
  y.assign(static_cast<size_t>(c.cout) * ho * wo, 0.0);
  for (int o = 0; o < c.cout; ++o)
    for (int i = 0; i < ho; ++i)
      for (int j = 0; j < wo; ++j) {
        double acc = bias[o];
        for (int ci = 0; ci < c.cin; ++ci)
          for (int a = 0; a < c.kh; ++a)
            for (int b = 0; b < c.kw; ++b) {
              const int r = i * c.s + a - c.p, q = j * c.s + b - c.p;
              if (r < 0 || r >= c.h || q < 0 || q >= c.w) continue;
              acc += double(wt[((o * c.cin + ci) * c.kh + a) * c.kw + b]) * x[(ci * c.h + r) * c.w + q];
            }
        y[(o * ho + i) * wo + j] = c.silu ? acc / (1.0 + std::exp(-acc)) : acc;
      }
}

static void run_case(const Case& c, bool avx2, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud;
  std::vector<float> x(static_cast<size_t>(c.cin) * c.h * c.w), wt(static_cast<size_t>(c.cout) * c.cin * c.kh * c.kw),
      bias(c.cout);
  for (auto& v : x) v = nd(rng);
  const int per_row = c.cin * c.kh * c.kw;
  for (size_t i = 0; i < wt.size(); ++i) {
    const int o = static_cast<int>(i / per_row);
    // shared: the first row of each group of 4 decides which columns are zero for the whole group
    const bool zero = c.shared && o % 4 != 0 ? wt[(o - o % 4) * per_row + i % per_row] == 0.f : ud(rng) < c.sparsity;
    wt[i] = zero ? 0.f : nd(rng);
  }
  for (auto& v : bias) v = nd(rng);
  // CSR
  const int cols = c.cin * c.kh * c.kw;
  std::vector<float> values;
  std::vector<int32_t> columns;
  std::vector<int64_t> row_ptr{0};
  for (int o = 0; o < c.cout; ++o) {
    for (int q = 0; q < cols; ++q)
      if (wt[o * cols + q] != 0.f) values.push_back(wt[o * cols + q]), columns.push_back(q);
    row_ptr.push_back(static_cast<int64_t>(values.size()));
  }
  const k::SpconvGeometry g = k::spconv_geometry(c.cin, c.h, c.w, c.kh, c.kw, c.s, c.s, c.p, c.p);
  EXPECT(g.ho == (c.h + 2 * c.p - c.kh) / c.s + 1 && g.wo == (c.w + 2 * c.p - c.kw) / c.s + 1, "geometry");
  std::vector<float> buffer;
  const float* input = x.data();
  if (!g.direct) {
    buffer.assign(static_cast<size_t>(g.buffer_size), 12345.f);  // poison: every float must be written
    k::spconv_prepare_input(g, x.data(), buffer.data(), 0, c.cin);
    std::fill(buffer.begin() + c.cin * g.channel_stride, buffer.end(), 0.f);
    input = buffer.data();
  }
  std::vector<int32_t> table(cols), offsets(values.size());
  k::spconv_offset_table(g, table.data());
  const int64_t nkb = (c.cin + g.kblock - 1) / g.kblock;
  std::vector<int64_t> seg(static_cast<size_t>(c.cout * (nkb + 1)));
  EXPECT(k::spconv_index_rows(g, table.data(), row_ptr.data(), columns.data(), offsets.data(), seg.data(), 0, c.cout),
         "index_rows");
  std::vector<float> out(static_cast<size_t>(c.cout) * g.ho * g.wo, -777.f);
  k::SpconvArgs a;
  a.g = g;
  a.input = input;
  a.output = out.data();
  a.values = values.data();
  a.offsets = offsets.data();
  a.seg = seg.data();
  a.nkb = nkb;
  a.bias = bias.data();
  a.act = c.silu ? k::SpconvAct::kSilu : k::SpconvAct::kIdentity;
  std::vector<uint8_t> block4(static_cast<size_t>((c.cout + 3) / 4));
  k::spconv_find_blocks(row_ptr.data(), columns.data(), c.cout, block4.data());
  a.block4 = block4.data();
  if (c.shared) {  // every full group of 4 rows with a nonzero is found as a block
    for (int o = 0; o + 4 <= c.cout; o += 4)
      EXPECT(block4[o / 4] == (row_ptr[o + 1] > row_ptr[o] ? 1 : 0), "block of rows %d..%d not found", o, o + 3);
  }
  // split the work like the op does: two channel blocks, tiles in two halves
  const int64_t tiles = g.tiles(), half = tiles / 2, cmid = c.cout / 2;
  k::spconv_block(a, 0, cmid, 0, half, avx2);
  k::spconv_block(a, 0, cmid, half, tiles, avx2);
  k::spconv_block(a, cmid, c.cout, 0, tiles, avx2);
  std::vector<double> ref;
  naive(c, x, wt, bias, static_cast<int>(g.ho), static_cast<int>(g.wo), ref);
  double maxref = 1e-12, maxerr = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    maxref = std::max(maxref, std::fabs(ref[i]));
    maxerr = std::max(maxerr, std::fabs(ref[i] - out[i]));
  }
  EXPECT(maxerr / maxref <= 1e-5, "%s cin=%d cout=%d %dx%d k=%dx%d s=%d p=%d sp=%.2f silu=%d: rel err %.3g",
         avx2 ? "avx2" : "portable", c.cin, c.cout, c.h, c.w, c.kh, c.kw, c.s, c.p, c.sparsity, c.silu,
         maxerr / maxref);
}

static void test_bad_columns() {
  const k::SpconvGeometry g = k::spconv_geometry(4, 5, 5, 3, 3, 1, 1, 1, 1);
  std::vector<int32_t> table(36);
  k::spconv_offset_table(g, table.data());
  const int64_t nkb = (4 + g.kblock - 1) / g.kblock;
  std::vector<int64_t> seg(nkb + 1), row_ptr{0, 2};
  std::vector<int32_t> offsets(2);
  const int32_t out_of_range[] = {3, 36}, unsorted[] = {5, 2};
  EXPECT(!k::spconv_index_rows(g, table.data(), row_ptr.data(), out_of_range, offsets.data(), seg.data(), 0, 1),
         "column 36 >= 36 accepted");
  EXPECT(!k::spconv_index_rows(g, table.data(), row_ptr.data(), unsorted, offsets.data(), seg.data(), 0, 1),
         "decreasing columns accepted");
}

int main() {
  std::mt19937 rng(0);
  const Case cases[] = {
      {13, 33, 11, 9, 3, 3, 1, 1, 0.5, true},   {33, 13, 7, 13, 1, 1, 1, 0, 0.75, false},
      {80, 20, 15, 17, 3, 3, 2, 1, 0.9, true},  {16, 8, 9, 9, 1, 1, 2, 0, 0.0, false},
      {8, 8, 10, 10, 3, 3, 1, 0, 1.0, true},    {40, 24, 32, 32, 1, 1, 1, 0, 0.5, false},  // 4 KiB channels
      {96, 8, 5, 6, 3, 3, 1, 1, 0.3, true},     {7, 5, 1, 1, 3, 3, 1, 1, 0.2, false},
      {12, 6, 14, 17, 3, 5, 2, 2, 0.6, true},   {3, 16, 33, 31, 6, 6, 2, 2, 0.0, true},
      // output-channel blocks (Cout not a multiple of 4 and a split at Cout/2 mid-block: both fall back)
      {24, 22, 13, 11, 3, 3, 1, 1, 0.5, true, true}, {64, 16, 9, 7, 1, 1, 1, 0, 0.5, false, true},
      {40, 12, 17, 15, 3, 3, 2, 1, 0.75, true, true}, {96, 8, 20, 20, 1, 1, 1, 0, 0.5, true, true},
  };
  const bool has_avx2 = k::spconv_cpu_has_avx2();
  std::printf("AVX2/FMA path: %s\n", has_avx2 ? "tested" : "not available on this CPU");
  for (const Case& c : cases) {
    run_case(c, false, rng);
    if (has_avx2) run_case(c, true, rng);
  }
  test_bad_columns();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("sparse_conv2d: all passed\n");
  return 0;
}
