// The Python module fastedit._C. Importing it (after `import torch`) loads this shared library, whose
// static initialisers register the operators of schemas.cpp, cpu_ops.cpp and, in CUDA builds,
// cuda_ops.cpp with the torch dispatcher as torch.ops.fastedit.*. The module itself only says how it
// was built; fastedit/_ext.py loads it and declares the fake (meta) implementations.
#include <Python.h>

#ifndef FASTEDIT_WITH_CUDA
#define FASTEDIT_WITH_CUDA 0
#endif

static PyModuleDef fastedit_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "fastedit's compiled operators (registered as torch.ops.fastedit.*).",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&fastedit_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "with_cuda", FASTEDIT_WITH_CUDA) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
