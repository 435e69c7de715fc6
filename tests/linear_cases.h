// The linear-layer comparisons every GPU fixture runs against the CPU backend: fp32
// (test_cuda_backend.cpp) and bf16 compute (test_cuda_bf16.cpp) share these bodies and differ
// only in tolerance and where the weight gradient starts. `compare(run, tol, what)` is the
// fixture's: it runs `run(backend)` on the CPU and on the GPU and checks the outputs agree.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "tests/test_util.h"

namespace ftune::testing {

struct LinearShape {
  int64_t n, in, out;
};

inline std::string linear_label(const char* op, const LinearShape& l) {
  return std::string(op) + " n=" + std::to_string(l.n) + " in=" + std::to_string(l.in) +
         " out=" + std::to_string(l.out);
}

// y = x W^T (+ bias) for every shape, with and without the bias; y starts as NaN.
template <class Compare>
void check_linear_forward(const ExecContext& ctx, const std::vector<LinearShape>& shapes,
                          double tol, Compare compare) {
  uint64_t seed = 100;
  for (const LinearShape& l : shapes) {
    for (bool with_bias : {false, true}) {
      const auto x = random_vec(size_t(l.n * l.in), ++seed);
      const auto W = random_vec(size_t(l.out * l.in), ++seed);
      const auto bias = random_vec(size_t(l.out), ++seed);
      auto run = [&](Backend* be) {
        auto dx = put(be, x), dW = put(be, W), db = put(be, bias);
        auto y = put(be, nan_vec(size_t(l.n * l.out)));
        be->linear_forward(ctx, dx.get(), dW.get(), with_bias ? db.get() : nullptr, y.get(), l.n,
                           l.in, l.out);
        return get(be, y);
      };
      compare(run, tol, linear_label("linear_forward", l) + " bias=" + std::to_string(with_bias));
    }
  }
}

// Where dW starts in the backward cases: random (so accumulating into it, not overwriting, is
// checked) or zero (so a bf16 comparison measures the product, not the old contents).
enum class DwStart { kRandom, kZero };

// Every combination of the three gradients (dx overwritten as NaN or accumulated, dW and db
// always accumulated) for every shape. A case's outputs are the gradients it asks for, plus, with
// kRandom, dW and db when not asked for (they must come back untouched); `also(run, what,
// want_dW, want_db, dW0, db0)` may check more on each case.
template <class Compare, class Also>
void check_linear_backward(const ExecContext& ctx, const std::vector<LinearShape>& shapes,
                           double tol, DwStart start, Compare compare, Also also) {
  uint64_t seed = 200;
  for (const LinearShape& l : shapes) {
    const auto dy = random_vec(size_t(l.n * l.out), ++seed);
    const auto x = random_vec(size_t(l.n * l.in), ++seed);
    const auto W = random_vec(size_t(l.out * l.in), ++seed);
    const auto dx0 = random_vec(size_t(l.n * l.in), ++seed);
    const auto dW0 = start == DwStart::kRandom ? random_vec(size_t(l.out * l.in), ++seed)
                                               : std::vector<float>(size_t(l.out * l.in), 0.f);
    const auto db0 = random_vec(size_t(l.out), ++seed);
    // With dW starting at zero an unrequested gradient has nothing to show: skip the empty case.
    for (int mask = start == DwStart::kRandom ? 0 : 1; mask < 8; ++mask) {
      const bool want_dx = mask & 1, want_dW = mask & 2, want_db = mask & 4;
      for (bool acc : {false, true}) {
        if (!want_dx && acc) continue;
        auto run = [&](Backend* be) {
          auto ddy = put(be, dy), dxx = put(be, x), dWW = put(be, W);
          auto dx = put(be, acc ? dx0 : nan_vec(dx0.size()));  // overwritten unless acc
          auto dW = put(be, dW0), db = put(be, db0);           // always accumulated
          be->linear_backward(ctx, ddy.get(), dxx.get(), dWW.get(), want_dx ? dx.get() : nullptr,
                              want_dW ? dW.get() : nullptr, want_db ? db.get() : nullptr, l.n, l.in,
                              l.out, acc);
          const bool all = start == DwStart::kRandom;
          std::vector<float> out;
          for (const auto& v : {want_dx ? get(be, dx) : std::vector<float>{},
                                want_dW || all ? get(be, dW) : std::vector<float>{},
                                want_db || all ? get(be, db) : std::vector<float>{}})
            out.insert(out.end(), v.begin(), v.end());
          return out;
        };
        const std::string what = linear_label("linear_backward", l) +
                                 " mask=" + std::to_string(mask) + " acc=" + std::to_string(acc);
        compare(run, tol, what);
        also(run, what, want_dW, want_db, dW0, db0);
      }
    }
  }
}

}  // namespace ftune::testing
