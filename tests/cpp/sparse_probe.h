// The random 2:4 problem of the one-instruction layout probes (cuda_test_mma_sp_layout.cu for mma.sp m16n8k32,
// experimental/cuda_test_wgmma_sp_layout.cu for wgmma.sp m64n8k32): a dense A (kRows x 32) with two kept values in every group
// of four, B (32 x 8), their product D, all exact in fp16, and the fragment and metadata words under test.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

template <int kRows>
struct SparseProbe {
  float A[kRows][32] = {}, B[32][8] = {}, D[kRows][8] = {};
  int pos[kRows][8][2];  // the kept positions of row r, group q, ascending

  explicit SparseProbe(unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uni(-1.f, 1.f);
    const int pairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
    for (int r = 0; r < kRows; ++r)
      for (int q = 0; q < 8; ++q) {
        const int* p = pairs[rng() % 6];
        pos[r][q][0] = p[0];
        pos[r][q][1] = p[1];
        for (int i = 0; i < 2; ++i) A[r][4 * q + p[i]] = std::round(uni(rng) * 64.f) / 64.f;
      }
    for (auto& row : B)
      for (float& v : row) v = std::round(uni(rng) * 64.f) / 64.f;
    for (int r = 0; r < kRows; ++r)
      for (int n = 0; n < 8; ++n)
        for (int k = 0; k < 32; ++k) D[r][n] += A[r][k] * B[k][n];
  }

  // Compressed A element i of lane 4g + t of the 16 rows from row0 (the mma.sp m16n8k32 fragment): row
  // row0 + g + 8((i/2)&1), compressed column j = 2t + (i&1) + 8(i/4), the (j&1)-th kept value of group j/2.
  float a_fragment(int row0, int lane, int i) const {
    const int g = lane >> 2, t = lane & 3;
    const int r = row0 + g + 8 * ((i / 2) & 1), j = 2 * t + (i & 1) + 8 * (i / 4);
    return A[r][4 * (j / 2) + pos[r][j / 2][j & 1]];
  }

  // 16-bit metadata of row r for dense columns 16h .. 16h+15: group i at bits 4i..4i+3 as pos0 | pos1 << 2.
  uint32_t half_meta(int r, int h) const {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(pos[r][4 * h + i][0] | pos[r][4 * h + i][1] << 2) << (4 * i);
    return v;
  }

  // Metadata word of lane 4g + t for the 16 rows from row0 under slot assignment perm: slots (t = 0, bits 0-15),
  // (t = 0, bits 16-31), (t = 1, bits 0-15), (t = 1, bits 16-31) each get one of the halves (row g / g+8) x
  // (columns 0-15 / 16-31), numbered 2 * row_hi + col_hi. Lanes t = 2, 3 repeat 0, 1 (not read with selector 0).
  uint32_t meta_word(int row0, int lane, const int (&perm)[4]) const {
    const int g = lane >> 2, t = lane & 1;
    uint32_t w = 0;
    for (int hi = 0; hi < 2; ++hi) {
      const int which = perm[2 * t + hi];
      w |= half_meta(row0 + g + 8 * (which >> 1), which & 1) << (16 * hi);
    }
    return w;
  }
};
