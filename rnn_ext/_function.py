"""How rnn_ext.functional calls a sequence op (compiled or Triton) in eager
mode, so that torch.func works and a call costs little.

torch.library.register_autograd (which the ops use, so that torch.compile
and opcheck see their autograd) wraps the formula in an old-style
autograd.Function, forward(ctx, ...), which torch.func's transforms refuse
("must override the setup_context staticmethod").  In eager mode the ops are
therefore called through an autograd.Function built here from the very same
setup_context and backward (one copy of each formula), with a separate
setup_context and generate_vmap_rule, which grad, vjp, jacrev and vmap
accept.  Its forward, and every call that needs no gradient, run the op
below the autograd key: straight to the kernel, without the Python layer of
the registered autograd (most of the per-call cost of a one-step call).

Under torch.compile the op is called as it is: Dynamo and AOTAutograd trace
the registered autograd.
"""
import torch
import torch._functorch.utils

_below_autograd = torch._C._AutoDispatchBelowAutograd
_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state  # what torch.jit.is_tracing() reads
_functorch_active = torch._C._are_functorch_transforms_active
_unwrap_dead_wrappers = torch._functorch.utils.unwrap_dead_wrappers


def _apply_base(function, *args):
    return super(torch.autograd.Function, function).apply(*args)


def autograd_function(name, op, setup_context, backward):
    """An autograd.Function running `op` with the op's own formulas."""
    def forward(*args):
        with _below_autograd():
            return op(*args)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "generate_vmap_rule": True,
    })


def call(op, function, args):
    """op(*args) with autograd: `function` (from autograd_function) when a
    gradient may be needed, else the kernel directly."""
    if _is_compiling() or _tracing_state() is not None:
        return op(*args)
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                if _functorch_active():
                    return function.apply(*args)
                # What Function.apply does outside torch.func, without its
                # per-call inspect.signature binding of the arguments (the
                # forward takes *args: binding changes nothing).
                return _apply_base(function, *_unwrap_dead_wrappers(args))
    with _below_autograd():
        return op(*args)


_autocast_enabled = torch._C._is_any_autocast_enabled


def plain_eager():
    """Whether a call runs in plain eager mode: not under torch.compile,
    torch.jit.trace, a torch.func transform or autocast.  The modules' cells
    then call their one-op step (rnn_ext::lstm_cell, gru_cell, rnn_cell),
    whose autograd is in C++ and known to none of these."""
    return not (_autocast_enabled() or _functorch_active() or _tracing_state() is not None
                or _is_compiling())


def call_without_grad(op, args):
    """op(*args) for a call that needs no gradient (the inference ops, which
    have no autograd): straight to the kernel outside torch.compile."""
    if _is_compiling() or _tracing_state() is not None:
        return op(*args)
    with _below_autograd():
        return op(*args)
