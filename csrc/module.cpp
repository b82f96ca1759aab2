// The emofast._C Python module. Ops register themselves with TORCH_LIBRARY_FRAGMENT(emofast, m)
// in csrc/ops/*.cpp and csrc/planner_bindings.cpp; importing this module loads them.
// planner_names() returns the planner's (site kinds, modes) in enum order, so emofast.sweeps.plan
// can check its own tuples against them when the extension loads.
#include <Python.h>

#include "planner/planner.h"

namespace {

PyObject* names_tuple(int64_t n, std::string (*name)(int64_t)) {
  PyObject* t = PyTuple_New(n);
  for (int64_t i = 0; t != nullptr && i < n; ++i) {
    PyObject* s = PyUnicode_FromString(name(i).c_str());
    if (s == nullptr) {
      Py_DECREF(t);
      return nullptr;
    }
    PyTuple_SET_ITEM(t, i, s);  // steals s
  }
  return t;
}

PyObject* planner_names(PyObject*, PyObject*) {
  namespace pl = emofast::planner;
  PyObject* kinds = names_tuple(pl::kNumKinds, pl::kind_name);
  PyObject* modes = names_tuple(pl::kNumModes, pl::mode_name);
  if (kinds == nullptr || modes == nullptr) {
    Py_XDECREF(kinds);
    Py_XDECREF(modes);
    return nullptr;
  }
  return Py_BuildValue("(NN)", kinds, modes);  // N: steals both
}

PyMethodDef methods[] = {
    {"planner_names", planner_names, METH_NOARGS,
     "(site kinds, modes) of the sweep planner, in enum order"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "emofast C++ ops", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
