// Shared helpers for the test executables.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ftune::testing {

// ||a-b|| / ||b|| (returns ||a|| when b is all zeros).
double rel_error(const float* a, const float* b, size_t n);
double rel_error(const std::vector<float>& a, const std::vector<float>& b);
double rel_error(const std::vector<double>& a, const std::vector<double>& b);
// Uniform values in [lo, hi), seeded.
std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f);
// A fresh empty directory under the system temp dir, removed by the caller if it wants.
std::string make_temp_dir(const std::string& tag);
// Runs a shell command; returns exit code, captures stdout+stderr into *output.
int run_command(const std::string& cmd, std::string* output);
std::string fixtures_dir();
std::string ftune_binary();

}  // namespace ftune::testing
