// Launches the 2:4 sparse implicit-GEMM convolution (kernels and dispatch in sparse_conv2d_24_device.cuh, weight
// format in sparse_conv2d_24.h).
#include "sparse_conv2d_24.h"

#include <map>
#include <mutex>
#include <utility>

#include "sparse_conv2d_24_device.cuh"

namespace sparseyolo {
namespace kernels {
namespace {

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per (device, kernel) instead of a driver call before every
// launch (small layers at batch 1 run in tens of microseconds).
cudaError_t allow_dynamic_smem(int device, const void* kernel, int bytes) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int> allowed;
  const std::lock_guard<std::mutex> lock(mutex);
  int& have = allowed[{device, kernel}];
  if (have >= bytes) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) have = bytes;
  return e;
}

}  // namespace

bool sparse_conv24_supported(int device) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}

bool sparse_conv24_variant_built(int variant) {
#ifdef SPARSEYOLO_EXPERIMENTAL_GPU
  return variant >= kVariantDefault && variant <= kVariantWgmma64;
#else
  return variant == kVariantDefault || variant == kVariantTile64;
#endif
}

bool sparse_conv24_variant_supported(int variant, int device) {
  if (!is_wgmma_variant(variant)) return true;
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
}

cudaError_t sparse_conv24_cuda(const SparseConv24Params& p, DType dtype, cudaStream_t stream) {
  int device = 0, max_smem = 48 * 1024, major = 0, minor = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess) return e;
  return spconv24::dispatch(p, dtype, max_smem, 10 * major + minor, [&](const spconv24::Launch& l) {
    if (l.smem_bytes > 48 * 1024) {  // opt in to more than the default 48 KiB of dynamic shared memory
      const cudaError_t e = allow_dynamic_smem(device, reinterpret_cast<const void*>(l.kernel), l.smem_bytes);
      if (e != cudaSuccess) return e;
    }
    l.kernel<<<l.grid, l.block, l.smem_bytes, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace kernels
}  // namespace sparseyolo
