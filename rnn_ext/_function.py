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

_below_autograd = torch._C._AutoDispatchBelowAutograd


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
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return op(*args)
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    with _below_autograd():
        return op(*args)
