// Autograd of the cell ops (rnn_ext::lstm_cell, gru_cell, rnn_cell), in C++.
//
// A decoder calls its cell once per output step, so a step's fixed cost is
// what matters, and most of it was Python: the autograd.Function's forward
// and backward, and one autograd node per piece (the input projection, a
// view, the recurrent op).  Here a step is one node: forward runs
// *_cell_forward (input projection and fused step in one op), backward
// *_cell_backward (every gradient in one op).  Without a gradient to record
// the op runs its inference kernel directly.
//
// Backward with create_graph=True (double backward) recomputes the step
// with rnn_ext/reference.py's formulas (the composite ops
// rnn_ext::*_cell_reference, defined in rnn_ext/_ops.py) and differentiates
// them, as the sequence ops do.
//
// The modules call these ops in plain eager mode only; under torch.compile,
// torch.func and autocast they take the sequence ops (rnn_ext/modules.py).
#include <torch/library.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <functional>

#include "ops/sequence.h"

namespace rnn_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

bool wants_grad(std::initializer_list<const Tensor*> tensors,
                std::initializer_list<const OptTensor*> optional) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : tensors)
    if (t->requires_grad()) return true;
  for (const OptTensor* t : optional)
    if (*t && (*t)->requires_grad()) return true;
  return false;
}

Tensor defined_or(const OptTensor& t) { return t ? *t : Tensor(); }
OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Backward with create_graph=True: gradients of `step` (the differentiable
// recomputation) at `inputs`.  An input whose gradient is wanted but that
// does not require grad here is replaced by a detached copy that does, so
// that the recomputation depends on it.
variable_list differentiable_backward(
    AutogradContext* ctx, variable_list inputs, const variable_list& grads,
    const std::function<variable_list(const variable_list&)>& step) {
  // inputs: one per argument of forward, undefined for an absent optional
  // tensor or a non-tensor argument, which have no autograd edge.
  std::vector<size_t> wanted;
  size_t edge = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined() || !ctx->needs_input_grad(edge++)) continue;
    if (!inputs[i].requires_grad()) inputs[i] = inputs[i].detach().requires_grad_(true);
    wanted.push_back(i);
  }
  variable_list result(inputs.size());
  const variable_list outputs = step(inputs);
  variable_list outs, outs_grads, at_inputs;
  for (size_t o = 0; o < outputs.size(); ++o) {
    if (grads[o].defined()) {
      outs.push_back(outputs[o]);
      outs_grads.push_back(grads[o]);
    }
  }
  if (wanted.empty() || outs.empty()) return result;
  for (size_t i : wanted) at_inputs.push_back(inputs[i]);
  const variable_list got = torch::autograd::grad(outs, at_inputs, outs_grads,
                                                  /*retain_graph=*/true,
                                                  /*create_graph=*/true,
                                                  /*allow_unused=*/true);
  for (size_t k = 0; k < wanted.size(); ++k) {
    const size_t i = wanted[k];
    result[i] = got[k].defined() ? got[k] : at::zeros_like(inputs[i]);
  }
  return result;
}


// ------------------------------------------------------------------ LSTM --
struct LSTMCellFunction : public torch::autograd::Function<LSTMCellFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0,
                               const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh) {
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const Tensor&,
                                                    const OptTensor&, const OptTensor&)>(
            "rnn_ext::lstm_cell_forward");
    auto [h, c, ws] = op.call(x, h0, c0, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({x, h0, c0, w_ih, w_hh, defined_or(b_ih), defined_or(b_hh), h, ws});
    return {h, c};
  }

  static variable_list step(const variable_list& in) {
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const OptTensor&,
                                            const OptTensor&)>("rnn_ext::lstm_cell_reference");
    auto [h, c] = op.call(in[0], in[1], in[2], in[3], in[4], optional(in[5]), optional(in[6]));
    return {h, c};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    if (at::GradMode::is_enabled())
      return differentiable_backward(ctx, {s[0], s[1], s[2], s[3], s[4], s[5], s[6]}, grads,
                                     step);
    static const auto op = typed_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                               Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
        const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
        "rnn_ext::lstm_cell_backward");
    // Below autograd: straight to the kernel, not through the boxed fallback
    // that an op without autograd meets at the Autograd key.
    at::AutoDispatchBelowADInplaceOrView below;
    auto [dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh] =
        op.call(grads[0], grads[1], s[0], s[1], s[2], s[3], s[4], s[7], s[8]);
    return {dx, dh, dc, dw_ih, dw_hh, s[5].defined() ? db_ih : Tensor(),
            s[6].defined() ? db_hh : Tensor()};
  }
};

std::tuple<Tensor, Tensor> lstm_cell_autograd(const Tensor& x, const OptTensor& hx,
                                              const OptTensor& cx, const Tensor& w_ih,
                                              const Tensor& w_hh, const OptTensor& b_ih,
                                              const OptTensor& b_hh) {
  if (!wants_grad({&x, &w_ih, &w_hh}, {&hx, &cx, &b_ih, &b_hh})) {
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                            const Tensor&, const Tensor&, const OptTensor&,
                                            const OptTensor&)>("rnn_ext::lstm_cell");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, hx, cx, w_ih, w_hh, b_ih, b_hh);
  }
  const int64_t H = check_cell("rnn_ext::lstm_cell", 4, x, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const Tensor h0 = hx ? *hx : at::zeros({x.size(0), H}, x.options());
  const Tensor c0 = cx ? *cx : at::zeros({x.size(0), H}, x.options());
  variable_list out = LSTMCellFunction::apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1]};
}

// ------------------------------------------------------------------- GRU --
struct GRUCellFunction : public torch::autograd::Function<GRUCellFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh) {
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const OptTensor&, const OptTensor&)>(
            "rnn_ext::gru_cell_forward");
    auto [h, ws] = op.call(x, h0, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({x, h0, w_ih, w_hh, defined_or(b_ih), defined_or(b_hh), h, ws});
    return {h};
  }

  static variable_list step(const variable_list& in) {
    static const auto op =
        typed_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const OptTensor&, const OptTensor&)>("rnn_ext::gru_cell_reference");
    return {op.call(in[0], in[1], in[2], in[3], optional(in[4]), optional(in[5]))};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    if (at::GradMode::is_enabled())
      return differentiable_backward(ctx, {s[0], s[1], s[2], s[3], s[4], s[5]}, grads, step);
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
            const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
            const Tensor&, const Tensor&)>("rnn_ext::gru_cell_backward");
    // Below autograd: straight to the kernel, not through the boxed fallback
    // that an op without autograd meets at the Autograd key.
    at::AutoDispatchBelowADInplaceOrView below;
    auto [dx, dh, dw_ih, dw_hh, db_ih, db_hh] =
        op.call(grads[0], s[0], s[1], s[2], s[3], s[6], s[7]);
    return {dx, dh, dw_ih, dw_hh, s[4].defined() ? db_ih : Tensor(),
            s[5].defined() ? db_hh : Tensor()};
  }
};

Tensor gru_cell_autograd(const Tensor& x, const OptTensor& hx, const Tensor& w_ih,
                         const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
  if (!wants_grad({&x, &w_ih, &w_hh}, {&hx, &b_ih, &b_hh})) {
    static const auto op =
        typed_op<Tensor(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                        const OptTensor&, const OptTensor&)>("rnn_ext::gru_cell");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, hx, w_ih, w_hh, b_ih, b_hh);
  }
  const int64_t H = check_cell("rnn_ext::gru_cell", 3, x, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const Tensor h0 = hx ? *hx : at::zeros({x.size(0), H}, x.options());
  return GRUCellFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh)[0];
}

// ------------------------------------------------------------------- RNN --
template <bool Relu>
struct RNNCellFunction : public torch::autograd::Function<RNNCellFunction<Relu>> {
  static constexpr const char* nonlinearity = Relu ? "relu" : "tanh";

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh) {
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const OptTensor&, const OptTensor&,
                                            c10::string_view)>("rnn_ext::rnn_cell_forward");
    auto [h, ws] = op.call(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity);
    ctx->save_for_backward({x, h0, w_ih, w_hh, defined_or(b_ih), defined_or(b_hh), h, ws});
    return {h};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    if (at::GradMode::is_enabled())
      return differentiable_backward(
          ctx, {s[0], s[1], s[2], s[3], s[4], s[5]}, grads,
          [](const variable_list& in) -> variable_list {
            static const auto op =
                typed_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const OptTensor&, const OptTensor&, c10::string_view)>(
                    "rnn_ext::rnn_cell_reference");
            return {op.call(in[0], in[1], in[2], in[3], optional(in[4]), optional(in[5]),
                            nonlinearity)};
          });
    static const auto op =
        typed_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
            const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
            const Tensor&, const Tensor&, c10::string_view)>("rnn_ext::rnn_cell_backward");
    // Below autograd: straight to the kernel, not through the boxed fallback
    // that an op without autograd meets at the Autograd key.
    at::AutoDispatchBelowADInplaceOrView below;
    auto [dx, dh, dw_ih, dw_hh, db_ih, db_hh] =
        op.call(grads[0], s[0], s[1], s[2], s[3], s[6], s[7], nonlinearity);
    return {dx, dh, dw_ih, dw_hh, s[4].defined() ? db_ih : Tensor(),
            s[5].defined() ? db_hh : Tensor()};
  }
};

Tensor rnn_cell_autograd(const Tensor& x, const OptTensor& hx, const Tensor& w_ih,
                         const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                         c10::string_view nonlinearity) {
  if (!wants_grad({&x, &w_ih, &w_hh}, {&hx, &b_ih, &b_hh})) {
    static const auto op =
        typed_op<Tensor(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                        const OptTensor&, const OptTensor&, c10::string_view)>(
            "rnn_ext::rnn_cell");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
  }
  const bool relu = rnn_is_relu("rnn_ext::rnn_cell", nonlinearity);
  const int64_t H = check_cell("rnn_ext::rnn_cell", 1, x, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh);
  const Tensor h0 = hx ? *hx : at::zeros({x.size(0), H}, x.options());
  return relu ? RNNCellFunction<true>::apply(x, h0, w_ih, w_hh, b_ih, b_hh)[0]
              : RNNCellFunction<false>::apply(x, h0, w_ih, w_hh, b_ih, b_hh)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, Autograd, m) {
  m.impl("lstm_cell", &lstm_cell_autograd);
  m.impl("gru_cell", &gru_cell_autograd);
  m.impl("rnn_cell", &rnn_cell_autograd);
}

}  // namespace rnn_ext
