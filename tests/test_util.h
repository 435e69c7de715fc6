// Shared helpers for the test executables.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"

namespace ftune::testing {

// Runs f and requires an ftune::Error whose message contains every needle.
template <class F>
void expect_error(F f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected ftune::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

// A tiny Llama with every optional piece on (GQA, q/k/v/o and MLP biases, llama3 RoPE scaling),
// head tied or not: hidden 12, 2 layers, 4 heads / 2 KV heads of dim 4, vocab 23.
ModelConfig tiny_model_config(bool tied);
// Two rows of 7 tokens for it; row 0 holds two documents (positions restart), row 1 one, and one
// target is ignored.
Batch tiny_packed_batch();

// fp32 unit roundoff. An fp32 sum of K terms, in any order, is within K * u * sum|terms| of the
// exact sum (Higham's gamma_K to first order): tolerances between two fp32 code paths (another
// chunking, thread count or OpenBLAS core) are built from it.
inline constexpr double kF32Unit = 0x1p-24;

// ||a-b|| / ||b|| (returns ||a|| when b is all zeros).
double rel_error(const float* a, const float* b, size_t n);
double rel_error(const std::vector<float>& a, const std::vector<float>& b);
double rel_error(const std::vector<double>& a, const std::vector<double>& b);
// Uniform values in [lo, hi), seeded.
std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f);
std::vector<int32_t> random_ids(size_t n, int32_t vocab, uint64_t seed);
std::vector<double> to_double(const std::vector<float>& v);
double dot(const std::vector<double>& a, const std::vector<double>& b);
bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b);
// n quiet NaNs: poisons an output buffer, so an element an op leaves unwritten shows.
std::vector<float> nan_vec(size_t n);
// A backend buffer holding v, and a buffer's contents back on the host.
template <class T>
DeviceBuffer<T> put(Backend* be, const std::vector<T>& v) {
  DeviceBuffer<T> b(be, v.size());
  if (!v.empty()) be->upload(b.get(), v.data(), v.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> get(Backend* be, const DeviceBuffer<T>& b) {
  std::vector<T> v(b.size());
  if (!v.empty()) be->download(v.data(), b.get(), v.size() * sizeof(T));
  return v;
}
// Central differences (h = 1e-6) of loss() with respect to every element of p, which loss()
// reads; p is restored afterwards. For references computed in double.
std::vector<double> numeric_grad(std::vector<double>& p, const std::function<double()>& loss);
// A fresh empty directory under the system temp dir, removed when the test process exits normally
// (kept after a crash, or with FTUNE_KEEP_TEST_DIRS=1).
std::string make_temp_dir(const std::string& tag);
// Runs a shell command; returns exit code, captures stdout+stderr into *output.
int run_command(const std::string& cmd, std::string* output);
// The ftune binary run with `args` (a shell word list): exit code and stdout+stderr.
struct CliRun {
  int code;
  std::string out;
};
// Runs the ftune binary with `args` (a shell command line); `env` ("A=1 B=2") is set for it.
CliRun ftune(const std::string& args, const std::string& env = "");
std::string fixtures_dir();
std::string ftune_binary();

}  // namespace ftune::testing
