// PyTorch glue: the op schemas of the rnn_ext namespace and the input
// checks every device shares.  The devices' implementations are in
// rnn_ops_cpu.cpp and rnn_ops_cuda.cpp.
#include <torch/library.h>

#include <algorithm>
#include <sstream>

#include "ops/sequence.h"

namespace rnn_ext {

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

void check_dense(const char* op, const char* name, const Tensor& t,
                 const Tensor& like) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name,
              " must be a dense tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name,
              " has dtype ", t.scalar_type(), " but input_gates has dtype ",
              like.scalar_type(), "; all tensors must share one dtype");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ",
              t.device(), " but input_gates is on ", like.device());
}

void check_lengths(const char* op, const OptTensor& lengths, int64_t B) {
  if (!lengths) return;
  const Tensor& l = *lengths;
  TORCH_CHECK(l.device().is_cpu(), op,
              ": lengths must be a CPU tensor (as for pack_padded_sequence), "
              "got one on ", l.device());
  TORCH_CHECK(l.scalar_type() == at::kLong, op,
              ": lengths must be int64, got ", l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, op,
              ": lengths must have shape [B] = [", B, "], got ",
              shape_str(l.sizes()));
}

}  // namespace

void check_same(const char* op, const char* name, const Tensor& t,
                const Tensor& like, at::IntArrayRef shape) {
  check_dense(op, name, t, like);
  TORCH_CHECK(t.sizes() == shape, op, ": expected ", name, " of shape ",
              shape_str(shape), ", got ", shape_str(t.sizes()));
}

void check_lstm_forward(const Tensor& gx, const Tensor& w_hh,
                        const OptTensor& b_hh, const OptTensor& w_hr,
                        const Tensor& h0, const Tensor& c0,
                        const OptTensor& lengths, const char* op) {
  TORCH_CHECK(gx.dim() == 3, op,
              ": input_gates must be 3-D [T, B, 4H], got ", gx.dim(), "-D");
  TORCH_CHECK(gx.is_floating_point(), op,
              ": input_gates must be floating point, got ", gx.scalar_type());
  const int64_t T_ = gx.size(0), B = gx.size(1), G = gx.size(2);
  TORCH_CHECK(T_ > 0 && B > 0 && G > 0, op,
              ": input_gates must be non-empty, got ", shape_str(gx.sizes()));
  TORCH_CHECK(G % 4 == 0, op, ": last dim of input_gates must be 4H, got ", G);
  const int64_t H = G / 4;
  int64_t Hout = H;
  if (w_hr) {
    check_dense(op, "w_hr", *w_hr, gx);
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H && w_hr->size(0) > 0,
                op, ": expected w_hr of shape [P, H] with H = ", H, ", got ",
                shape_str(w_hr->sizes()));
    Hout = w_hr->size(0);
  }
  check_same(op, "w_hh", w_hh, gx, {4 * H, Hout});
  if (b_hh) check_same(op, "b_hh", *b_hh, gx, {4 * H});
  check_same(op, "h0", h0, gx, {B, Hout});
  check_same(op, "c0", c0, gx, {B, H});
  check_lengths(op, lengths, B);
}

void check_gru_forward(const Tensor& gx, const Tensor& w_hh,
                       const OptTensor& b_hh, const Tensor& h0,
                       const OptTensor& lengths, const char* op) {
  TORCH_CHECK(gx.dim() == 3, op,
              ": input_gates must be 3-D [T, B, 3H], got ", gx.dim(), "-D");
  TORCH_CHECK(gx.is_floating_point(), op,
              ": input_gates must be floating point, got ", gx.scalar_type());
  const int64_t B = gx.size(1), G = gx.size(2);
  TORCH_CHECK(gx.size(0) > 0 && B > 0 && G > 0, op,
              ": input_gates must be non-empty, got ", shape_str(gx.sizes()));
  TORCH_CHECK(G % 3 == 0, op, ": last dim of input_gates must be 3H, got ", G);
  const int64_t H = G / 3;
  check_same(op, "w_hh", w_hh, gx, {3 * H, H});
  if (b_hh) check_same(op, "b_hh", *b_hh, gx, {3 * H});
  check_same(op, "h0", h0, gx, {B, H});
  check_lengths(op, lengths, B);
}

void check_rnn_forward(const Tensor& gx, const Tensor& w_hh,
                       const OptTensor& b_hh, const Tensor& h0,
                       const OptTensor& lengths, const char* op) {
  TORCH_CHECK(gx.dim() == 3, op,
              ": input_gates must be 3-D [T, B, H], got ", gx.dim(), "-D");
  TORCH_CHECK(gx.is_floating_point(), op,
              ": input_gates must be floating point, got ", gx.scalar_type());
  const int64_t B = gx.size(1), H = gx.size(2);
  TORCH_CHECK(gx.size(0) > 0 && B > 0 && H > 0, op,
              ": input_gates must be non-empty, got ", shape_str(gx.sizes()));
  check_same(op, "w_hh", w_hh, gx, {H, H});
  if (b_hh) check_same(op, "b_hh", *b_hh, gx, {H});
  check_same(op, "h0", h0, gx, {B, H});
  check_lengths(op, lengths, B);
}

void check_pair(const char* op, const char* name, const Tensor& t, int64_t dims,
                const char* shape) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == dims && t.size(0) == 2, op, ": expected ", name, " of shape ", shape,
              " (both directions stacked on a leading dimension of 2: direction 0, then "
              "direction 1), got ", shape_str(t.sizes()));
}

// The cell ops (one step of LSTMCell, GRUCell, RNNCell, input projection
// included): every tensor dense, of the input's dtype and device, sized as
// the weights say.  Returns the hidden size.
int64_t check_cell(const char* op, int64_t gates, const Tensor& x,
                   const OptTensor& hx, const OptTensor& cx,
                   const Tensor& w_ih, const Tensor& w_hh,
                   const OptTensor& b_ih, const OptTensor& b_hh) {
  TORCH_CHECK(x.dim() == 2, op, ": input must be 2-D [B, I], got ", x.dim(),
              "-D");
  TORCH_CHECK(x.layout() == at::kStrided, op, ": input must be a dense tensor");
  TORCH_CHECK(x.is_floating_point(), op,
              ": input must be floating point, got ", x.scalar_type());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * w_hh.size(1), op,
              ": expected w_hh of shape [", gates, "H, H], got ",
              shape_str(w_hh.sizes()));
  const int64_t B = x.size(0), H = w_hh.size(1), G = gates * H;
  TORCH_CHECK(B > 0 && H > 0, op, ": batch and hidden size must be non-zero");
  const auto same = [&](const char* name, const Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, " must be a dense tensor");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ",
                t.scalar_type(), " but input has dtype ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
                " but input is on ", x.device());
    TORCH_CHECK(t.sizes() == shape, op, ": expected ", name, " of shape ",
                shape_str(shape), ", got ", shape_str(t.sizes()));
  };
  same("w_ih", w_ih, {G, x.size(1)});
  same("w_hh", w_hh, {G, H});
  if (b_ih) same("b_ih", *b_ih, {G});
  if (b_hh) same("b_hh", *b_hh, {G});
  if (hx) same("hx", *hx, {B, H});
  if (cx) same("cx", *cx, {B, H});
  return H;
}

bool rnn_is_relu(const char* op, c10::string_view nonlinearity) {
  if (nonlinearity == "tanh") return false;
  if (nonlinearity == "relu") return true;
  TORCH_CHECK(false, op, ": unknown nonlinearity '", std::string(nonlinearity),
              "'; choose 'tanh' or 'relu'");
  return false;
}

Lengths prepare_lengths(const OptTensor& lengths, int64_t T, int64_t B,
                        const at::Device& device) {
  Lengths L;
  if (!lengths) return L;
  const Tensor host = lengths->contiguous();
  const int64_t* l = host.data_ptr<int64_t>();
  bool descending = true;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(l[b] >= 0 && l[b] <= T, "rnn_ext: lengths[", b, "] = ", l[b],
                " is out of range [0, T] with T = ", T);
    if (b > 0 && l[b] > l[b - 1]) descending = false;
  }
  if (descending) {
    L.prefix = true;
    L.active.assign(T, 0);
    for (int64_t t = 0; t < T; ++t)
      L.active[t] = std::count_if(l, l + B, [t](int64_t x) { return x > t; });
  }
  L.on_device = device.is_cpu() ? host : host.to(device);
  return L;
}

Tensor gather_final(const Tensor& seq, const Tensor& init,
                    const OptTensor& lengths, const Lengths& L) {
  const int64_t T = seq.size(0), B = seq.size(1), K = seq.size(2);
  if (!lengths) return seq[T - 1].clone(at::MemoryFormat::Contiguous);
  const Tensor len = L.on_device;
  const Tensor idx = (len - 1).clamp_min(0).view({1, B, 1}).expand({1, B, K});
  const Tensor last = seq.gather(0, idx).squeeze(0);
  return at::where((len == 0).view({B, 1}), init.to(seq.scalar_type()), last);
}

TORCH_LIBRARY(rnn_ext, m) {
  m.def(
      "lstm_forward(Tensor input_gates, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor workspace, "
      "Tensor proj_input)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor output, "
      "Tensor workspace, Tensor proj_input, Tensor? lengths, "
      "Tensor? grad_workspace, bool grad_h0=True) -> (Tensor grad_input_gates, Tensor grad_w_hh, "
      "Tensor grad_b_hh, Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "gru_forward(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths) -> (Tensor output, Tensor h_n, Tensor workspace)");
  // Inference: the forward ops without the workspace that backward needs.
  m.def(
      "lstm_infer(Tensor input_gates, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "gru_infer(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths) -> (Tensor output, Tensor h_n)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor output, Tensor workspace, Tensor? lengths, "
      "Tensor? grad_workspace, bool grad_h0=True) -> (Tensor grad_input_gates, Tensor grad_w_hh, "
      "Tensor grad_b_hh, Tensor grad_h0)");
  m.def(
      "rnn_forward(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths, str nonlinearity) -> (Tensor output, Tensor h_n, "
      "Tensor workspace)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor output, Tensor workspace, Tensor? lengths, "
      "Tensor? grad_workspace, str nonlinearity, bool grad_h0=True) -> "
      "(Tensor grad_input_gates, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_h0)");
  m.def(
      "rnn_infer(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths, str nonlinearity) -> (Tensor output, Tensor h_n)");
  // Both directions of a bidirectional layer in one call: the ops above with
  // every tensor (lengths aside) stacked on a leading dimension of 2,
  // direction 0 then direction 1 (whose input gates the caller has reversed
  // within lengths), and the results stacked the same way.
  m.def(
      "lstm_pair_forward(Tensor input_gates, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor workspace, "
      "Tensor proj_input)");
  m.def(
      "lstm_pair_infer(Tensor input_gates, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "lstm_pair_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor output, "
      "Tensor workspace, Tensor proj_input, Tensor? lengths, "
      "Tensor? grad_workspace, bool grad_h0=True) -> (Tensor grad_input_gates, Tensor grad_w_hh, "
      "Tensor grad_b_hh, Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "gru_pair_forward(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths) -> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "gru_pair_infer(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths) -> (Tensor output, Tensor h_n)");
  m.def(
      "gru_pair_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor output, Tensor workspace, Tensor? lengths, "
      "Tensor? grad_workspace, bool grad_h0=True) -> (Tensor grad_input_gates, Tensor grad_w_hh, "
      "Tensor grad_b_hh, Tensor grad_h0)");
  m.def(
      "rnn_pair_forward(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths, str nonlinearity) -> (Tensor output, Tensor h_n, "
      "Tensor workspace)");
  m.def(
      "rnn_pair_infer(Tensor input_gates, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths, str nonlinearity) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_pair_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor output, Tensor workspace, Tensor? lengths, "
      "Tensor? grad_workspace, str nonlinearity, bool grad_h0=True) -> "
      "(Tensor grad_input_gates, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_h0)");
  // Cells: one step of LSTMCell, GRUCell and RNNCell with the input
  // projection, for the modules' eager calls (rnn_ext/_function.py).  The
  // first op of each cell has autograd (csrc/ops/cell_autograd.cpp); its
  // forward and backward are the other two.
  m.def(
      "lstm_cell(Tensor input, Tensor? hx, Tensor? cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> (Tensor h, Tensor c)");
  m.def(
      "lstm_cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> (Tensor h, Tensor c, "
      "Tensor workspace)");
  m.def(
      "lstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor input, "
      "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor h, "
      "Tensor workspace) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");
  m.def(
      "gru_cell(Tensor input, Tensor? hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh) -> Tensor");
  m.def(
      "gru_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh) -> (Tensor h, Tensor workspace)");
  m.def(
      "gru_cell_backward(Tensor grad_h, Tensor input, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor h, Tensor workspace) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def(
      "rnn_cell(Tensor input, Tensor? hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, str nonlinearity) -> Tensor");
  m.def(
      "rnn_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, str nonlinearity) -> (Tensor h, "
      "Tensor workspace)");
  m.def(
      "rnn_cell_backward(Tensor grad_h, Tensor input, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor h, Tensor workspace, "
      "str nonlinearity) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");
  // An LSTM layer direction with its input projection (CPU only): the
  // results of lstm_forward / lstm_infer for input_gates = x W_ih^T + b_ih,
  // with the projection inside the partitioned loop (its input phase,
  // rnn_ext/partition.h) in fp32 and fp64.
  m.def(
      "lstm_layer_forward(Tensor input, Tensor w_ih, Tensor? b_ih, Tensor w_hh, "
      "Tensor? b_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor workspace, Tensor proj_input)");
  m.def(
      "lstm_layer_infer(Tensor input, Tensor w_ih, Tensor? b_ih, Tensor w_hh, "
      "Tensor? b_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths) -> "
      "(Tensor output, Tensor h_n, Tensor c_n)");
  // Its backward: lstm_backward's results (without grad_workspace) after
  // the input's gradient, computed inside the loop in fp32 and fp64.
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor output, "
      "Tensor workspace, Tensor proj_input, Tensor? lengths, bool grad_h0=True) -> "
      "(Tensor grad_input, Tensor grad_input_gates, Tensor grad_w_hh, Tensor grad_b_hh, "
      "Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");
  // a^T b, a weight gradient's sum over rows (CPU only): the input
  // projection's dW_ih, through the library the CPU ops' dW_hh takes
  // (ops/onednn_products.h).
  m.def("transposed_product(Tensor a, Tensor b) -> Tensor");
  // x w^T + b for a short sequence's rows (CPU only; ops/onednn_products.h).
  m.def("short_linear(Tensor x, Tensor w, Tensor? b) -> Tensor");
}

}  // namespace rnn_ext
