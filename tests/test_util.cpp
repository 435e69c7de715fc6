#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <stdexcept>

namespace ftune::testing {

double rel_error(const float* a, const float* b, size_t n) {
  double num = 0, den = 0, an = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
    an += double(a[i]) * double(a[i]);
  }
  if (std::isnan(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(an);
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  return rel_error(a.data(), b.data(), a.size());
}

double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0, an = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
    an += a[i] * a[i];
  }
  if (std::isnan(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(an);
}

std::vector<float> random_vec(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> random_ids(size_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = dist(rng);
  return ids;
}

std::vector<double> to_double(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

std::vector<float> nan_vec(size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<double> numeric_grad(std::vector<double>& p, const std::function<double()>& loss) {
  const double h = 1e-6;
  std::vector<double> g(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    const double orig = p[i];
    p[i] = orig + h;
    const double up = loss();
    p[i] = orig - h;
    const double down = loss();
    p[i] = orig;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

namespace {

// Every directory make_temp_dir made, removed when the test process exits normally (a crash
// leaves them for a look, as does FTUNE_KEEP_TEST_DIRS=1). Only the process that made them
// removes them: a forked child exiting must not take its parent's directories along.
struct TempDirs {
  pid_t owner = getpid();
  std::vector<std::string> dirs;
  ~TempDirs() {
    const char* keep = std::getenv("FTUNE_KEEP_TEST_DIRS");
    if (getpid() != owner || (keep && *keep && std::string(keep) != "0")) return;
    for (const std::string& d : dirs) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);  // best effort: a busy mount point stays
    }
  }
};

TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}

}  // namespace

std::string make_temp_dir(const std::string& tag) {
  std::string templ =
      (std::filesystem::temp_directory_path() / ("ftune-" + tag + "-XXXXXX")).string();
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
  temp_dirs().dirs.push_back(templ);
  return templ;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  if (output) output->clear();
  while ((n = fread(buf, 1, sizeof buf, p)) > 0)
    if (output) output->append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

ModelConfig tiny_model_config(bool tied) {
  nlohmann::json j = {{"model_type", "llama"},
                      {"vocab_size", 23},
                      {"hidden_size", 12},
                      {"intermediate_size", 20},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 4},
                      {"max_position_embeddings", 64},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"rope_scaling",
                       {{"rope_type", "llama3"},
                        {"factor", 4.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8}}},
                      {"attention_bias", true},
                      {"mlp_bias", true},
                      {"tie_word_embeddings", tied},
                      {"initializer_range", 0.4}};
  return parse_model_config(j, "tiny");
}

Batch tiny_packed_batch() {
  Batch b;
  b.rows = 2;
  b.seq = 7;
  std::mt19937 rng(3);
  for (int i = 0; i < 14; ++i) b.ids.push_back(int32_t(rng() % 23));
  for (int i = 0; i < 14; ++i) b.targets.push_back(int32_t(rng() % 23));
  b.targets[5] = kIgnoreIndex;
  b.positions = {0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6};
  b.doc_offsets = {0, 3, 7, 14};
  return b;
}

CliRun ftune(const std::string& args, const std::string& env) {
  CliRun r;
  r.code =
      run_command((env.empty() ? "" : "env " + env + " ") + ftune_binary() + " " + args, &r.out);
  return r;
}

std::string fixtures_dir() {
  return FTUNE_TEST_FIXTURES;
}
std::string ftune_binary() {
  return FTUNE_BINARY;
}

}  // namespace ftune::testing
