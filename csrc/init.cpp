// Python module entry point of sparseyolo._C. The ops register themselves with TORCH_LIBRARY when the
// shared object is loaded; this file only makes the library importable as a Python module, without
// pulling in pybind11 (which would add minutes of compile time and nothing we use).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "sparseyolo's compiled ops; use them through torch.ops.sparseyolo or sparseyolo.ops.",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
