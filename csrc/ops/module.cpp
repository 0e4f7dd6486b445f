// The Python module rnn_ext._C.  Importing it runs the TORCH_LIBRARY
// registrations; the ops are then reached through torch.ops.rnn_ext.
#include <Python.h>

#include "ops/cpu_workers.h"
#include "rnn_ext/partition.h"

namespace {
PyObject* set_cpu_workers(PyObject*, PyObject* arg) {
  const long long n = PyLong_AsLongLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  return PyLong_FromLongLong(rnn_ext::set_cpu_workers(n));
}

// partition::split for every worker: ((begin, end), ...) of [0, n) over K
// workers.  The Triton backend's multi-program kernel takes its slices from
// this table, so its slicing is the CPU executor's rule, not a second copy.
PyObject* partition_slices(PyObject*, PyObject* args) {
  long long n = 0, K = 0, align = 0;
  if (!PyArg_ParseTuple(args, "LLL", &n, &K, &align)) return nullptr;
  if (n < 0 || K < 1 || align < 1) {
    PyErr_Format(PyExc_ValueError,
                 "_partition_slices: need n >= 0, K >= 1 and align >= 1, got n=%lld K=%lld align=%lld",
                 n, K, align);
    return nullptr;
  }
  PyObject* out = PyTuple_New(K);
  if (out == nullptr) return nullptr;
  for (long long k = 0; k < K; ++k) {
    const rnn_ext::partition::Slice s = rnn_ext::partition::split(n, K, k, align);
    PyObject* pair = Py_BuildValue("(LL)", static_cast<long long>(s.begin), static_cast<long long>(s.end));
    if (pair == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, k, pair);
  }
  return out;
}

PyMethodDef methods[] = {
    {"_partition_slices", partition_slices, METH_VARARGS,
     "partition::split(n, K, k, align) for k = 0..K-1, as ((begin, end), ...)."},
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
