// Schemas of sparseyolo's N:M sparsity ops. Backends: ops/cpu/nm_sparsity_kernel.cpp,
// ops/cuda/nm_sparsity_cuda.cpp; fake kernels: sparseyolo/_meta_registrations.py. Rules and formats:
// kernels/nm_sparsity.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  m.def("nm_mask(Tensor weight, int n, int m) -> Tensor");
  m.def("nm_compress(Tensor weight, int n, int m, Tensor? mask=None) -> (Tensor, Tensor)");
  m.def("nm_decompress(Tensor values, Tensor indices, int n, int m) -> Tensor");
  m.def("apply_masks_(Tensor(a!)[] tensors, Tensor[] masks) -> ()");
}
