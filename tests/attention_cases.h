// Attention test cases both backends' tests use (test_cpu_attention.cpp, test_cuda_attention.cpp):
// a shape from document lengths and head counts, its random inputs and the outputs compared.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "tests/test_util.h"

namespace ftune::testing {

struct Case {
  std::vector<int32_t> offsets;
  int hq, hkv, dim;
};

inline std::vector<int32_t> offsets_of(const std::vector<int32_t>& lens) {
  std::vector<int32_t> o{0};
  for (int32_t l : lens) o.push_back(o.back() + l);
  return o;
}

inline AttentionShape shape_of(const Case& c) {
  AttentionShape s;
  s.tokens = c.offsets.back();
  s.q_heads = c.hq;
  s.kv_heads = c.hkv;
  s.head_dim = c.dim;
  s.doc_offsets = c.offsets.data();
  s.n_docs = int(c.offsets.size()) - 1;
  s.scale = 1.f / std::sqrt(float(c.dim));
  return s;
}

inline std::string describe(const Case& c) {
  return "N=" + std::to_string(c.offsets.back()) + " docs=" + std::to_string(c.offsets.size() - 1) +
         " Hq=" + std::to_string(c.hq) + " Hkv=" + std::to_string(c.hkv) +
         " D=" + std::to_string(c.dim);
}

// q is spread wider than k so some softmax rows are peaked.
struct Inputs {
  std::vector<float> q, k, v, dout;
  Inputs(const AttentionShape& s, uint64_t seed)
      : q(random_vec(size_t(s.tokens * s.q_heads * s.head_dim), seed, -2.f, 2.f)),
        k(random_vec(size_t(s.tokens * s.kv_heads * s.head_dim), seed + 1)),
        v(random_vec(size_t(s.tokens * s.kv_heads * s.head_dim), seed + 2)),
        dout(random_vec(size_t(s.tokens * s.q_heads * s.head_dim), seed + 3)) {}
};

struct Outputs {
  std::vector<float> out, lse, dq, dk, dv;
};

}  // namespace ftune::testing
