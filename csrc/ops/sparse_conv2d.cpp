// Schema of sparseyolo's direct sparse convolution. Backend: ops/cpu/sparse_conv2d_kernel.cpp; fake kernel:
// sparseyolo/_meta_registrations.py; kernel design and weight format: kernels/cpu/sparse_conv2d.h; packing
// (once per model): sparseyolo/sparse/packing.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  m.def(
      "sparse_conv2d(Tensor input, Tensor values, Tensor columns, Tensor row_ptr, int[2] kernel_size, "
      "Tensor? bias=None, int[2] stride=[1, 1], int[2] padding=[0, 0], str activation=\"identity\", int in_channels=-1) -> Tensor");
}
