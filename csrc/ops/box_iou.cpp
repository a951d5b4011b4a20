// Schema of sparseyolo::box_iou. Backends: ops/cpu/box_iou_kernel.cpp, ops/cuda/box_iou_cuda.cpp;
// fake (meta) kernel: sparseyolo/_meta_registrations.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sparseyolo, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}
