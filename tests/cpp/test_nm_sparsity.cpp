// CPU unit test of the torch-free N:M rules (csrc/kernels/nm_sparsity.h): the selection against a
// brute-force search over all C(m, n) patterns (first maximum in lexicographic order wins), on random
// values and on small integers full of ties, and the compress/decompress round trip.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/nm_sparsity.h"

namespace k = sparseyolo::kernels;

static int failures = 0;

// Brute force: the kept set of the lexicographically first n-subset with the largest magnitude sum.
static uint32_t oracle(const std::vector<double>& mag, int n, int m) {
  uint32_t best = 0;
  double best_sum = -1;
  std::vector<int> c(n);
  for (int i = 0; i < n; ++i) c[i] = i;
  while (true) {
    double s = 0;
    uint32_t bits = 0;
    for (int i : c) { s += mag[i]; bits |= 1u << i; }
    if (s > best_sum) { best_sum = s; best = bits; }
    int i = n - 1;
    while (i >= 0 && c[i] == m - n + i) --i;
    if (i < 0) break;
    ++c[i];
    for (int j = i + 1; j < n; ++j) c[j] = c[j - 1] + 1;
  }
  return best;
}

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(-3, 3);
  const int patterns[][2] = {{2, 4}, {1, 4}, {3, 4}, {4, 8}, {1, 2}, {5, 16}, {8, 16}};
  for (const auto& p : patterns) {
    const int n = p[0], m = p[1];
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<double> w(m), mag(m);
      for (int j = 0; j < m; ++j) {
        w[j] = trial % 2 ? small(rng) : normal(rng);
        mag[j] = w[j] < 0 ? -w[j] : w[j];
      }
      const uint32_t got = k::nm_select<double>(mag.data(), nullptr, n, m);
      if (got != oracle(mag, n, m)) {
        std::printf("FAIL nm_select %d:%d trial %d: got %x want %x\n", n, m, trial, got, oracle(mag, n, m));
        ++failures;
      }
      // Round trip through the compressed format.
      std::vector<double> masked(m, 0.0), values(n), back(m);
      std::vector<uint8_t> idx(n);
      for (int j = 0; j < m; ++j) masked[j] = (got >> j) & 1u ? w[j] : 0.0;
      k::nm_compress_group<double>(masked.data(), nullptr, n, m, values.data(), idx.data(), [](double v) { return v; });
      std::vector<uint64_t> vb(n), ob(m);
      for (int t = 0; t < n; ++t) std::memcpy(&vb[t], &values[t], 8);
      k::nm_decompress_group<uint64_t>(vb.data(), idx.data(), n, m, ob.data());
      for (int j = 0; j < m; ++j) {
        std::memcpy(&back[j], &ob[j], 8);
        if (back[j] != masked[j]) {
          std::printf("FAIL round trip %d:%d trial %d position %d\n", n, m, trial, j);
          ++failures;
        }
      }
    }
  }
  // Priority (a previous mask) ranks first: keep the two flagged zeros over the large value.
  const float mag[4] = {0.f, 0.f, 5.f, 0.f};
  const uint8_t prio[4] = {0, 1, 0, 1};
  if (k::nm_select<float>(mag, prio, 2, 4) != 0b1010u) {
    std::printf("FAIL priority\n");
    ++failures;
  }
  if (failures == 0) std::printf("test_nm_sparsity: all passed\n");
  return failures == 0 ? 0 : 1;
}
