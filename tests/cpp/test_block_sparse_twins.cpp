// CPU unit test of the twin-block rule of the block-sparse kernel (csrc/kernels/cpu/block_sparse_conv2d.h,
// bs_twin_starts): neighbouring output blocks run as twins exactly when they have the same units (the same count
// and the same offsets), pairs are taken greedily from block 0 and never overlap, and a block whose units differ
// from both neighbours runs alone. The kernels themselves are tested against F.conv2d in
// tests/test_block_sparse_conv.py.
#include <cstdio>
#include <vector>

#include "kernels/cpu/block_sparse_conv2d.h"

namespace k = sparseyolo::kernels;

static int failures = 0;

// blocks: each block's unit offsets; want: the expected twin_start flags.
static void check(const char* what, const std::vector<std::vector<int32_t>>& blocks, const std::vector<int>& want) {
  std::vector<int64_t> ptr{0};
  std::vector<int32_t> offsets;
  for (const auto& b : blocks) {
    offsets.insert(offsets.end(), b.begin(), b.end());
    ptr.push_back(static_cast<int64_t>(offsets.size()));
  }
  std::vector<uint8_t> got(blocks.size(), 7);
  k::bs_twin_starts(ptr.data(), offsets.data(), static_cast<int64_t>(blocks.size()), got.data());
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (got[b] != want[b]) {
      std::printf("FAIL %s: block %zu twin_start %d, want %d\n", what, b, got[b], want[b]);
      ++failures;
    }
  }
}

int main() {
  check("one block", {{0, 4, 8}}, {0});
  check("two equal blocks", {{0, 4, 8}, {0, 4, 8}}, {1, 0});
  check("three equal blocks: one pair, then one alone", {{1, 2}, {1, 2}, {1, 2}}, {1, 0, 0});
  check("four equal blocks: two pairs", {{1}, {1}, {1}, {1}}, {1, 0, 1, 0});
  check("same count, other offsets", {{0, 4}, {0, 5}}, {0, 0});
  check("a prefix is not the same units", {{0, 4}, {0, 4, 8}}, {0, 0});
  check("pairs start where they can", {{0}, {3}, {3}, {5}, {5}, {5}}, {0, 1, 0, 1, 0, 0});
  check("empty blocks are twins", {{}, {}, {2}}, {1, 0, 0});
  check("no blocks", {}, {});
  if (failures == 0) std::printf("test_block_sparse_twins: all passed\n");
  return failures == 0 ? 0 : 1;
}
