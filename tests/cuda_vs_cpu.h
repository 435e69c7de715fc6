// The fixture the GPU op tests share: the CUDA backend (fp32, or bf16 compute) and the CPU
// backend as its reference, made once per suite, and compare(). Every test skips without a GPU.
#pragma once
#ifdef FTUNE_HAVE_CUDA
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_device.h"
#include "engine/backend/backend.h"
#include "tests/test_util.h"

namespace ftune::testing {

// kBf16: the GPU backend computes linear layers, the LM head and attention in bf16.
template <bool kBf16>
class CudaVsCpu : public ::testing::Test {
 protected:
  static void TearDownTestSuite() {
    gpu_.reset();
    cpu_.reset();
  }
  void SetUp() override {
    std::string why;
    if (cuda::device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why;
    if (!gpu_) {
      gpu_ = make_cuda_backend(0);
      if (kBf16 && !gpu_->set_bf16_compute(true)) {
        gpu_.reset();
        GTEST_SKIP() << "this GPU has no bf16 tensor cores (sm_80+)";
      }
    }
    if (!cpu_) cpu_ = make_cpu_backend();
    ctx_.threads = 2;
  }
  Backend* gpu() const { return gpu_.get(); }
  Backend* cpu() const { return cpu_.get(); }

  // Runs f(backend) on the CPU and on the GPU (f returns the op's outputs, concatenated) and
  // expects ||gpu - cpu|| / ||cpu|| <= tol. bf16 also requires every GPU output finite (a
  // NaN-poisoned element left unwritten shows) and prints the error, so a log shows the margin.
  template <class F>
  double compare(F f, double tol, const std::string& what) {
    const std::vector<float> c = f(cpu());
    const std::vector<float> g = f(gpu());
    EXPECT_EQ(c.size(), g.size()) << what;
    if (c.size() != g.size()) return 1.0;
    if constexpr (kBf16) {
      for (float v : g)
        if (!std::isfinite(v)) {
          ADD_FAILURE() << "non-finite output (unwritten?), " << what;
          return 1.0;
        }
    }
    const double e = rel_error(g, c);
    EXPECT_LE(e, tol) << what;
    if constexpr (kBf16) std::printf("  %-60s rel error %.2e\n", what.c_str(), e);
    return e;
  }

  ExecContext ctx_;
  static inline std::unique_ptr<Backend> gpu_, cpu_;
};

}  // namespace ftune::testing
#endif
