// Shared helpers of the torch-free CUDA kernel tests (tests/cpp/cuda_test_*.cpp).
#pragma once

#include <cstdio>

#include <cuda_runtime.h>

// Return 1 from the enclosing function (main or a test case) on a CUDA error, saying where it happened.
#define CHECK_CUDA(x)                                                                     \
  do {                                                                                    \
    cudaError_t e = (x);                                                                  \
    if (e != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      return 1;                                                                           \
    }                                                                                     \
  } while (0)

// ctest treats exit code 77 as "skipped" (SKIP_RETURN_CODE in CMakeLists.txt).
constexpr int kSkipped = 77;

// True when a CUDA device is usable; otherwise prints that `test` is skipped.
inline bool have_cuda_device(const char* test) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("%s: no CUDA device, skipped\n", test);
    return false;
  }
  return true;
}
