// The Python module rnn_ext._C.  Importing it runs the TORCH_LIBRARY
// registrations; the ops are then reached through torch.ops.rnn_ext.
#include <Python.h>
#include <stdint.h>

#include "ops/cpu_workers.h"
#include "rnn_ext/fit.h"
#include "rnn_ext/partition.h"

namespace {
// An integer setting: set(n) returns the previous value.
template <int64_t (*set)(int64_t)>
PyObject* int_setting(PyObject*, PyObject* arg) {
  const long long n = PyLong_AsLongLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  return PyLong_FromLongLong(set(n));
}

PyObject* set_cpu_stepwise(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(rnn_ext::set_cpu_stepwise(on != 0));
}

PyObject* reusable_cached_bytes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(rnn_ext::reusable_cached_bytes());
}

// The fit rule (rnn_ext/fit.h) on given figures, so that tests check it
// with an H100's limits and the kernels' sm_90 registers without a GPU.
PyObject* persistent_fit(PyObject*, PyObject* args) {
  rnn_ext::fit::Layer l{};
  rnn_ext::fit::DeviceLimits d{};
  rnn_ext::fit::KernelResources k{};
  int backward = 0;
  if (!PyArg_ParseTuple(args, "LLLLLLLLLLLLLLp|L", &l.H, &l.Hin, &l.G, &l.B, &l.dtype_bytes, &d.sms,
                        &d.registers_per_sm, &d.shared_per_sm, &d.max_blocks_per_sm,
                        &d.max_threads_per_sm, &d.shared_per_block, &k.registers_per_thread,
                        &k.threads, &k.shared_per_block, &backward, &l.directions))
    return nullptr;
  l.backward = backward != 0;
  const rnn_ext::fit::Decision r = rnn_ext::fit::decide(l, d, k);
  static const char* reasons[] = {"fits", "not_resident", "batch_too_large", "weights_exceed_chip"};
  return Py_BuildValue("{s:O,s:L,s:L,s:L,s:L,s:s}", "persistent", r.persistent ? Py_True : Py_False,
                       "workers", (long long)r.workers, "blocks_per_sm", (long long)r.blocks_per_sm,
                       "chip_bytes_per_worker", (long long)r.chip_bytes_per_worker,
                       "weight_bytes_per_worker", (long long)r.weight_bytes_per_worker, "reason",
                       reasons[static_cast<int>(r.reason)]);
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
    {"_set_cpu_workers", int_setting<rnn_ext::set_cpu_workers>, METH_O,
     "Force the CPU executor's worker count (0: choose per call); returns the previous."},
    {"_set_cpu_stepwise", set_cpu_stepwise, METH_O,
     "Run the CPU ops on the stepwise loop (the CUDA backend's) instead of the "
     "partitioned one (tests); returns the previous setting."},
    {"_set_onednn_weight_grad_rows", int_setting<rnn_ext::set_onednn_weight_grad_rows>, METH_O,
     "From how many rows the CPU ops' fp32 weight gradients go through oneDNN "
     "(negative: never; set by rnn_ext/_projection.py's rule); returns the previous."},
    {"_set_single_row_panel_bytes", int_setting<rnn_ext::set_single_row_panel_bytes>, METH_O,
     "At B = 1, the largest W_hh (bytes) the CPU executor packs into panels (set by "
     "rnn_ext/_projection.py's rule); returns the previous."},
    {"_reusable_cached_bytes", reusable_cached_bytes, METH_NOARGS,
     "Bytes of free blocks the CPU ops' buffer cache holds (ops/buffer_pool.h)."},
    {"_persistent_fit", persistent_fit, METH_VARARGS,
     "The fit rule: (H, Hin, G, B, dtype_bytes, sms, registers_per_sm, shared_per_sm, "
     "max_blocks_per_sm, max_threads_per_sm, shared_per_block_optin, registers_per_thread, "
     "threads, static_shared_per_block, backward[, directions]) -> dict."},
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
