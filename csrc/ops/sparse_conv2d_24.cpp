// Schema of sparseyolo's 2:4 sparse convolution on the sparse tensor cores. Backends: ops/cpu/
// sparse_conv2d_24_kernel.cpp (reference: decode + dense conv), ops/cuda/sparse_conv2d_24_cuda.cpp (mma.sp
// kernel in kernels/cuda/sparse_conv2d_24.cu, where the weight format is described); fake kernel:
// sparseyolo/_meta_registrations.py; packing: sparseyolo/sparse/mma_sp.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  m.def(
      "sparse_conv2d_24(Tensor input, Tensor values, Tensor meta, int out_channels, int[2] kernel_size, "
      "Tensor? bias=None, int[2] stride=[1, 1], int[2] padding=[0, 0], str activation=\"identity\", str kernel=\"default\", int in_channels=-1) -> Tensor");
}
