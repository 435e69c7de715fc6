// The CUDA backend (cuda/cuda_backend.cu) against the CPU backend, op by op and end to end: the
// same random inputs go through make_cpu_backend() and make_cuda_backend(0), outputs the op
// overwrites are poisoned with NaN first (an element left unwritten fails), and results must
// agree to ||gpu - cpu|| / ||cpu|| <= 1e-5. Also: accumulate-versus-overwrite, null gradient
// pointers, bitwise determinism of the reductions (embedding backward, RMSNorm dw, sum_squares,
// LM head loss, a whole training step), bad-id and bad-target errors that leave outputs as they
// were, user streams, and a tiny Llama model (full fine-tuning and LoRA with dropout) giving the
// same logits, loss and gradients on both backends. Every test skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/base/dtype.h"
#include "engine/base/error.h"
#include "engine/dist/communicator.h"
#include "engine/model/lora.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "engine/model/param_layout.h"
#include "engine/zero/zero_shards.h"
#include "tests/cuda_vs_cpu.h"
#include "tests/linear_cases.h"
#include "tests/test_util.h"
#ifdef FTUNE_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_device.h"
#endif

namespace ftune {
namespace {

#ifdef FTUNE_HAVE_CUDA

using testing::bitwise_equal;
using testing::expect_error;
using testing::get;
using testing::nan_vec;
using testing::put;
using testing::random_ids;
using testing::random_vec;
using testing::rel_error;

// cuBLASLt is dlopen'ed on first use (cuda/cublaslt_loader.cu): it must load wherever the
// toolkit is installed, GPU or not, and the binary must not link it.
TEST(CublasLtLoader, LoadsTheLibraryOnDemand) {
  EXPECT_STREQ(cublasLtGetStatusName(CUBLAS_STATUS_SUCCESS), "CUBLAS_STATUS_SUCCESS");
  EXPECT_STREQ(cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED");
}

constexpr double kTol = 1e-5;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Both backends, made once for the whole suite (tests/cuda_vs_cpu.h).
class CudaBackend : public testing::CudaVsCpu<false> {};

// ---------------------------------------------------------------------------------------------
// Memory

TEST_F(CudaBackend, NameAndBadDevice) {
  EXPECT_EQ(gpu()->name(), "cuda");
  expect_error([] { make_cuda_backend(9999); }, {"device 9999"});
}

TEST_F(CudaBackend, AllocIsZeroedAlignedAndCopiesRoundTrip) {
  for (size_t bytes : {size_t(1), size_t(4), size_t(1000), size_t(4096 * 3 + 4), size_t(1) << 24}) {
    SCOPED_TRACE(bytes);
    auto* p = static_cast<unsigned char*>(gpu()->alloc(bytes));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
    std::vector<unsigned char> h(bytes, 0xab);
    gpu()->download(h.data(), p, bytes);
    EXPECT_TRUE(std::all_of(h.begin(), h.end(), [](unsigned char c) { return c == 0; }));
    std::mt19937 rng{unsigned(bytes)};
    for (auto& c : h) c = static_cast<unsigned char>(rng());
    gpu()->upload(p, h.data(), bytes);
    std::vector<unsigned char> back(bytes, 0);
    gpu()->download(back.data(), p, bytes);
    EXPECT_EQ(back, h);
    auto* q = static_cast<unsigned char*>(gpu()->alloc(bytes));
    gpu()->copy(q, p, bytes);
    std::fill(back.begin(), back.end(), 0);
    gpu()->download(back.data(), q, bytes);
    EXPECT_EQ(back, h);
    // Zero a middle third only.
    const size_t z0 = bytes / 3, zn = bytes / 3;
    gpu()->zero(p + z0, zn);
    gpu()->download(back.data(), p, bytes);
    for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(back[i], i >= z0 && i < z0 + zn ? 0 : h[i]) << i;
    gpu()->free(p);
    gpu()->free(q);
  }
  gpu()->free(nullptr);
}

TEST_F(CudaBackend, OutOfMemoryIsAnErrorAndTheBackendStaysUsable) {
  expect_error([&] { gpu()->alloc(size_t(1) << 52); }, {"alloc", "cudaMalloc"});
  // The failed allocation must not leak into the next op's launch check.
  auto x = put(gpu(), std::vector<float>{1.f, 2.f, 3.f});
  gpu()->scale_inplace(ctx_, x.get(), 2.f, 3);
  EXPECT_EQ(get(gpu(), x), (std::vector<float>{2.f, 4.f, 6.f}));
}

// What the trainer checks a run's predicted memory against before it allocates.
TEST_F(CudaBackend, MemoryInfoSeesAnAllocation) {
  size_t free0 = 0, total = 0, free1 = 0, total1 = 0;
  ASSERT_TRUE(gpu()->memory_info(&free0, &total));
  EXPECT_GT(total, size_t(1) << 30);
  EXPECT_LE(free0, total);
  void* p = gpu()->alloc(size_t(256) << 20);
  ASSERT_TRUE(gpu()->memory_info(&free1, &total1));
  gpu()->free(p);
  EXPECT_EQ(total1, total);
  EXPECT_LE(free1 + (size_t(256) << 20), free0 + (size_t(8) << 20));  // allocator rounding
  size_t f = 0, t = 0;
  EXPECT_FALSE(cpu()->memory_info(&f, &t));
}

// ---------------------------------------------------------------------------------------------
// GEMM and linear layers

struct Shape3 {
  int64_t M, N, K;
};

TEST_F(CudaBackend, GemmMatchesCpuForEveryTransposeAndBeta) {
  const Shape3 shapes[] = {{1, 1, 1}, {17, 33, 65}, {256, 512, 384}, {5, 7, 0}};
  uint64_t seed = 1;
  for (const Shape3& s : shapes) {
    for (int pad : {0, 3}) {
      if (pad && s.M > 100) continue;
      for (int ta = 0; ta < 2; ++ta) {
        for (int tb = 0; tb < 2; ++tb) {
          for (float beta : {0.f, 1.f, 0.5f}) {
            const float alpha = beta == 0.5f ? -0.75f : 1.f;
            const int64_t lda = std::max<int64_t>(1, ta ? s.M : s.K) + pad;
            const int64_t ldb = std::max<int64_t>(1, tb ? s.K : s.N) + pad;
            const int64_t ldc = s.N + pad;
            const int64_t a_rows = ta ? s.K : s.M, b_rows = tb ? s.N : s.K;
            const auto A = random_vec(size_t(std::max<int64_t>(1, a_rows * lda)), ++seed);
            const auto B = random_vec(size_t(std::max<int64_t>(1, b_rows * ldb)), ++seed);
            auto C0 = random_vec(size_t(s.M * ldc), ++seed);
            if (beta == 0.f)  // beta == 0 must not read C: poison the product's region only
              for (int64_t i = 0; i < s.M; ++i)
                for (int64_t j = 0; j < s.N; ++j) C0[size_t(i * ldc + j)] = kNaN;
            std::string what = "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) +
                               " K=" + std::to_string(s.K) + " ta=" + std::to_string(ta) +
                               " tb=" + std::to_string(tb) + " beta=" + std::to_string(beta) +
                               " pad=" + std::to_string(pad);
            auto run = [&](Backend* be) {
              auto a = put(be, A), b = put(be, B), c = put(be, C0);
              be->gemm(ctx_, ta, tb, s.M, s.N, s.K, alpha, a.get(), lda, b.get(), ldb, beta,
                       c.get(), ldc);
              return get(be, c);  // padding columns must come back untouched, too
            };
            compare(run, kTol, what);
          }
        }
      }
    }
  }
}

TEST_F(CudaBackend, GemmOnUnalignedPointersAndRepeatsBitwise) {
  // Offsets of one float make every pointer only 4-byte aligned: cuBLASLt must get the alignment
  // right (it is part of the plan's key).
  const int64_t M = 17, N = 33, K = 65;
  const auto A = random_vec(size_t(M * K + 1), 5), B = random_vec(size_t(K * N + 1), 6);
  const auto C0 = random_vec(size_t(M * N + 1), 7);
  auto run = [&](Backend* be) {
    auto a = put(be, A), b = put(be, B), c = put(be, C0);
    be->gemm(ctx_, false, true, M, N, K, 1.f, a.get() + 1, K, b.get() + 1, K, 1.f, c.get() + 1, N);
    be->gemm(ctx_, true, false, M, N, K, 0.5f, a.get() + 1, M, b.get() + 1, N, 1.f, c.get() + 1, N);
    return get(be, c);
  };
  compare(run, kTol, "unaligned");
  EXPECT_TRUE(bitwise_equal(run(gpu()), run(gpu()))) << "a cached plan gives the same bits";
}

using Lin = testing::LinearShape;
const std::vector<Lin> kLinears = {{1, 1, 1}, {7, 33, 65}, {130, 257, 129}, {64, 512, 384}};

TEST_F(CudaBackend, LinearForwardWithAndWithoutBias) {
  testing::check_linear_forward(
      ctx_, kLinears, kTol,
      [&](auto run, double tol, const std::string& what) { compare(run, tol, what); });
}

TEST_F(CudaBackend, LinearBackwardEveryNullAndAccumulateCombination) {
  testing::check_linear_backward(
      ctx_, kLinears, kTol, testing::DwStart::kRandom,
      [&](auto run, double tol, const std::string& what) { compare(run, tol, what); },
      [&](auto run, const std::string& what, bool want_dW, bool want_db,
          const std::vector<float>& dW0, const std::vector<float>& db0) {
        if (want_dW || want_db) return;
        // Null gradients are skipped: the untouched buffers come back bit for bit.
        const auto out = run(gpu());
        const std::vector<float> tail(out.end() - ptrdiff_t(dW0.size() + db0.size()), out.end());
        std::vector<float> expect = dW0;
        expect.insert(expect.end(), db0.begin(), db0.end());
        EXPECT_TRUE(bitwise_equal(tail, expect)) << what;
      });
}

TEST_F(CudaBackend, BiasGradientIsBitwiseDeterministic) {
  const int64_t n = 3001, out = 77;
  const auto dy = random_vec(size_t(n * out), 9);
  auto run = [&] {
    auto ddy = put(gpu(), dy);
    auto db = put(gpu(), std::vector<float>(size_t(out), 0.25f));
    gpu()->linear_backward(ctx_, ddy.get(), nullptr, nullptr, nullptr, nullptr, db.get(), n, 5, out,
                           false);
    return get(gpu(), db);
  };
  EXPECT_TRUE(bitwise_equal(run(), run()));
}

// ---------------------------------------------------------------------------------------------
// Elementwise and reductions

const size_t kSizes[] = {1, 1001, 100003};

TEST_F(CudaBackend, AddAndScale) {
  for (size_t n : kSizes) {
    const auto x = random_vec(n, 1), y0 = random_vec(n, 2);
    compare(
        [&](Backend* be) {
          auto dx = put(be, x), dy = put(be, y0);
          be->add_inplace(ctx_, dy.get(), dx.get(), n);
          auto a = get(be, dy);
          be->scale_inplace(ctx_, dy.get(), -0.37f, n);
          auto b = get(be, dy);
          a.insert(a.end(), b.begin(), b.end());
          return a;
        },
        1e-7, "n=" + std::to_string(n));
  }
}

TEST_F(CudaBackend, DropoutDrawsTheCpuMask) {
  for (size_t n : kSizes) {
    const auto x = random_vec(n, 3), y0 = random_vec(n, 4);
    for (float p : {0.f, 0.1f, 0.5f, 1.f}) {
      for (uint64_t seed : {uint64_t(99), uint64_t(0xdeadbeefcafef00dull)}) {
        const std::string what =
            "n=" + std::to_string(n) + " p=" + std::to_string(p) + " seed=" + std::to_string(seed);
        auto run = [&](Backend* be, bool acc) {
          auto dx = put(be, x), dy = put(be, acc ? y0 : nan_vec(n));
          be->dropout(ctx_, dx.get(), dy.get(), n, p, seed, acc);
          return get(be, dy);
        };
        // Overwrite: x * (1 / (1 - p)) or 0, the same single rounding on both: bit for bit.
        const auto c = run(cpu(), false), g = run(gpu(), false);
        EXPECT_TRUE(bitwise_equal(g, c)) << what;
        size_t dropped = 0;
        for (size_t i = 0; i < n; ++i) dropped += g[i] == 0.f;
        if (p == 0.f) {
          EXPECT_EQ(dropped, 0u) << what;
        }
        if (p == 1.f) {
          EXPECT_EQ(dropped, n) << what;
        }
        if (n > 100000 && p == 0.5f) {
          EXPECT_NEAR(double(dropped) / double(n), 0.5, 0.01) << what;
        }
        // Accumulate may fuse the add differently on each side.
        EXPECT_LE(rel_error(run(gpu(), true), run(cpu(), true)), 1e-7) << what;
      }
    }
  }
  // In place (x == y), as the model's backward uses it.
  const size_t n = 1001;
  const auto x = random_vec(n, 5);
  compare(
      [&](Backend* be) {
        auto d = put(be, x);
        be->dropout(ctx_, d.get(), d.get(), n, 0.3f, 7, false);
        return get(be, d);
      },
      0.0, "in place");
}

TEST_F(CudaBackend, SumSquaresIsAccurateAndDeterministic) {
  for (size_t n : {size_t(1), size_t(1001), size_t(100003), size_t(3000017)}) {
    const auto x = random_vec(n, n + 1);
    double ref = 0;
    for (float v : x) ref += double(v) * double(v);
    auto d = put(gpu(), x);
    const double a = gpu()->sum_squares(ctx_, d.get(), n);
    const double b = gpu()->sum_squares(ctx_, d.get(), n);
    EXPECT_NEAR(a, ref, 1e-10 * ref) << n;
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "not bitwise reproducible, n=" << n;
    auto c = put(cpu(), x);
    EXPECT_NEAR(a, cpu()->sum_squares(ctx_, c.get(), n), 1e-10 * ref) << n;
  }
  EXPECT_EQ(gpu()->sum_squares(ctx_, nullptr, 0), 0.0);
}

// Equal bits, or both NaN.
bool same_value(const unsigned char* a, const unsigned char* b, DType t) {
  if (t == DType::F32) {
    float x, y;
    std::memcpy(&x, a, 4);
    std::memcpy(&y, b, 4);
    if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
    return std::memcmp(a, b, 4) == 0;
  }
  uint16_t x, y;
  std::memcpy(&x, a, 2);
  std::memcpy(&y, b, 2);
  const float fx = t == DType::BF16 ? bf16_to_f32(x) : f16_to_f32(x);
  const float fy = t == DType::BF16 ? bf16_to_f32(y) : f16_to_f32(y);
  if (std::isnan(fx) || std::isnan(fy)) return std::isnan(fx) && std::isnan(fy);
  return x == y;
}

// Every BF16/F16 bit pattern, and F32 values at the rounding edges of both.
TEST_F(CudaBackend, CastIsBitExactWithTheHostConversion) {
  std::vector<uint16_t> all16(65536);
  for (size_t i = 0; i < all16.size(); ++i) all16[i] = uint16_t(i);
  std::vector<float> f32 = random_vec(10007, 11, -70000.f, 70000.f);
  auto bits = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  for (float v : {0.f,
                  -0.f,
                  1.f,
                  -1.f,
                  65504.f,
                  65519.f,
                  65520.f,
                  -65520.f,
                  1e38f,
                  -1e-38f,
                  std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::denorm_min(),
                  0x1p-24f,
                  0x1p-25f,
                  0x1.8p-24f,
                  0x1.8p-25f,
                  0x1p-14f,
                  1.f + 0x1p-8f,
                  1.f + 0x1p-11f,
                  1.f + 0x3p-9f,
                  1.f + 0x3p-12f})
    f32.push_back(v);
  for (uint32_t u : {0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7fbfffffu, 0x00000001u, 0x807fffffu,
                     0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x477fefffu, 0x477ff000u})
    f32.push_back(bits(u));
  const DType kinds[] = {DType::F32, DType::BF16, DType::F16};
  for (DType src_t : kinds) {
    const size_t n = src_t == DType::F32 ? f32.size() : all16.size();
    const void* src = src_t == DType::F32 ? static_cast<const void*>(f32.data()) : all16.data();
    const size_t src_bytes = n * dtype_size(src_t);
    for (DType dst_t : kinds) {
      std::vector<unsigned char> expect(n * dtype_size(dst_t));
      convert(src, src_t, expect.data(), dst_t, n);
      void* dsrc = gpu()->alloc(src_bytes);
      void* ddst = gpu()->alloc(expect.size());
      gpu()->upload(dsrc, src, src_bytes);
      gpu()->cast(ctx_, dsrc, src_t, ddst, dst_t, n);
      std::vector<unsigned char> got(expect.size());
      gpu()->download(got.data(), ddst, got.size());
      // Bit for bit, except that a NaN need only stay a NaN: the host's route through double may
      // or may not quiet a signalling NaN, depending on how the compiler folds it.
      size_t mismatches = 0, first = 0;
      for (size_t i = 0; i < n; ++i) {
        if (!same_value(&got[i * dtype_size(dst_t)], &expect[i * dtype_size(dst_t)], dst_t)) {
          if (mismatches++ == 0) first = i;
        }
      }
      EXPECT_EQ(mismatches, 0u) << dtype_name(src_t) << " -> " << dtype_name(dst_t)
                                << ", first at element " << first;
      gpu()->free(dsrc);
      gpu()->free(ddst);
    }
  }
  void* p = gpu()->alloc(64);
  expect_error([&] { gpu()->cast(ctx_, p, DType::F64, p, DType::F32, 2); }, {"cast", "F64"});
  gpu()->free(p);
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST_F(CudaBackend, EmbeddingForwardGathersExactly) {
  for (int64_t n : {int64_t(1), int64_t(1001)}) {
    for (int64_t dim : {int64_t(7), int64_t(33), int64_t(257)}) {
      const int64_t vocab = 50;
      const auto ids = random_ids(size_t(n), int32_t(vocab), uint64_t(n * dim));
      const auto table = random_vec(size_t(vocab * dim), uint64_t(dim));
      auto run = [&](Backend* be) {
        auto di = put(be, ids);
        auto dt = put(be, table);
        auto out = put(be, nan_vec(size_t(n * dim)));
        be->embedding_forward(ctx_, di.get(), dt.get(), out.get(), n, dim);
        return get(be, out);
      };
      EXPECT_TRUE(bitwise_equal(run(gpu()), run(cpu()))) << n << "x" << dim;
    }
  }
  auto ids = put(gpu(), std::vector<int32_t>{1, 2, -3, 4});
  auto table = put(gpu(), random_vec(40, 1));
  auto out = put(gpu(), nan_vec(40));
  expect_error([&] { gpu()->embedding_forward(ctx_, ids.get(), table.get(), out.get(), 4, 10); },
               {"embedding_forward", "token id -3", "position 2"});
}

TEST_F(CudaBackend, EmbeddingBackwardMatchesCpuAndIsDeterministic) {
  // A small vocabulary repeats ids hundreds of times; a large one rarely.
  for (int64_t vocab : {int64_t(11), int64_t(5000)}) {
    for (int64_t dim : {int64_t(33), int64_t(257)}) {
      const int64_t n = 1001;
      const auto ids = random_ids(size_t(n), int32_t(vocab), uint64_t(vocab + dim));
      const auto dout = random_vec(size_t(n * dim), 3);
      const auto table0 = random_vec(size_t(vocab * dim), 4);
      auto run = [&](Backend* be) {
        auto di = put(be, ids);
        auto dd = put(be, dout), dt = put(be, table0);
        be->embedding_backward(ctx_, di.get(), dd.get(), dt.get(), n, dim, vocab);
        return get(be, dt);
      };
      const auto g = run(gpu());
      const std::string what = "vocab=" + std::to_string(vocab) + " dim=" + std::to_string(dim);
      EXPECT_LE(rel_error(g, run(cpu())), 1e-6) << what;
      EXPECT_TRUE(bitwise_equal(g, run(gpu()))) << what;
    }
  }
}

TEST_F(CudaBackend, EmbeddingBackwardRejectsOutOfRangeIdsAndLeavesTheTable) {
  const int64_t vocab = 11, dim = 5, n = 6;
  const auto table0 = random_vec(size_t(vocab * dim), 8);
  const auto dout = random_vec(size_t(n * dim), 9);
  for (int32_t bad : {int32_t(11), int32_t(-1), int32_t(1 << 30)}) {
    auto ids = put(gpu(), std::vector<int32_t>{0, 3, 10, bad, 2, bad});
    auto dd = put(gpu(), dout);
    auto dt = put(gpu(), table0);
    expect_error(
        [&] { gpu()->embedding_backward(ctx_, ids.get(), dd.get(), dt.get(), n, dim, vocab); },
        {"embedding_backward", "token id " + std::to_string(bad), "position 3", "vocab size 11"});
    EXPECT_TRUE(bitwise_equal(get(gpu(), dt), table0)) << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RowsDim {
  int64_t rows, dim;
};
const RowsDim kNorms[] = {{7, 33}, {130, 257}, {1, 4096}, {3, 5000}, {1100, 64}};

TEST_F(CudaBackend, RmsNormForward) {
  for (const RowsDim& s : kNorms) {
    const auto x = random_vec(size_t(s.rows * s.dim), uint64_t(s.rows), -2.f, 2.f);
    const auto w = random_vec(size_t(s.dim), uint64_t(s.dim), 0.5f, 1.5f);
    for (bool in_place : {false, true}) {
      auto run = [&](Backend* be) {
        auto dx = put(be, x), dw = put(be, w);
        auto y = put(be, nan_vec(x.size()));
        auto rstd = put(be, nan_vec(size_t(s.rows)));
        float* out = in_place ? dx.get() : y.get();
        be->rmsnorm_forward(ctx_, dx.get(), dw.get(), out, rstd.get(), s.rows, s.dim, 1e-5f);
        auto r = get(be, in_place ? dx : y);
        const auto rs = get(be, rstd);
        r.insert(r.end(), rs.begin(), rs.end());
        return r;
      };
      compare(run, kTol,
              std::to_string(s.rows) + "x" + std::to_string(s.dim) +
                  " in_place=" + std::to_string(in_place));
    }
  }
}

TEST_F(CudaBackend, RmsNormBackwardWithAndWithoutWeightGradient) {
  for (const RowsDim& s : kNorms) {
    const size_t n = size_t(s.rows * s.dim);
    const auto x = random_vec(n, 21, -2.f, 2.f);
    const auto w = random_vec(size_t(s.dim), 22, 0.5f, 1.5f);
    const auto dy = random_vec(n, 23);
    const auto dw0 = random_vec(size_t(s.dim), 24);
    for (int variant = 0; variant < 3; ++variant) {  // 0: with dw, 1: dw null, 2: dx aliases dy
      auto run = [&](Backend* be) {
        auto dx_ = put(be, x), dw_ = put(be, w), ddy = put(be, dy);
        auto y = put(be, nan_vec(n));
        auto rstd = put(be, nan_vec(size_t(s.rows)));
        be->rmsnorm_forward(ctx_, dx_.get(), dw_.get(), y.get(), rstd.get(), s.rows, s.dim, 1e-5f);
        auto dx = put(be, nan_vec(n));
        auto dw = put(be, dw0);
        float* dx_ptr = variant == 2 ? ddy.get() : dx.get();
        be->rmsnorm_backward(ctx_, ddy.get(), dx_.get(), dw_.get(), rstd.get(), dx_ptr,
                             variant == 1 ? nullptr : dw.get(), s.rows, s.dim);
        auto r = get(be, variant == 2 ? ddy : dx);
        const auto g = get(be, dw);
        r.insert(r.end(), g.begin(), g.end());
        return r;
      };
      const std::string what = std::to_string(s.rows) + "x" + std::to_string(s.dim) +
                               " variant=" + std::to_string(variant);
      compare(run, kTol, what);
      const auto a = run(gpu());
      EXPECT_TRUE(bitwise_equal(a, run(gpu()))) << "dx/dw not reproducible, " << what;
      if (variant == 1) {
        const std::vector<float> tail(a.end() - ptrdiff_t(s.dim), a.end());
        EXPECT_TRUE(bitwise_equal(tail, dw0)) << "dw touched though null, " << what;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE

struct RopeCase {
  int64_t n;
  int heads, head_dim;
  int32_t max_pos;
};

TEST_F(CudaBackend, RopeForwardBackwardAndInverse) {
  const RopeCase cases[] = {{1, 1, 2, 1}, {37, 3, 8, 64}, {64, 4, 64, 100000}, {19, 2, 128, 4096}};
  for (const RopeCase& rc : cases) {
    const std::string what = "n=" + std::to_string(rc.n) + " heads=" + std::to_string(rc.heads) +
                             " head_dim=" + std::to_string(rc.head_dim);
    const size_t count = size_t(rc.n * rc.heads * rc.head_dim);
    const auto x = random_vec(count, uint64_t(rc.head_dim));
    const auto pos = random_ids(size_t(rc.n), rc.max_pos, 5);
    std::vector<float> inv(size_t(rc.head_dim / 2));
    for (size_t i = 0; i < inv.size(); ++i)
      inv[i] = float(std::pow(10000.0, -2.0 * double(i) / rc.head_dim));
    for (int dir : {1, -1}) {
      auto run = [&](Backend* be) {
        auto dx = put(be, x);
        auto dp = put(be, pos);
        auto di = put(be, inv);
        if (dir > 0)
          be->rope_forward(ctx_, dx.get(), dp.get(), di.get(), rc.n, rc.heads, rc.head_dim);
        else
          be->rope_backward(ctx_, dx.get(), dp.get(), di.get(), rc.n, rc.heads, rc.head_dim);
        return get(be, dx);
      };
      compare(run, kTol, what + (dir > 0 ? " forward" : " backward"));
    }
    // Backward is the inverse rotation.
    auto dx = put(gpu(), x);
    auto dp = put(gpu(), pos);
    auto di = put(gpu(), inv);
    gpu()->rope_forward(ctx_, dx.get(), dp.get(), di.get(), rc.n, rc.heads, rc.head_dim);
    gpu()->rope_backward(ctx_, dx.get(), dp.get(), di.get(), rc.n, rc.heads, rc.head_dim);
    EXPECT_LE(rel_error(get(gpu(), dx), x), 1e-6) << what;
  }
  auto dx = put(gpu(), random_vec(6, 1));
  auto dp = put(gpu(), std::vector<int32_t>{3, 4});
  auto di = put(gpu(), std::vector<float>{1.f});
  expect_error([&] { gpu()->rope_forward(ctx_, dx.get(), dp.get(), di.get(), 2, 1, 3); },
               {"even head_dim"});
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

TEST_F(CudaBackend, SwiGluForwardAndBackward) {
  for (size_t n : kSizes) {
    auto gate = random_vec(n, 31, -8.f, 8.f);
    // Saturated sigmoids: exp(-g) overflows or vanishes.
    for (size_t i = 0; i < n; i += 97) gate[i] = (i / 97) % 2 ? 120.f : -120.f;
    const auto up = random_vec(n, 32), dh = random_vec(n, 33);
    compare(
        [&](Backend* be) {
          auto g = put(be, gate), u = put(be, up), h = put(be, nan_vec(n));
          be->swiglu_forward(ctx_, g.get(), u.get(), h.get(), n);
          return get(be, h);
        },
        kTol, "forward n=" + std::to_string(n));
    compare(
        [&](Backend* be) {
          auto d = put(be, dh), g = put(be, gate), u = put(be, up);
          auto dg = put(be, nan_vec(n)), du = put(be, nan_vec(n));
          be->swiglu_backward(ctx_, d.get(), g.get(), u.get(), dg.get(), du.get(), n);
          auto r = get(be, dg);
          const auto b = get(be, du);
          r.insert(r.end(), b.begin(), b.end());
          return r;
        },
        kTol, "backward n=" + std::to_string(n));
    // Outputs aliasing inputs element for element (dgate over dh, dup over up).
    compare(
        [&](Backend* be) {
          auto d = put(be, dh), g = put(be, gate), u = put(be, up);
          be->swiglu_backward(ctx_, d.get(), g.get(), u.get(), d.get(), u.get(), n);
          auto r = get(be, d);
          const auto b = get(be, u);
          r.insert(r.end(), b.begin(), b.end());
          return r;
        },
        kTol, "aliased backward n=" + std::to_string(n));
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW

TEST_F(CudaBackend, AdamWOverSpansLeavesGapsAlone) {
  const size_t n = 10007;
  // Spans with gaps [3000, 3500) and [8500, 9000), an empty span, and several decays.
  const std::vector<ParamSpan> spans = {
      {0, 3000, 0.1f}, {3000, 0, 0.05f}, {3500, 5000, 0.f}, {9000, 1007, 0.01f}};
  const auto p0 = random_vec(n, 41), g = random_vec(n, 42, -3.f, 3.f);
  const auto m0 = random_vec(n, 43, -0.1f, 0.1f), v0 = random_vec(n, 44, 0.f, 0.01f);
  for (float beta1 : {0.9f, 0.3f}) {  // both of torch's lerp formulas
    for (int64_t step : {int64_t(1), int64_t(7)}) {
      AdamWHyper h;
      h.lr = 1e-3f;
      h.beta1 = beta1;
      h.beta2 = 0.999f;
      h.eps = 1e-8f;
      h.step = step;
      h.grad_scale = 0.5f;
      auto run = [&](Backend* be) {
        auto p = put(be, p0), dg = put(be, g), m = put(be, m0), v = put(be, v0);
        be->adamw_step(ctx_, p.get(), dg.get(), m.get(), v.get(), spans.data(), int(spans.size()),
                       h);
        auto r = get(be, p);
        for (const auto& t : {get(be, m), get(be, v)}) r.insert(r.end(), t.begin(), t.end());
        return r;
      };
      const auto c = run(cpu()), gg = run(gpu());
      const std::string what = "beta1=" + std::to_string(beta1) + " step=" + std::to_string(step);
      EXPECT_LE(rel_error(gg, c), 1e-6) << what;
      for (size_t i : {size_t(3000), size_t(3499), size_t(8500), size_t(8999)}) {
        EXPECT_EQ(gg[i], p0[i]) << "param in a gap changed, " << what;
        EXPECT_EQ(gg[n + i], m0[i]) << "m in a gap changed, " << what;
        EXPECT_EQ(gg[2 * n + i], v0[i]) << "v in a gap changed, " << what;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LM head + loss

struct HeadCase {
  int64_t n, d, vocab;
};
// The last one needs two chunks (the GPU chunk holds 2^25 logits).
const HeadCase kHeads[] = {{1, 8, 5}, {37, 33, 1001}, {300, 64, 3001}, {700, 16, 50021}};

struct HeadOut {
  LossSum loss;
  std::vector<float> dhidden, dW;
};

class CudaLmHead : public CudaBackend {
 protected:
  HeadOut run(Backend* be, const HeadCase& c, const std::vector<float>& hidden,
              const std::vector<float>& W, const std::vector<int32_t>& targets,
              const std::vector<float>& dW0, bool with_dhidden, bool with_dW) {
    auto h = put(be, hidden), w = put(be, W);
    auto t = put(be, targets);
    auto dh = put(be, nan_vec(size_t(c.n * c.d)));
    auto dw = put(be, dW0);
    HeadOut o;
    o.loss = be->lm_head_loss(ctx_, h.get(), w.get(), t.get(), c.n, c.d, c.vocab, 0.37f,
                              with_dhidden ? dh.get() : nullptr, with_dW ? dw.get() : nullptr);
    o.dhidden = get(be, dh);
    o.dW = get(be, dw);
    return o;
  }
};

std::vector<int32_t> head_targets(const HeadCase& c, uint64_t seed) {
  auto t = random_ids(size_t(c.n), int32_t(c.vocab), seed);
  for (size_t i = 3; i < t.size(); i += 10) t[i] = kIgnoreIndex;
  return t;
}

// dhidden sums vocab products per element: both backends' fp32 sums carry rounding that grows like
// sqrt(terms) * 2^-24 (about 1.3e-5 for 50021 terms, seen on an H200), so beyond ~7000 terms the
// tolerance follows that bound instead of the flat 1e-5.
double sum_tol(int64_t terms) {
  return std::max(kTol, 2.0 * std::sqrt(double(terms)) * 0x1p-24);
}

TEST_F(CudaLmHead, MatchesCpuWithEveryGradientVariant) {
  for (const HeadCase& c : kHeads) {
    const auto hidden = random_vec(size_t(c.n * c.d), 51, -2.f, 2.f);
    const auto W = random_vec(size_t(c.vocab * c.d), 52);
    const auto targets = head_targets(c, 53);
    const auto dW0 = random_vec(size_t(c.vocab * c.d), 54, -0.1f, 0.1f);
    for (int variant = 0; variant < 3; ++variant) {  // 0: dhidden + dW, 1: dhidden, 2: loss only
      const bool with_dh = variant < 2, with_dW = variant == 0;
      const std::string what = "n=" + std::to_string(c.n) + " d=" + std::to_string(c.d) +
                               " V=" + std::to_string(c.vocab) +
                               " variant=" + std::to_string(variant);
      const HeadOut ref = run(cpu(), c, hidden, W, targets, dW0, with_dh, with_dW);
      const HeadOut got = run(gpu(), c, hidden, W, targets, dW0, with_dh, with_dW);
      EXPECT_EQ(got.loss.tokens, ref.loss.tokens) << what;
      EXPECT_NEAR(got.loss.loss, ref.loss.loss, kTol * std::fabs(ref.loss.loss)) << what;
      if (with_dh) {
        EXPECT_LE(rel_error(got.dhidden, ref.dhidden), sum_tol(c.vocab)) << what;
      } else {
        for (float v : got.dhidden) ASSERT_TRUE(std::isnan(v)) << "dhidden written, " << what;
      }
      if (with_dW) {
        EXPECT_LE(rel_error(got.dW, ref.dW), kTol) << what;
      } else {
        EXPECT_TRUE(bitwise_equal(got.dW, dW0)) << "dW touched, " << what;
      }
      // Ignored tokens get zero dhidden rows.
      if (with_dh) {
        for (size_t i = 3; i < size_t(c.n); i += 10) {
          for (int64_t k = 0; k < c.d; ++k) {
            ASSERT_EQ(got.dhidden[i * size_t(c.d) + size_t(k)], 0.f) << what;
          }
        }
      }
    }
  }
}

TEST_F(CudaLmHead, IsBitwiseDeterministic) {
  for (const HeadCase& c : {kHeads[2], kHeads[3]}) {
    const auto hidden = random_vec(size_t(c.n * c.d), 61, -2.f, 2.f);
    const auto W = random_vec(size_t(c.vocab * c.d), 62);
    const auto targets = head_targets(c, 63);
    const auto dW0 = random_vec(size_t(c.vocab * c.d), 64, -0.1f, 0.1f);
    const HeadOut a = run(gpu(), c, hidden, W, targets, dW0, true, true);
    const HeadOut b = run(gpu(), c, hidden, W, targets, dW0, true, true);
    EXPECT_EQ(std::memcmp(&a.loss.loss, &b.loss.loss, sizeof(double)), 0) << c.vocab;
    EXPECT_TRUE(bitwise_equal(a.dhidden, b.dhidden)) << c.vocab;
    EXPECT_TRUE(bitwise_equal(a.dW, b.dW)) << c.vocab;
  }
}

TEST_F(CudaLmHead, AllIgnoredAndEmpty) {
  const HeadCase c{9, 8, 31};
  const auto hidden = random_vec(size_t(c.n * c.d), 71), W = random_vec(size_t(c.vocab * c.d), 72);
  const auto dW0 = random_vec(size_t(c.vocab * c.d), 73);
  const HeadOut o =
      run(gpu(), c, hidden, W, std::vector<int32_t>(size_t(c.n), kIgnoreIndex), dW0, true, true);
  EXPECT_EQ(o.loss.loss, 0.0);
  EXPECT_EQ(o.loss.tokens, 0);
  for (float v : o.dhidden) ASSERT_EQ(v, 0.f);
  EXPECT_LE(rel_error(o.dW, dW0), 1e-7);
  const LossSum empty =
      gpu()->lm_head_loss(ctx_, nullptr, nullptr, nullptr, 0, c.d, c.vocab, 1.f, nullptr, nullptr);
  EXPECT_EQ(empty.loss, 0.0);
  EXPECT_EQ(empty.tokens, 0);
}

TEST_F(CudaLmHead, RejectsBadTargetsAndLeavesOutputs) {
  const HeadCase c{6, 8, 31};
  const auto hidden = random_vec(size_t(c.n * c.d), 81), W = random_vec(size_t(c.vocab * c.d), 82);
  const auto dW0 = random_vec(size_t(c.vocab * c.d), 83);
  for (int32_t bad : {int32_t(31), int32_t(-5), int32_t(-101)}) {
    std::vector<int32_t> targets = {1, kIgnoreIndex, 30, 0, bad, 2};
    auto h = put(gpu(), hidden), w = put(gpu(), W);
    auto t = put(gpu(), targets);
    auto dh = put(gpu(), nan_vec(size_t(c.n * c.d)));
    auto dw = put(gpu(), dW0);
    expect_error(
        [&] {
          gpu()->lm_head_loss(ctx_, h.get(), w.get(), t.get(), c.n, c.d, c.vocab, 1.f, dh.get(),
                              dw.get());
        },
        {"lm_head_loss", "token 4", "target id " + std::to_string(bad)});
    EXPECT_TRUE(bitwise_equal(get(gpu(), dw), dW0)) << bad;
    for (float v : get(gpu(), dh)) ASSERT_TRUE(std::isnan(v)) << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// Attention (cuda/attention.cu) through the backend: the host doc offsets are uploaded per call.

TEST_F(CudaBackend, AttentionThroughTheBackendMatchesCpu) {
  struct AttnCase {
    int hq, hkv, d;
    std::vector<int32_t> docs;
  };
  std::vector<int32_t> many = {0};
  for (int i = 1; i <= 30; ++i) many.push_back(many.back() + 1 + (i * 7) % 11);
  const AttnCase cases[] = {{4, 2, 4, {0, 3, 7, 14}},
                            {4, 2, 64, {0, 5, 20, 37}},
                            {2, 1, 128, {0, 37}},
                            {3, 3, 32, many},
                            {4, 2, 64, {0, 5, 20, 37}}};  // again, after the long offsets list
  uint64_t seed = 90;
  for (const AttnCase& ac : cases) {
    AttentionShape s;
    s.tokens = ac.docs.back();
    s.q_heads = ac.hq;
    s.kv_heads = ac.hkv;
    s.head_dim = ac.d;
    s.doc_offsets = ac.docs.data();
    s.n_docs = int(ac.docs.size()) - 1;
    s.scale = float(1.0 / std::sqrt(double(ac.d)));
    const size_t nq = size_t(s.tokens * ac.hq * ac.d), nkv = size_t(s.tokens * ac.hkv * ac.d);
    const auto q = random_vec(nq, ++seed), k = random_vec(nkv, ++seed), v = random_vec(nkv, ++seed);
    const auto dout = random_vec(nq, ++seed);
    const std::string what = "hq=" + std::to_string(ac.hq) + " hkv=" + std::to_string(ac.hkv) +
                             " d=" + std::to_string(ac.d) + " docs=" + std::to_string(s.n_docs);
    compare(
        [&](Backend* be) {
          auto dq_ = put(be, q), dk_ = put(be, k), dv_ = put(be, v), ddo = put(be, dout);
          auto out = put(be, nan_vec(nq));
          auto lse = put(be, nan_vec(size_t(s.tokens * ac.hq)));
          be->attention_forward(ctx_, s, dq_.get(), dk_.get(), dv_.get(), out.get(), lse.get());
          auto dq = put(be, nan_vec(nq)), dk = put(be, nan_vec(nkv)), dv = put(be, nan_vec(nkv));
          be->attention_backward(ctx_, s, ddo.get(), dq_.get(), dk_.get(), dv_.get(), out.get(),
                                 lse.get(), dq.get(), dk.get(), dv.get());
          std::vector<float> r;
          for (const auto& t : {get(be, out), get(be, lse), get(be, dq), get(be, dk), get(be, dv)})
            r.insert(r.end(), t.begin(), t.end());
          return r;
        },
        kTol, what);
  }
}

// ---------------------------------------------------------------------------------------------
// A caller's stream

TEST_F(CudaBackend, OpsRunOnTheCallersStream) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ExecContext on_s = ctx_;
  on_s.stream = s;
  const HeadCase c{300, 64, 3001};
  const auto hidden = random_vec(size_t(c.n * c.d), 91), W = random_vec(size_t(c.vocab * c.d), 92);
  const auto targets = head_targets(c, 93);
  auto run = [&](const ExecContext& ctx) {
    auto h = put(gpu(), hidden), w = put(gpu(), W);
    auto t = put(gpu(), targets);
    auto dh = put(gpu(), nan_vec(size_t(c.n * c.d)));
    auto dw = put(gpu(), std::vector<float>(W.size(), 0.f));
    auto y = put(gpu(), nan_vec(size_t(c.n * c.vocab)));
    gpu()->linear_forward(ctx, h.get(), w.get(), nullptr, y.get(), c.n, c.d, c.vocab);
    const LossSum ls = gpu()->lm_head_loss(ctx, h.get(), w.get(), t.get(), c.n, c.d, c.vocab, 0.5f,
                                           dh.get(), dw.get());
    const double ss = gpu()->sum_squares(ctx, dw.get(), dw.size());
    gpu()->scale_inplace(ctx, dh.get(), 2.f, dh.size());
    gpu()->synchronize(ctx);
    std::vector<float> r = get(gpu(), y);
    for (const auto& v : {get(gpu(), dh), get(gpu(), dw)}) r.insert(r.end(), v.begin(), v.end());
    r.push_back(float(ls.loss));
    r.push_back(float(ss));
    return r;
  };
  const auto own = run(ctx_);
  const auto theirs = run(on_s);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_TRUE(bitwise_equal(own, theirs));
  // Memory calls work after the caller's stream is gone.
  auto x = put(gpu(), std::vector<float>{1.f, 2.f});
  EXPECT_EQ(get(gpu(), x), (std::vector<float>{1.f, 2.f}));
}

// ---------------------------------------------------------------------------------------------
// End to end: a tiny Llama (GQA, biases, llama3 RoPE, untied or tied head, several documents per
// row) on both backends with the same weights.

// Same random weights on both models, with norms and biases moved off their 1/0 init.
void same_weights(Model& a, Model& b, uint64_t seed) {
  a.init_random(seed);
  std::vector<float> p = a.params_to_host();
  std::mt19937 rng(uint32_t(seed + 1));
  std::normal_distribution<float> nd(0.f, 0.2f);
  for (const auto& e : a.layout().entries())
    if (e.kind == ParamKind::Norm || e.kind == ParamKind::Bias)
      for (size_t i = 0; i < e.count; ++i) p[e.offset + i] += nd(rng);
  a.params_from_host(p);
  b.params_from_host(p);
}

std::vector<float> grads_of(const Model& m, bool lora) {
  std::vector<float> g(lora ? m.lora_layout().total() : m.num_params());
  m.backend()->download(g.data(), lora ? m.lora_grads() : m.grads(), g.size() * sizeof(float));
  return g;
}

double norm(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return std::sqrt(s);
}

// One tensor of a gradient buffer: close relative to itself, with a floor relative to the whole
// buffer for tensors whose gradient is (nearly) zero in exact arithmetic (e.g. k_proj's bias
// without RoPE's position dependence would be exactly 0, leaving only rounding noise).
void expect_tensor_close(const std::vector<float>& got, const std::vector<float>& want,
                         const ParamEntry& e) {
  std::vector<float> diff(e.count);
  for (size_t i = 0; i < e.count; ++i) diff[i] = got[e.offset + i] - want[e.offset + i];
  const double d = norm(diff.data(), diff.size());
  const double t = norm(want.data() + e.offset, e.count), all = norm(want.data(), want.size());
  EXPECT_LE(d, 1e-4 * t + 1e-6 * all) << e.name;
}

class CudaModel : public CudaBackend, public ::testing::WithParamInterface<bool> {};

TEST_P(CudaModel, LogitsLossAndGradientsMatchCpu) {
  const bool tied = GetParam();
  Model mc(cpu(), testing::tiny_model_config(tied), 14, true);
  Model mg(gpu(), testing::tiny_model_config(tied), 14, true);
  same_weights(mc, mg, 11);
  const Batch b = testing::tiny_packed_batch();
  EXPECT_LE(rel_error(mg.logits(ctx_, b), mc.logits(ctx_, b)), kTol) << "logits";

  const float scale = 1.f / float(b.target_count());
  cpu()->zero(mc.grads(), mc.num_params() * sizeof(float));
  gpu()->zero(mg.grads(), mg.num_params() * sizeof(float));
  const LossSum lc = mc.forward_backward(ctx_, b, scale);
  const LossSum lg = mg.forward_backward(ctx_, b, scale);
  EXPECT_EQ(lg.tokens, lc.tokens);
  EXPECT_NEAR(lg.loss, lc.loss, kTol * std::fabs(lc.loss));
  const auto gc = grads_of(mc, false), gg = grads_of(mg, false);
  EXPECT_LE(rel_error(gg, gc), kTol) << "all gradients";
  for (const auto& e : mc.layout().entries()) expect_tensor_close(gg, gc, e);
  const LossSum fc = mc.forward_loss(ctx_, b), fg = mg.forward_loss(ctx_, b);
  EXPECT_NEAR(fg.loss, fc.loss, kTol * std::fabs(fc.loss));

  // A whole step is bitwise reproducible on the GPU: every op reduces in a fixed order.
  gpu()->zero(mg.grads(), mg.num_params() * sizeof(float));
  const LossSum again = mg.forward_backward(ctx_, b, scale);
  EXPECT_EQ(std::memcmp(&again.loss, &lg.loss, sizeof(double)), 0);
  EXPECT_TRUE(bitwise_equal(grads_of(mg, false), gg));
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, CudaModel, ::testing::Values(false, true));

// ZeRO-2/3 on one GPU (the single-process communicator, whose copies are host copies): units
// move through the backend, and the sharded model computes bitwise what the whole one does on
// the GPU, over two micro-batches and with new weights.
TEST_P(CudaModel, ZeroOnOneGpuMatchesTheWholeModel) {
  const bool tied = GetParam();
  const ModelConfig cfg = testing::tiny_model_config(tied);
  const Batch b = testing::tiny_packed_batch();
  auto comm = make_local_communicator();
  for (int stage : {2, 3}) {
    Model whole(gpu(), cfg, 14, true);
    ZeroShards zero(gpu(), *comm, ParamLayout(cfg), stage, 1);
    Model sharded(gpu(), cfg, 14, true, nullptr, Recompute::None, &zero);
    whole.init_random(13);
    sharded.params_from_host(whole.params_to_host());
    gpu()->zero(whole.grads(), whole.num_params() * sizeof(float));
    zero.zero_grads();
    for (int k = 0; k < 2; ++k) {
      const LossSum a = whole.forward_backward(ctx_, b, 0.01f);
      const LossSum z = sharded.forward_backward(ctx_, b, 0.01f);
      EXPECT_EQ(a.loss, z.loss) << "zero" << stage << " micro-batch " << k;
    }
    zero.finish_grads();
    std::vector<float> gz(whole.num_params());
    gpu()->download(gz.data(), zero.shard_grads(), gz.size() * sizeof(float));
    EXPECT_LE(rel_error(gz, grads_of(whole, false)), 1e-6) << "zero" << stage;
    EXPECT_EQ(whole.forward_loss(ctx_, b).loss, sharded.forward_loss(ctx_, b).loss);
  }
}

TEST_F(CudaBackend, LoraAdapterGradientsMatchCpu) {
  LoraConfig lc;
  lc.rank = 3;
  lc.alpha = 5;
  lc.dropout = 0.1;
  lc.targets = parse_lora_targets({"all-linear"}, "lora.targets");
  Model mc(cpu(), testing::tiny_model_config(false), 14, true, &lc);
  Model mg(gpu(), testing::tiny_model_config(false), 14, true, &lc);
  same_weights(mc, mg, 7);
  // B away from zero so every path through the adapters carries gradient.
  std::vector<float> ad(mc.lora_layout().total());
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (auto& x : ad) x = nd(rng);
  mc.lora_from_host(ad);
  mg.lora_from_host(ad);

  ExecContext ctx = ctx_;
  ctx.seed = 1234;  // the dropout masks: both backends must draw the same
  const Batch b = testing::tiny_packed_batch();
  const float scale = 1.f / float(b.target_count());
  cpu()->zero(mc.lora_grads(), mc.lora_layout().total() * sizeof(float));
  gpu()->zero(mg.lora_grads(), mg.lora_layout().total() * sizeof(float));
  const LossSum lcpu = mc.forward_backward(ctx, b, scale);
  const LossSum lgpu = mg.forward_backward(ctx, b, scale);
  EXPECT_NEAR(lgpu.loss, lcpu.loss, kTol * std::fabs(lcpu.loss));
  const auto gc = grads_of(mc, true), gg = grads_of(mg, true);
  EXPECT_LE(rel_error(gg, gc), kTol) << "adapter gradients";
  for (const auto& e : mc.lora_layout().entries()) expect_tensor_close(gg, gc, e);
  // Another seed draws other masks: the gradients must move (the seed reaches the GPU dropout).
  ctx.seed = 4321;
  gpu()->zero(mg.lora_grads(), mg.lora_layout().total() * sizeof(float));
  mg.forward_backward(ctx, b, scale);
  EXPECT_GT(rel_error(grads_of(mg, true), gg), 1e-4);
}

#endif  // FTUNE_HAVE_CUDA

}  // namespace
}  // namespace ftune
