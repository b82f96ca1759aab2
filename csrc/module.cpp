// The emofast._C Python module. Ops register themselves with TORCH_LIBRARY_FRAGMENT(emofast, m)
// in csrc/ops/*.cpp and csrc/planner_bindings.cpp; importing this module loads them.
#include <Python.h>

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "emofast C++ ops", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
