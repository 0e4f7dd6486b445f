// The Python module rnn_ext._C.  Importing it runs the TORCH_LIBRARY
// registrations; the ops are then reached through torch.ops.rnn_ext.
#include <Python.h>

#include "ops/cpu_workers.h"

namespace {
PyObject* set_cpu_workers(PyObject*, PyObject* arg) {
  const long long n = PyLong_AsLongLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  return PyLong_FromLongLong(rnn_ext::set_cpu_workers(n));
}

PyMethodDef methods[] = {
    {"_set_cpu_workers", set_cpu_workers, METH_O,
     "Force the CPU executor's worker count (0: choose per call); returns the previous."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                      methods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef RNN_EXT_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  return m;
}
}
