// CUDA attention (cuda/attention.h) against the scalar reference in double
// (engine/backend/cpu/reference_attention.h): packed documents of uneven lengths, grouped-query
// heads, fast and generic head dims, unaligned pointers, more documents than a grid dimension
// holds; document isolation and bitwise determinism. Outputs are poisoned with NaN before every
// call so an unwritten element fails. Every test that needs a GPU skips without one.
// CudaAttentionBf16.* does the same for the bf16 tensor-core path (attention_bf16.cu): the
// reference runs on the bf16-rounded inputs, relative errors within 1e-2 (bf16 outputs, bf16
// P and dS inside), lse within 1e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/reference_attention.h"
#include "engine/base/error.h"
#include "tests/attention_cases.h"
#include "tests/test_util.h"
#ifdef FTUNE_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda/attention.h"
#include "cuda/cuda_device.h"
#endif

namespace ftune {
namespace {

#ifdef FTUNE_HAVE_CUDA

using testing::bitwise_equal;
using testing::Case;
using testing::describe;
using testing::expect_documents_independent;
using testing::Inputs;
using testing::offsets_of;
using testing::Outputs;
using testing::random_vec;
using testing::rel_error;
using testing::RunAttention;
using testing::shape_of;
using testing::to_double;

#define REQUIRE_GPU()                                                               \
  do {                                                                              \
    std::string why_;                                                               \
    if (cuda::device_count(&why_) == 0) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A device array of n elements, `pad` spare elements in front: get() is base + pad, so pad = 1
// gives a float pointer that is not 16-byte aligned.
template <class T>
class Dev {
 public:
  explicit Dev(size_t n, size_t pad = 0) : n_(n), pad_(pad) {
    cuda_check(cudaMalloc(&base_, (n + pad + 1) * sizeof(T)), "cudaMalloc");
  }
  Dev(const std::vector<T>& h, size_t pad = 0) : Dev(h.size(), pad) { upload(h); }
  ~Dev() { cudaFree(base_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  T* get() const { return base_ + pad_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& h) {
    cuda_check(cudaMemcpy(get(), h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    cuda_check(cudaMemcpy(h.data(), get(), n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
  }
  // All bits set: a NaN for floats.
  void poison(cudaStream_t stream) {
    cuda_check(cudaMemsetAsync(get(), 0xff, n_ * sizeof(T), stream), "poison");
  }

 private:
  T* base_ = nullptr;
  size_t n_ = 0, pad_ = 0;
};

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

Reference reference(const AttentionShape& s, const Inputs& in) {
  const std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
  const std::vector<double> dout = to_double(in.dout);
  Reference r{std::vector<double>(q.size()), std::vector<double>(size_t(s.tokens * s.q_heads)),
              std::vector<double>(q.size()), std::vector<double>(k.size()),
              std::vector<double>(v.size())};
  ref::attention_forward(s, q.data(), k.data(), v.data(), r.out.data(), r.lse.data());
  ref::attention_backward(s, dout.data(), q.data(), k.data(), v.data(), r.out.data(), r.lse.data(),
                          r.dq.data(), r.dk.data(), r.dv.data());
  return r;
}

// The kernels' arguments for a shape, with its document offsets already on the device.
cuda::AttentionArgs args_of(const AttentionShape& s, const int32_t* device_offsets) {
  cuda::AttentionArgs a;
  a.tokens = s.tokens;
  a.q_heads = s.q_heads;
  a.kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  a.doc_offsets = device_offsets;
  a.n_docs = s.n_docs;
  for (int d = 0; d < s.n_docs; ++d)
    a.max_doc_len = std::max(a.max_doc_len, s.doc_offsets[d + 1] - s.doc_offsets[d]);
  a.scale = s.scale;
  return a;
}

// One problem resident on the device; forward() and backward() poison their outputs first.
class GpuAttention {
 public:
  GpuAttention(const AttentionShape& s, const Inputs& in, size_t pad = 0)
      : offs_(std::vector<int32_t>(s.doc_offsets, s.doc_offsets + s.n_docs + 1)),
        q_(in.q, pad),
        k_(in.k, pad),
        v_(in.v, pad),
        dout_(in.dout, pad),
        out_(in.q.size(), pad),
        lse_(size_t(s.tokens * s.q_heads), pad),
        dq_(in.q.size(), pad),
        dk_(in.k.size(), pad),
        dv_(in.v.size(), pad) {
    a_ = args_of(s, offs_.get());
    ws_bytes_ = cuda::attention_workspace_bytes(a_);
    EXPECT_GE(ws_bytes_, size_t(s.tokens * s.q_heads) * sizeof(float));
    ws_ = std::make_unique<Dev<unsigned char>>(ws_bytes_);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~GpuAttention() { cudaStreamDestroy(stream_); }

  void forward() {
    out_.poison(stream_);
    lse_.poison(stream_);
    cuda::attention_forward(stream_, a_, q_.get(), k_.get(), v_.get(), out_.get(), lse_.get());
    cuda_check(cudaStreamSynchronize(stream_), "forward");
  }
  void backward() {
    dq_.poison(stream_);
    dk_.poison(stream_);
    dv_.poison(stream_);
    ws_->poison(stream_);
    cuda::attention_backward(stream_, a_, dout_.get(), q_.get(), k_.get(), v_.get(), out_.get(),
                             lse_.get(), dq_.get(), dk_.get(), dv_.get(), ws_->get());
    cuda_check(cudaStreamSynchronize(stream_), "backward");
  }
  Outputs download() const {
    return {out_.download(), lse_.download(), dq_.download(), dk_.download(), dv_.download()};
  }

 private:
  cuda::AttentionArgs a_;
  Dev<int32_t> offs_;
  Dev<float> q_, k_, v_, dout_, out_, lse_, dq_, dk_, dv_;
  std::unique_ptr<Dev<unsigned char>> ws_;
  size_t ws_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

Outputs run_gpu(const AttentionShape& s, const Inputs& in, size_t pad = 0) {
  GpuAttention g(s, in, pad);
  g.forward();
  g.backward();
  return g.download();
}

void expect_matches(const Outputs& o, const Reference& r, const std::string& what,
                    double tol = 1e-5) {
  EXPECT_LE(rel_error(to_double(o.out), r.out), tol) << "out " << what;
  EXPECT_LE(rel_error(to_double(o.lse), r.lse), tol) << "lse " << what;
  EXPECT_LE(rel_error(to_double(o.dq), r.dq), tol) << "dq " << what;
  EXPECT_LE(rel_error(to_double(o.dk), r.dk), tol) << "dk " << what;
  EXPECT_LE(rel_error(to_double(o.dv), r.dv), tol) << "dv " << what;
}

void expect_bitwise(const Outputs& a, const Outputs& b, const std::string& what) {
  EXPECT_TRUE(bitwise_equal(a.out, b.out)) << "out " << what;
  EXPECT_TRUE(bitwise_equal(a.lse, b.lse)) << "lse " << what;
  EXPECT_TRUE(bitwise_equal(a.dq, b.dq)) << "dq " << what;
  EXPECT_TRUE(bitwise_equal(a.dk, b.dk)) << "dk " << what;
  EXPECT_TRUE(bitwise_equal(a.dv, b.dv)) << "dv " << what;
}

// Documents on both sides of the 32- and 64-row tile edges, including one-token ones.
const std::vector<int32_t> kUnevenLens = {1, 2, 7, 63, 64, 65, 130, 257};

TEST(CudaAttention, MatchesReferenceOverDocumentsGroupsAndHeadDims) {
  REQUIRE_GPU();
  uint64_t seed = 1000;
  for (int hkv : {8, 4, 2}) {
    for (int dim : {4, 16, 64, 128}) {
      const Case c{offsets_of(kUnevenLens), 8, hkv, dim};
      const AttentionShape s = shape_of(c);
      const Inputs in(s, seed += 10);
      GpuAttention g(s, in);
      g.forward();
      g.backward();
      const Outputs first = g.download();
      expect_matches(first, reference(s, in), describe(c));
      g.backward();  // the backward again on the same inputs: bit for bit the same
      expect_bitwise(first, g.download(), "backward rerun " + describe(c));
    }
  }
}

TEST(CudaAttention, SingleLongDocument) {
  REQUIRE_GPU();
  const Case cases[] = {{{0, 1024}, 8, 2, 128}, {{0, 1024}, 8, 8, 64}, {{0, 1024}, 8, 4, 16}};
  uint64_t seed = 2000;
  for (const Case& c : cases) {
    const AttentionShape s = shape_of(c);
    const Inputs in(s, seed += 10);
    expect_matches(run_gpu(s, in), reference(s, in), describe(c));
  }
}

TEST(CudaAttention, GenericHeadDimsAndUnalignedPointers) {
  REQUIRE_GPU();
  // head_dim below, between and above the instantiated widths (16, 32, 64, 128), odd ones on
  // the scalar path; then the fast widths with pointers that are not 16-byte aligned.
  const std::vector<int32_t> offs = {0, 37, 100, 229};
  uint64_t seed = 3000;
  for (int dim : {1, 5, 24, 40, 80, 100}) {
    const Case c{offs, 4, 2, dim};
    const AttentionShape s = shape_of(c);
    const Inputs in(s, seed += 10);
    expect_matches(run_gpu(s, in), reference(s, in), describe(c));
  }
  for (int dim : {64, 128}) {
    const Case c{offs, 4, 1, dim};
    const AttentionShape s = shape_of(c);
    const Inputs in(s, seed += 10);
    expect_matches(run_gpu(s, in, /*pad=*/1), reference(s, in), "unaligned " + describe(c));
  }
}

TEST(CudaAttention, MoreDocumentsThanOneGridDimension) {
  REQUIRE_GPU();
  // 70,000 documents of 1..3 tokens: past the 65,535 blocks of a grid's z dimension.
  std::vector<int32_t> lens(70000);
  for (size_t i = 0; i < lens.size(); ++i) lens[i] = int32_t(1 + i % 3);
  const Case c{offsets_of(lens), 2, 1, 4};
  const AttentionShape s = shape_of(c);
  const Inputs in(s, 4000);
  expect_matches(run_gpu(s, in), reference(s, in), describe(c));
}

TEST(CudaAttention, LargeScoresStayFinite) {
  REQUIRE_GPU();
  // Scores of several hundred: a softmax without the max shift would overflow.
  for (int dim : {16, 128}) {
    const Case c{{0, 40, 90, 200}, 2, 1, dim};
    const AttentionShape s = shape_of(c);
    Inputs in(s, 5000 + dim);
    for (float& x : in.q) x *= 100.f;
    const Outputs o = run_gpu(s, in);
    const Reference r = reference(s, in);
    EXPECT_LE(rel_error(to_double(o.out), r.out), 1e-5) << dim;
    EXPECT_LE(rel_error(to_double(o.lse), r.lse), 1e-5) << dim;
    for (float x : o.dq) ASSERT_TRUE(std::isfinite(x)) << dim;
    for (float x : o.dk) ASSERT_TRUE(std::isfinite(x)) << dim;
    for (float x : o.dv) ASSERT_TRUE(std::isfinite(x)) << dim;
  }
}

// The same inputs give the same bits, run after run.
void expect_deterministic(RunAttention run, const Case& c, uint64_t seed) {
  const AttentionShape s = shape_of(c);
  const Inputs in(s, seed);
  const Outputs first = run(s, in);
  for (int rep = 0; rep < 2; ++rep) expect_bitwise(first, run(s, in), describe(c));
}

Outputs run_fp32(const AttentionShape& s, const Inputs& in) {
  return run_gpu(s, in);
}

TEST(CudaAttention, DocumentsAreIndependent) {
  REQUIRE_GPU();
  expect_documents_independent(run_fp32, {16, 64}, 6000, 99);
}

TEST(CudaAttention, DeterministicAcrossRuns) {
  REQUIRE_GPU();
  expect_deterministic(run_fp32, Case{offsets_of(kUnevenLens), 8, 2, 128}, 7000);
}

// Shape errors are caught on the host before any device work, so this runs without a GPU.
TEST(CudaAttention, RejectsUnsupportedShapes) {
  cuda::AttentionArgs a;
  a.tokens = 9;
  a.q_heads = 4;
  a.kv_heads = 3;  // 4 q heads cannot share 3 kv heads
  a.head_dim = 8;
  a.n_docs = 2;
  a.max_doc_len = 5;
  a.scale = 0.5f;
  float dummy = 0.f;
  int32_t offs = 0;
  a.doc_offsets = &offs;  // never read: the shape is refused first
  testing::expect_error(
      [&] { cuda::attention_forward(nullptr, a, &dummy, &dummy, &dummy, &dummy, &dummy); },
      {"CUDA attention", "not a multiple"});
  a.kv_heads = 2;
  a.head_dim = 256;
  testing::expect_error(
      [&] { cuda::attention_forward(nullptr, a, &dummy, &dummy, &dummy, &dummy, &dummy); },
      {"head_dim 256"});
  a.head_dim = 8;
  a.max_doc_len = 0;
  testing::expect_error(
      [&] {
        cuda::attention_backward(nullptr, a, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy,
                                 &dummy, &dummy, &dummy);
      },
      {"max_doc_len"});
  // No tokens: nothing to do, nothing launched.
  a.tokens = 0;
  a.n_docs = 0;
  a.max_doc_len = 0;
  EXPECT_EQ(cuda::attention_workspace_bytes(a), 0u);
  cuda::attention_forward(nullptr, a, nullptr, nullptr, nullptr, nullptr, nullptr);
}

// ---- bf16 tensor-core path (cuda/attention_bf16.cu) ----

// fp32 -> bf16 bits, round to nearest even (what __float2bfloat16_rn does); NaN stays NaN.
uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float bf16_value(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bf16_bits(x[i]);
  return out;
}

std::vector<float> from_bf16(const std::vector<uint16_t>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bf16_value(x[i]);
  return out;
}

// The inputs the bf16 kernels actually see, as floats: what the reference must be fed.
Inputs rounded_to_bf16(const Inputs& in) {
  Inputs r = in;
  for (std::vector<float>* v : {&r.q, &r.k, &r.v, &r.dout}) *v = from_bf16(to_bf16(*v));
  return r;
}

const __nv_bfloat16* bf(const uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}
__nv_bfloat16* bf(uint16_t* p) {
  return reinterpret_cast<__nv_bfloat16*>(p);
}

// The test-side convenience entry of the bf16 path: fp32 host tensors in (rounded to bf16 on the
// way up, exactly as __float2bfloat16_rn would on the device), bf16 kernels, fp32 host tensors
// out. forward() and backward() poison their outputs with NaN first (0xffff is a bf16 NaN).
class GpuAttentionBf16 {
 public:
  GpuAttentionBf16(const AttentionShape& s, const Inputs& in)
      : offs_(std::vector<int32_t>(s.doc_offsets, s.doc_offsets + s.n_docs + 1)),
        q_(to_bf16(in.q)),
        k_(to_bf16(in.k)),
        v_(to_bf16(in.v)),
        dout_(to_bf16(in.dout)),
        out_(in.q.size()),
        lse_(size_t(s.tokens * s.q_heads)),
        dq_(in.q.size()),
        dk_(in.k.size()),
        dv_(in.v.size()) {
    a_ = args_of(s, offs_.get());
    ws_bytes_ = cuda::attention_bf16_workspace_bytes(a_);
    EXPECT_GE(ws_bytes_, size_t(s.tokens * s.q_heads) * sizeof(float));
    ws_ = std::make_unique<Dev<unsigned char>>(ws_bytes_);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~GpuAttentionBf16() { cudaStreamDestroy(stream_); }

  void forward() {
    out_.poison(stream_);
    lse_.poison(stream_);
    cuda::attention_forward_bf16(stream_, a_, bf(q_.get()), bf(k_.get()), bf(v_.get()),
                                 bf(out_.get()), lse_.get());
    cuda_check(cudaStreamSynchronize(stream_), "bf16 forward");
  }
  void backward() {
    dq_.poison(stream_);
    dk_.poison(stream_);
    dv_.poison(stream_);
    ws_->poison(stream_);
    cuda::attention_backward_bf16(stream_, a_, bf(dout_.get()), bf(q_.get()), bf(k_.get()),
                                  bf(v_.get()), bf(out_.get()), lse_.get(), bf(dq_.get()),
                                  bf(dk_.get()), bf(dv_.get()), ws_->get());
    cuda_check(cudaStreamSynchronize(stream_), "bf16 backward");
  }
  Outputs download() const {
    return {from_bf16(out_.download()), lse_.download(), from_bf16(dq_.download()),
            from_bf16(dk_.download()), from_bf16(dv_.download())};
  }

 private:
  cuda::AttentionArgs a_;
  Dev<int32_t> offs_;
  Dev<uint16_t> q_, k_, v_, dout_, out_;
  Dev<float> lse_;
  Dev<uint16_t> dq_, dk_, dv_;
  std::unique_ptr<Dev<unsigned char>> ws_;
  size_t ws_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

Outputs run_gpu_bf16(const AttentionShape& s, const Inputs& in) {
  GpuAttentionBf16 g(s, in);
  g.forward();
  g.backward();
  return g.download();
}

void expect_all_finite(const Outputs& o, const std::string& what) {
  const std::pair<const char*, const std::vector<float>*> all[] = {
      {"out", &o.out}, {"lse", &o.lse}, {"dq", &o.dq}, {"dk", &o.dk}, {"dv", &o.dv}};
  for (const auto& [name, v] : all) {
    size_t bad = 0;
    for (float x : *v) bad += !std::isfinite(x);
    EXPECT_EQ(bad, 0u) << name << " has non-finite (unwritten?) elements, " << what;
  }
}

// bf16 outputs against the double reference on the same bf16 inputs.
void expect_bf16_matches(const Outputs& o, const Reference& r, const std::string& what) {
  expect_all_finite(o, what);
  EXPECT_LE(rel_error(to_double(o.out), r.out), 1e-2) << "out " << what;
  EXPECT_LE(rel_error(to_double(o.lse), r.lse), 1e-3) << "lse " << what;
  EXPECT_LE(rel_error(to_double(o.dq), r.dq), 1e-2) << "dq " << what;
  EXPECT_LE(rel_error(to_double(o.dk), r.dk), 1e-2) << "dk " << what;
  EXPECT_LE(rel_error(to_double(o.dv), r.dv), 1e-2) << "dv " << what;
}

// Around the 16-row warp, 32- and 64-row tile edges; one-token and empty documents.
const std::vector<int32_t> kBf16Lens = {1, 2, 0, 7, 17, 31, 63, 64, 65, 130, 257};

TEST(CudaAttentionBf16, MatchesReferenceOverDocumentsGroupsAndHeadDims) {
  REQUIRE_GPU();
  uint64_t seed = 11000;
  for (int dim : {64, 128}) {
    for (int hkv : {8, 4, 2, 1}) {  // GQA ratios 1, 2, 4, 8
      const Case c{offsets_of(kBf16Lens), 8, hkv, dim};
      const AttentionShape s = shape_of(c);
      const Inputs in(s, seed += 10);
      GpuAttentionBf16 g(s, in);
      g.forward();
      g.backward();
      const Outputs first = g.download();
      expect_bf16_matches(first, reference(s, rounded_to_bf16(in)), describe(c));
      g.forward();  // again on the same inputs: bit for bit the same
      g.backward();
      expect_bitwise(first, g.download(), "bf16 rerun " + describe(c));
    }
  }
}

TEST(CudaAttentionBf16, SingleLongDocuments) {
  REQUIRE_GPU();
  // Lengths that are not multiples of any tile; many key tiles per query tile.
  const Case cases[] = {{{0, 1000}, 8, 2, 128}, {{0, 777}, 4, 4, 64}, {{0, 600}, 8, 1, 64}};
  uint64_t seed = 12000;
  for (const Case& c : cases) {
    const AttentionShape s = shape_of(c);
    const Inputs in(s, seed += 10);
    expect_bf16_matches(run_gpu_bf16(s, in), reference(s, rounded_to_bf16(in)), describe(c));
  }
}

TEST(CudaAttentionBf16, MoreDocumentsThanOneGridDimension) {
  REQUIRE_GPU();
  // 70,000 documents of 1..3 tokens: past the 65,535 blocks of a grid's z dimension.
  std::vector<int32_t> lens(70000);
  for (size_t i = 0; i < lens.size(); ++i) lens[i] = int32_t(1 + i % 3);
  const Case c{offsets_of(lens), 2, 1, 64};
  const AttentionShape s = shape_of(c);
  const Inputs in(s, 13000);
  expect_bf16_matches(run_gpu_bf16(s, in), reference(s, rounded_to_bf16(in)), describe(c));
}

TEST(CudaAttentionBf16, LargeScoresStayFinite) {
  REQUIRE_GPU();
  // Scores of several hundred: a softmax without the max shift would overflow.
  for (int dim : {64, 128}) {
    const Case c{{0, 40, 90, 200}, 4, 2, dim};
    const AttentionShape s = shape_of(c);
    Inputs in(s, 14000 + dim);
    for (float& x : in.q) x *= 30.f;
    const Outputs o = run_gpu_bf16(s, in);
    const Reference r = reference(s, rounded_to_bf16(in));
    expect_all_finite(o, describe(c));
    EXPECT_LE(rel_error(to_double(o.out), r.out), 1e-2) << dim;
    EXPECT_LE(rel_error(to_double(o.lse), r.lse), 1e-3) << dim;
  }
}

TEST(CudaAttentionBf16, SameLseConventionAsFp32Path) {
  REQUIRE_GPU();
  // The fp32 path on the bf16-rounded inputs: the same lse (natural log-sum-exp of the scaled
  // scores, fp32, [N, Hq]) and nearly the same output, so the two paths can be mixed.
  for (int dim : {64, 128}) {
    const Case c{{0, 33, 100, 229}, 4, 2, dim};
    const AttentionShape s = shape_of(c);
    const Inputs in = rounded_to_bf16(Inputs(s, 15000 + dim));
    const Outputs b = run_gpu_bf16(s, in), f = run_gpu(s, in);
    expect_all_finite(b, describe(c));
    EXPECT_LE(testing::rel_error(b.lse, f.lse), 1e-4) << describe(c);
    EXPECT_LE(testing::rel_error(b.out, f.out), 1e-2) << describe(c);
  }
}

TEST(CudaAttentionBf16, DocumentsAreIndependent) {
  REQUIRE_GPU();
  expect_documents_independent(run_gpu_bf16, {64, 128}, 16000, 98);
}

TEST(CudaAttentionBf16, DeterministicAcrossRuns) {
  REQUIRE_GPU();
  expect_deterministic(run_gpu_bf16, Case{offsets_of(kBf16Lens), 8, 2, 128}, 17000);
}

// Shape and pointer errors are caught on the host before any device work: runs without a GPU.
TEST(CudaAttentionBf16, RejectsUnsupportedShapesAndPointers) {
  cuda::AttentionArgs a;
  a.tokens = 9;
  a.q_heads = 4;
  a.kv_heads = 2;
  a.head_dim = 96;  // only 64 and 128
  a.n_docs = 2;
  a.max_doc_len = 5;
  a.scale = 0.5f;
  int32_t offs = 0;
  a.doc_offsets = &offs;  // never read: the call is refused first
  alignas(16) uint16_t buf[64] = {};
  alignas(16) float lse[8] = {};
  auto fwd = [&](const uint16_t* x) {
    cuda::attention_forward_bf16(nullptr, a, bf(x), bf(buf), bf(buf), bf(buf), lse);
  };
  testing::expect_error([&] { fwd(buf); }, {"CUDA attention (bf16)", "head_dim 96"});
  a.head_dim = 64;
  a.kv_heads = 3;
  testing::expect_error([&] { fwd(buf); }, {"not a multiple"});
  a.kv_heads = 2;
  testing::expect_error([&] { fwd(buf + 1); }, {"16-byte aligned"});  // 2 bytes off
  testing::expect_error(
      [&] {
        cuda::attention_backward_bf16(nullptr, a, bf(buf), bf(buf), bf(buf), bf(buf), bf(buf), lse,
                                      bf(buf), bf(buf), bf(buf), nullptr);
      },
      {"workspace"});
  a.max_doc_len = 0;
  testing::expect_error([&] { fwd(buf); }, {"max_doc_len"});
  // No tokens: nothing to do, nothing launched, no pointer looked at.
  a.tokens = 0;
  a.n_docs = 0;
  EXPECT_EQ(cuda::attention_bf16_workspace_bytes(a), 0u);
  cuda::attention_forward_bf16(nullptr, a, nullptr, nullptr, nullptr, nullptr, nullptr);
  cuda::attention_backward_bf16(nullptr, a, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                nullptr, nullptr, nullptr, nullptr);
}
#else
TEST(CudaAttention, NotBuilt) {
  GTEST_SKIP() << "built without CUDA";
}
TEST(CudaAttentionBf16, NotBuilt) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace ftune
