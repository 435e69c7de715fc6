// Attention test cases both backends' tests use (test_cpu_attention.cpp, test_cuda_attention.cpp):
// a shape from document lengths and head counts, its random inputs and the outputs compared.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
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

// Bodies every backend's attention test runs; `run` is the implementation under test.
using RunAttention = Outputs (*)(const AttentionShape&, const Inputs&);

// Replacing every input of one document changes that document's outputs and no other bit.
inline void expect_documents_independent(RunAttention run, std::initializer_list<int> dims,
                                         uint64_t seed, uint64_t noise_seed) {
  for (int dim : dims) {
    const Case c{{0, 70, 150, 171}, 4, 2, dim};
    const AttentionShape s = shape_of(c);
    const Inputs base(s, seed + uint64_t(dim));
    Inputs changed = base;
    // Replace every input of document 2 (tokens 70..149).
    const int64_t b = 70, e = 150;
    const size_t qrow = size_t(s.q_heads * s.head_dim), kvrow = size_t(s.kv_heads * s.head_dim);
    const std::vector<float> noise = random_vec(size_t(e - b) * qrow + 7, noise_seed, -3.f, 3.f);
    for (size_t i = 0; i < size_t(e - b) * qrow; ++i) {
      changed.q[b * qrow + i] = noise[i];
      changed.dout[b * qrow + i] = -noise[i];
    }
    for (size_t i = 0; i < size_t(e - b) * kvrow; ++i) {
      changed.k[b * kvrow + i] = noise[i] * 0.5f;
      changed.v[b * kvrow + i] = noise[i + 7];
    }
    const Outputs o1 = run(s, base), o2 = run(s, changed);
    auto same_outside = [&](const std::vector<float>& x, const std::vector<float>& y, size_t row,
                            const char* name) {
      bool any_inside_differs = false;
      for (int64_t t = 0; t < s.tokens; ++t) {
        for (size_t j = 0; j < row; ++j) {
          const size_t i = size_t(t) * row + j;
          if (t >= b && t < e) {
            any_inside_differs |= x[i] != y[i];
          } else {
            ASSERT_EQ(x[i], y[i]) << name << " token " << t << " D=" << dim;
          }
        }
      }
      EXPECT_TRUE(any_inside_differs) << name << " D=" << dim;
    };
    same_outside(o1.out, o2.out, qrow, "out");
    same_outside(o1.lse, o2.lse, size_t(s.q_heads), "lse");
    same_outside(o1.dq, o2.dq, qrow, "dq");
    same_outside(o1.dk, o2.dk, kvrow, "dk");
    same_outside(o1.dv, o2.dv, kvrow, "dv");
  }
}

}  // namespace ftune::testing
