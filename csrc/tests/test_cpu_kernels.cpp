// C++ tests of the CPU step kernels, without PyTorch: known values of one
// step, and the backward kernels against finite differences of the forward
// kernels (so backward and forward are checked against each other, not
// against a second copy of the formulas).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "cpu/blas.h"
#include "cpu/rnn_cpu.h"

using namespace rnn_ext;

static int failures = 0;

static void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.12g want %.12g\n", what, got, want);
    ++failures;
  }
}

static std::vector<double> random_vec(size_t n, std::mt19937& rng) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// One LSTM step on B rows: returns h (= o * tanh(c)) and the workspace.
struct LSTMStepResult { std::vector<double> h, ws; };
static LSTMStepResult lstm_step(int64_t B, int64_t H, const std::vector<double>& gx,
                                const std::vector<double>& c0, const int64_t* lengths) {
  std::vector<double> gh(B * 4 * H, 0.0), bias(4 * H, 0.0), ws(B * 5 * H, -7.0), h(B * H, -7.0);
  LSTMForwardStep<double, double> p{B, H, 0, lengths, gx.data(), gh.data(), bias.data(),
                                    c0.data(), H, ws.data(), h.data()};
  cpu::lstm_forward_rows(p, 0, B, 0, H);
  return {h, ws};
}

static void test_lstm_known_values() {
  // All pre-activations zero: i = f = o = 1/2, g = 0, so c = c_prev / 2.
  const int64_t B = 1, H = 2;
  std::vector<double> gx(4 * H, 0.0), c0 = {1.0, -2.0};
  auto r = lstm_step(B, H, gx, c0, nullptr);
  expect_near(r.ws[0], 0.5, 1e-15, "lstm i");
  expect_near(r.ws[2 * H], 0.0, 1e-15, "lstm g");
  expect_near(r.ws[4 * H + 1], -1.0, 1e-15, "lstm c");
  expect_near(r.h[1], 0.5 * std::tanh(-1.0), 1e-15, "lstm h");
}

static void test_lstm_inactive_row_is_zero() {
  const int64_t B = 2, H = 3;
  std::mt19937 rng(1);
  auto gx = random_vec(B * 4 * H, rng), c0 = random_vec(B * H, rng);
  const int64_t lengths[2] = {1, 0};
  auto r = lstm_step(B, H, gx, c0, lengths);
  for (int64_t j = 0; j < H; ++j) expect_near(r.h[H + j], 0.0, 0.0, "inactive h");
  for (int64_t k = 0; k < 5 * H; ++k) expect_near(r.ws[5 * H + k], 0.0, 0.0, "inactive ws");
  expect_near(r.ws[0] == -7.0 ? 1.0 : 0.0, 0.0, 0.0, "active row written");
}

// Loss L = sum(wh * h) + sum(wc * c); compare the backward kernel's
// gradients of the pre-activations and of c_prev with central differences.
static void test_lstm_backward_matches_finite_differences() {
  const int64_t B = 2, H = 3;
  std::mt19937 rng(2);
  auto gx = random_vec(B * 4 * H, rng), c0 = random_vec(B * H, rng);
  auto wh = random_vec(B * H, rng), wc = random_vec(B * H, rng);
  auto loss = [&](const std::vector<double>& g, const std::vector<double>& c) {
    auto r = lstm_step(B, H, g, c, nullptr);
    double s = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j)
        s += wh[b * H + j] * r.h[b * H + j] + wc[b * H + j] * r.ws[b * 5 * H + 4 * H + j];
    return s;
  };
  auto fwd = lstm_step(B, H, gx, c0, nullptr);
  std::vector<double> dh_state = wh, grad_y(B * H, 0.0), dc_state = wc, dgates(B * 4 * H);
  LSTMBackwardStep<double, double> p{B, H, 0, nullptr, fwd.ws.data(), c0.data(), H, nullptr,
                                     nullptr, dh_state.data(), grad_y.data(), dc_state.data(),
                                     dgates.data()};
  cpu::lstm_backward_rows(p, 0, B, 0, H);
  const double eps = 1e-6;
  for (size_t k = 0; k < gx.size(); ++k) {
    auto up = gx, down = gx;
    up[k] += eps;
    down[k] -= eps;
    expect_near(dgates[k], (loss(up, c0) - loss(down, c0)) / (2 * eps), 1e-7, "lstm d gates");
  }
  for (size_t k = 0; k < c0.size(); ++k) {
    auto up = c0, down = c0;
    up[k] += eps;
    down[k] -= eps;
    expect_near(dc_state[k], (loss(gx, up) - loss(gx, down)) / (2 * eps), 1e-7, "lstm d c_prev");
  }
  for (double v : dh_state) expect_near(v, 0.0, 0.0, "dh consumed");
}

static std::vector<double> gru_step(int64_t B, int64_t H, const std::vector<double>& gx,
                                    const std::vector<double>& gh, const std::vector<double>& h0,
                                    std::vector<double>* ws_out) {
  std::vector<double> ws(B * 4 * H), y(B * H), bias(3 * H, 0.0);
  GRUForwardStep<double, double> p{B, H, 0, nullptr, gx.data(), gh.data(), bias.data(),
                                   h0.data(), ws.data(), y.data()};
  cpu::gru_forward_rows(p, 0, B, 0, H);
  if (ws_out) *ws_out = ws;
  return y;
}

static void test_gru_backward_matches_finite_differences() {
  const int64_t B = 2, H = 3;
  std::mt19937 rng(3);
  auto gx = random_vec(B * 3 * H, rng), gh = random_vec(B * 3 * H, rng);
  auto h0 = random_vec(B * H, rng), w = random_vec(B * H, rng);
  auto loss = [&](const std::vector<double>& x, const std::vector<double>& hh,
                  const std::vector<double>& h) {
    auto y = gru_step(B, H, x, hh, h, nullptr);
    double s = 0;
    for (size_t k = 0; k < y.size(); ++k) s += w[k] * y[k];
    return s;
  };
  std::vector<double> ws;
  gru_step(B, H, gx, gh, h0, &ws);
  std::vector<double> dh_state = w, grad_y(B * H, 0.0), dgx(B * 3 * H), dgh(B * 3 * H);
  GRUBackwardStep<double, double> p{B, H, 0, nullptr, ws.data(), h0.data(), nullptr,
                                    dh_state.data(), grad_y.data(), dgx.data(), dgh.data()};
  cpu::gru_backward_rows(p, 0, B, 0, H);
  const double eps = 1e-6;
  for (size_t k = 0; k < gx.size(); ++k) {
    auto up = gx, down = gx;
    up[k] += eps;
    down[k] -= eps;
    expect_near(dgx[k], (loss(up, gh, h0) - loss(down, gh, h0)) / (2 * eps), 1e-7, "gru d input gates");
    up = gh, down = gh;
    up[k] += eps;
    down[k] -= eps;
    expect_near(dgh[k], (loss(gx, up, h0) - loss(gx, down, h0)) / (2 * eps), 1e-7, "gru d hidden gates");
  }
  // dh_state now holds only the direct path into h_prev (through z); the
  // path through W_hh is added by the caller's GEMM.
  for (size_t k = 0; k < h0.size(); ++k) {
    auto up = h0, down = h0;
    up[k] += eps;
    down[k] -= eps;
    expect_near(dh_state[k], (loss(gx, gh, up) - loss(gx, gh, down)) / (2 * eps), 1e-7, "gru d h_prev");
  }
}

// The host fp32 exp is our own polynomial (so the step loops vectorise):
// check it against libm over the whole range the gates see, and the tails.
static void test_host_exp_and_activations() {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(gates::exp_(x) - want) / want);
  }
  expect_near(worst, 0.0, 3e-7, "host expf relative error");
  expect_near(gates::sigmoid(-200.0f), 0.0, 1e-30, "sigmoid(-200)");
  expect_near(gates::sigmoid(200.0f), 1.0, 0.0, "sigmoid(200)");
  expect_near(gates::tanh_(50.0f), 1.0, 0.0, "tanh(50)");
  expect_near(gates::tanh_(-50.0f), -1.0, 0.0, "tanh(-50)");
  for (float x = -9.0f; x <= 9.0f; x += 0.013f)
    expect_near(gates::tanh_(x), std::tanh(static_cast<double>(x)), 2e-7, "tanh");
  // Relative error, down to tiny arguments: a tanh that cancels near 0
  // (1 - 2 / (e^{2x} + 1)) is off by about 1e-7 absolute there, which is
  // all of tanh(1e-7).  Within 3 fp32 ulps everywhere.
  double worst_rel = 0;
  for (float a = 1e-30f; a < 20.0f; a *= 1.0137f) {
    for (float x : {a, -a}) {
      const double want = std::tanh(static_cast<double>(x));
      worst_rel = std::max(worst_rel, std::fabs(gates::tanh_(x) - want) / std::fabs(want));
    }
  }
  expect_near(worst_rel, 0.0, 3 * 5.96e-8, "tanh relative error");
  expect_near(gates::tanh_(0.0f), 0.0, 0.0, "tanh(0)");
}

// One Elman (nn.RNN) step on B rows, with gh as the recurrent product.
static std::vector<double> rnn_step(int64_t B, int64_t H, const std::vector<double>& gx,
                                    const std::vector<double>& gh, bool relu,
                                    std::vector<double>* ws_out) {
  std::vector<double> ws(B * H, -7.0), y(B * H, -7.0), bias(H, 0.25), h_prev(B * H, 0.0);
  RNNForwardStep<double, double> p{B, H, 0, nullptr, gx.data(), gh.data(), bias.data(),
                                   h_prev.data(), ws.data(), y.data(), relu};
  cpu::rnn_forward_rows(p, 0, B, 0, H);
  if (ws_out) *ws_out = ws;
  return y;
}

static void test_rnn_forward_known_values_and_backward() {
  const int64_t B = 2, H = 3;
  for (bool relu : {false, true}) {
    std::mt19937 rng(relu ? 5 : 4);
    auto gx = random_vec(B * H, rng), gh = random_vec(B * H, rng), w = random_vec(B * H, rng);
    std::vector<double> ws;
    auto y = rnn_step(B, H, gx, gh, relu, &ws);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) {
        const double pre = gx[b * H + j] + gh[b * H + j] + 0.25;
        const double want = relu ? std::max(pre, 0.0) : std::tanh(pre);
        expect_near(y[b * H + j], want, 1e-15, relu ? "rnn relu h" : "rnn tanh h");
        expect_near(ws[b * H + j], want, 0.0, "rnn workspace = h");
      }
    auto loss = [&](const std::vector<double>& x) {
      auto out = rnn_step(B, H, x, gh, relu, nullptr);
      double s = 0;
      for (size_t k = 0; k < out.size(); ++k) s += w[k] * out[k];
      return s;
    };
    std::vector<double> dh_state = w, grad_y(B * H, 0.0), dgates(B * H, -7.0);
    RNNBackwardStep<double, double> p{B, H, 0, nullptr, ws.data(), nullptr, dh_state.data(),
                                      grad_y.data(), dgates.data(), relu};
    cpu::rnn_backward_rows(p, 0, B, 0, H);
    const double eps = 1e-6;
    for (size_t k = 0; k < gx.size(); ++k) {
      auto up = gx, down = gx;
      up[k] += eps;
      down[k] -= eps;
      expect_near(dgates[k], (loss(up) - loss(down)) / (2 * eps), 1e-7, "rnn d pre-activation");
    }
    for (double v : dh_state) expect_near(v, 0.0, 0.0, "rnn dh consumed");
  }
}

// The panels the CPU executor multiplies (blas::pack_panels): element (j, q)
// of the n rows of k elements at panels[p0 * k + q * width + j - p0] for
// column j's panel p0 (panel_width() wide, the last one narrower).  The vector
// paths (AVX-512 16 x 16 or AVX2 8 x 8 blocks, whichever this CPU has) and
// the element loop against that definition, at sizes that leave partial
// blocks in both directions.
static void test_pack_panels_layout() {
  const int64_t kPanel = rnn_ext::cpu::blas::panel_width();
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  const int64_t sizes[][2] = {{1, 1}, {7, 5}, {8, 8}, {16, 16}, {17, 33}, {24, 9},
                              {64, 40}, {100, 77}, {130, 16}, {200, 129}};
  for (const auto& nk : sizes) {
    const int64_t n = nk[0], k = nk[1];
    std::vector<float> rows(static_cast<size_t>(n * k));
    for (float& x : rows) x = d(rng);
    auto row = [&](int64_t j) { return rows.data() + j * k; };
    for (bool vector : {true, false}) {
      std::vector<float> panels(static_cast<size_t>(n * k), std::nanf(""));
      rnn_ext::cpu::blas::pack_panels(n, k, row, panels.data(), vector);
      int64_t wrong = 0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t p0 = j / kPanel * kPanel, width = std::min(kPanel, n - p0);
        for (int64_t q = 0; q < k; ++q)
          wrong += !(panels[p0 * k + q * width + (j - p0)] == rows[j * k + q]);
      }
      if (wrong) {
        std::printf("FAIL pack_panels n=%ld k=%ld vector=%d: %ld elements wrong\n", long(n), long(k),
                    int(vector), long(wrong));
        ++failures;
      }
    }
  }
}

int main() {
  test_pack_panels_layout();
  test_host_exp_and_activations();
  test_lstm_known_values();
  test_lstm_inactive_row_is_zero();
  test_lstm_backward_matches_finite_differences();
  test_gru_backward_matches_finite_differences();
  test_rnn_forward_known_values_and_backward();
  if (failures) {
    std::printf("%d failed\n", failures);
    return 1;
  }
  std::printf("all CPU kernel tests passed\n");
  return 0;
}
