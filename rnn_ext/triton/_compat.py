"""Workaround for the Triton interpreter of Triton 3.6 with NumPy >= 2.4.

The interpreter passes scalar kernel arguments as 1-element arrays and turns
them into Python ints with int(array) when they bound a loop
(`for t in range(0, T)`).  NumPy 2.4 made int() of an array with ndim > 0 a
TypeError, so any loop with a runtime bound fails under the interpreter
(triton-lang/triton#9171, fixed upstream after 3.6).  The GPU path is not
affected.  `patch_interpreter()` redefines the interpreter's __index__ of
tensors to read the single element explicitly; it does nothing unless
interpreting with an affected NumPy, and it is idempotent.
"""
import os

import numpy as np


def _int_of_one_element_array_fails():
    try:
        int(np.zeros(1, dtype=np.int32))
    except TypeError:
        return True
    return False


def patch_interpreter():
    if os.environ.get("TRITON_INTERPRET", "0") != "1" or not _int_of_one_element_array_fails():
        return
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_rnn_ext_index_fix", False):
        return

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        # The scope restores attributes last-in first-out, so setting
        # __index__ a second time is undone correctly after the launch.
        scope.set_attr(tensor, "__index__",
                       lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    _patch_lang_tensor._rnn_ext_index_fix = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
