// Attention alone on the GPU: forward and backward time and TFLOP/s of ftune's CUDA attention
// (cuda/attention.h: the fp32 SIMT path and the bf16 tensor-core path) on random inputs, causal,
// one document per sequence. Compare with bench/sdpa_attention.py (PyTorch SDPA) on the same
// card; bench/README.md explains both.
//
// Shapes: for every seq in --seqs, batch = --tokens / seq sequences (16k tokens: 1024 -> 16,
// 8192 -> 2), for every q:kv head pair in --heads and every head_dim in --head-dim.
// FLOPs (causal, the FlashAttention convention): forward = 4 * B * Hq * seq^2 * D / 2
// (QK^T and PV, half the score matrix), backward = 2.5 x forward (5 matmuls against 2).
// Times are medians over --iters iterations after --warmup untimed ones, by cudaEvent.
// Prints one JSON line per shape and dtype on stdout ("dtype":"fp32" or "bf16"; the bf16 path
// takes head dims 64 and 128 only, others are skipped for it); exits 1 on any CUDA error or
// non-finite output.
//   bench_cuda_attention [--seqs 1024,2048,4096,8192] [--heads 16:16,32:8] [--head-dim 128,64]
//                        [--dtypes fp32,bf16] [--tokens 16384] [--iters 10] [--warmup 2]
//                        [--device 0]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/attention.h"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(e));
  }
}

__device__ __forceinline__ void set_elem(float* x, float v) {
  *x = v;
}
__device__ __forceinline__ void set_elem(__nv_bfloat16* x, float v) {
  *x = __float2bfloat16_rn(v);
}
__device__ __forceinline__ float get_elem(const float* x) {
  return *x;
}
__device__ __forceinline__ float get_elem(const __nv_bfloat16* x) {
  return __bfloat162float(*x);
}

// Deterministic uniform values in [-1, 1) from a hash of (seed, index).
template <class T>
__global__ void fill_uniform(T* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = (uint32_t(i) * 0x9E3779B9u) ^ (uint32_t(i >> 32) * 0x85EBCA6Bu) ^ seed;
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    set_elem(x + i, float(h >> 8) * (2.f / 16777216.f) - 1.f);
  }
}

template <class T>
__global__ void count_nonfinite(const T* x, int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (!isfinite(get_elem(x + i))) ++local;
  }
  if (local) atomicAdd(count, local);
}

constexpr unsigned kFillBlocks = 1024, kFillThreads = 256;

class DevBuf {
 public:
  explicit DevBuf(size_t bytes) { check(cudaMalloc(&p_, bytes ? bytes : 1), "cudaMalloc"); }
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

class Event {
 public:
  Event() { check(cudaEventCreate(&e_), "cudaEventCreate"); }
  ~Event() { cudaEventDestroy(e_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(sep, start);
    const std::string part = s.substr(start, end == std::string::npos ? std::string::npos
                                                                       : end - start);
    if (!part.empty()) out.push_back(part);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

int to_int(const std::string& s, const char* flag) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v <= 0 || v > (1L << 30)) {
    throw std::invalid_argument(std::string(flag) + ": expected a positive integer, got '" + s +
                                "'");
  }
  return int(v);
}

std::vector<int> int_list(const std::string& s, const char* flag) {
  std::vector<int> out;
  for (const auto& p : split(s, ',')) out.push_back(to_int(p, flag));
  if (out.empty()) throw std::invalid_argument(std::string(flag) + ": empty list");
  return out;
}

struct Options {
  std::vector<int> seqs{1024, 2048, 4096, 8192};
  std::vector<std::pair<int, int>> heads{{16, 16}, {32, 8}};
  std::vector<int> head_dims{128, 64};
  std::vector<std::string> dtypes{"fp32", "bf16"};
  int tokens = 16384;
  int iters = 10;
  int warmup = 2;
  int device = 0;
};

const char* kUsage =
    "usage: bench_cuda_attention [--seqs 1024,2048,4096,8192] [--heads 16:16,32:8]\n"
    "                            [--head-dim 128,64] [--dtypes fp32,bf16] [--tokens 16384]\n"
    "                            [--iters 10] [--warmup 2] [--device 0]\n"
    "Causal attention of ftune (cuda/attention.h), fp32 SIMT and bf16 tensor cores: one JSON\n"
    "line per shape and dtype. batch = tokens / seq; --heads takes q_heads:kv_heads pairs;\n"
    "bf16 runs head dims 64 and 128 only.\n";

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(a + ": missing value (see --help)");
    const std::string v = argv[++i];
    if (a == "--seqs") {
      o.seqs = int_list(v, "--seqs");
    } else if (a == "--head-dim" || a == "--head-dims") {
      o.head_dims = int_list(v, "--head-dim");
    } else if (a == "--heads") {
      o.heads.clear();
      for (const auto& p : split(v, ',')) {
        const auto qk = split(p, ':');
        if (qk.size() != 2) throw std::invalid_argument("--heads: expected Q:KV, got '" + p + "'");
        o.heads.emplace_back(to_int(qk[0], "--heads"), to_int(qk[1], "--heads"));
      }
      if (o.heads.empty()) throw std::invalid_argument("--heads: empty list");
    } else if (a == "--dtypes" || a == "--dtype") {
      o.dtypes = split(v, ',');
      if (o.dtypes.empty()) throw std::invalid_argument("--dtypes: empty list");
      for (const auto& d : o.dtypes) {
        if (d != "fp32" && d != "bf16") {
          throw std::invalid_argument("--dtypes: expected fp32 or bf16, got '" + d + "'");
        }
      }
    } else if (a == "--tokens") {
      o.tokens = to_int(v, "--tokens");
    } else if (a == "--iters") {
      o.iters = to_int(v, "--iters");
    } else if (a == "--warmup") {
      o.warmup = v == "0" ? 0 : to_int(v, "--warmup");
    } else if (a == "--device") {
      o.device = v == "0" ? 0 : to_int(v, "--device");
    } else {
      throw std::invalid_argument("unknown flag " + a + " (see --help)");
    }
  }
  return o;
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (double(v[n / 2 - 1]) + v[n / 2]);
}

// Median milliseconds of `iters` calls of fn, each timed by its own event pair, after `warmup`
// untimed calls.
template <class Fn>
double time_ms(cudaStream_t stream, int warmup, int iters, Fn fn) {
  for (int i = 0; i < warmup; ++i) fn();
  check(cudaStreamSynchronize(stream), "warm-up");
  std::vector<Event> ev(2 * size_t(iters));
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(ev[2 * i].get(), stream), "cudaEventRecord");
    fn();
    check(cudaEventRecord(ev[2 * i + 1].get(), stream), "cudaEventRecord");
  }
  check(cudaStreamSynchronize(stream), "timed iterations");
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) {
    check(cudaEventElapsedTime(&ms[i], ev[2 * i].get(), ev[2 * i + 1].get()),
          "cudaEventElapsedTime");
  }
  return median(ms);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

// The two paths behind one overload set: float tensors run the fp32 SIMT kernels, bf16 tensors
// the tensor-core ones (lse, Delta and accumulation are fp32 in both).
void attn_forward(cudaStream_t s, const ftune::cuda::AttentionArgs& a, const float* q,
                  const float* k, const float* v, float* out, float* lse) {
  ftune::cuda::attention_forward(s, a, q, k, v, out, lse);
}
void attn_forward(cudaStream_t s, const ftune::cuda::AttentionArgs& a, const __nv_bfloat16* q,
                  const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* out,
                  float* lse) {
  ftune::cuda::attention_forward_bf16(s, a, q, k, v, out, lse);
}
void attn_backward(cudaStream_t s, const ftune::cuda::AttentionArgs& a, const float* dout,
                   const float* q, const float* k, const float* v, const float* out,
                   const float* lse, float* dq, float* dk, float* dv, void* work) {
  ftune::cuda::attention_backward(s, a, dout, q, k, v, out, lse, dq, dk, dv, work);
}
void attn_backward(cudaStream_t s, const ftune::cuda::AttentionArgs& a,
                   const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k,
                   const __nv_bfloat16* v, const __nv_bfloat16* out, const float* lse,
                   __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, void* work) {
  ftune::cuda::attention_backward_bf16(s, a, dout, q, k, v, out, lse, dq, dk, dv, work);
}
size_t attn_workspace(const ftune::cuda::AttentionArgs& a, const float*) {
  return ftune::cuda::attention_workspace_bytes(a);
}
size_t attn_workspace(const ftune::cuda::AttentionArgs& a, const __nv_bfloat16*) {
  return ftune::cuda::attention_bf16_workspace_bytes(a);
}

// Runs one shape with element type T (float: the fp32 path, __nv_bfloat16: the bf16 path);
// returns false when an output was not finite.
template <class T>
bool bench_shape(cudaStream_t stream, const Options& o, const std::string& gpu, int seq, int hq,
                 int hkv, int dim) {
  constexpr bool kBf16 = sizeof(T) == 2;
  const char* dtype = kBf16 ? "bf16" : "fp32";
  const int batch = std::max(1, o.tokens / seq);
  const int64_t n = int64_t(batch) * seq;
  const int64_t nq = n * hq * dim, nkv = n * hkv * dim;

  std::vector<int32_t> offsets(size_t(batch) + 1);
  for (int b = 0; b <= batch; ++b) offsets[b] = int32_t(int64_t(b) * seq);
  DevBuf d_offsets(offsets.size() * sizeof(int32_t));
  check(cudaMemcpy(d_offsets.as<int32_t>(), offsets.data(), offsets.size() * sizeof(int32_t),
                   cudaMemcpyHostToDevice),
        "upload doc_offsets");

  ftune::cuda::AttentionArgs args;
  args.tokens = n;
  args.q_heads = hq;
  args.kv_heads = hkv;
  args.head_dim = dim;
  args.doc_offsets = d_offsets.as<int32_t>();
  args.n_docs = batch;
  args.max_doc_len = seq;
  args.scale = 1.f / std::sqrt(float(dim));

  const size_t fq = size_t(nq) * sizeof(T), fkv = size_t(nkv) * sizeof(T);
  DevBuf q(fq), k(fkv), v(fkv), out(fq), dout(fq), dq(fq), dk(fkv), dv(fkv);
  DevBuf lse(size_t(n) * hq * sizeof(float));
  DevBuf work(attn_workspace(args, static_cast<const T*>(nullptr)));
  DevBuf bad(sizeof(unsigned long long));

  const std::pair<T*, int64_t> inputs[] = {
      {q.as<T>(), nq}, {k.as<T>(), nkv}, {v.as<T>(), nkv}, {dout.as<T>(), nq}};
  uint32_t seed = 0x1234u;
  for (const auto& [ptr, count] : inputs) {
    fill_uniform<<<kFillBlocks, kFillThreads, 0, stream>>>(ptr, count, seed++ * 0x51ED27u);
    check(cudaGetLastError(), "fill kernel launch");
  }

  auto fwd = [&] {
    attn_forward(stream, args, q.as<T>(), k.as<T>(), v.as<T>(), out.as<T>(), lse.as<float>());
  };
  auto bwd = [&] {
    attn_backward(stream, args, dout.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(), out.as<T>(),
                  lse.as<float>(), dq.as<T>(), dk.as<T>(), dv.as<T>(), work.as<void>());
  };
  const double fwd_ms = time_ms(stream, o.warmup, o.iters, fwd);
  const double bwd_ms = time_ms(stream, o.warmup, o.iters, bwd);  // out/lse from the forward
  const double fwd_bwd_ms = time_ms(stream, o.warmup, o.iters, [&] {
    fwd();
    bwd();
  });

  check(cudaMemsetAsync(bad.as<void>(), 0, sizeof(unsigned long long), stream), "memset");
  const std::pair<const T*, int64_t> outputs[] = {
      {out.as<T>(), nq}, {dq.as<T>(), nq}, {dk.as<T>(), nkv}, {dv.as<T>(), nkv}};
  for (const auto& [ptr, count] : outputs) {
    count_nonfinite<<<kFillBlocks, kFillThreads, 0, stream>>>(ptr, count,
                                                              bad.as<unsigned long long>());
    check(cudaGetLastError(), "check kernel launch");
  }
  unsigned long long nonfinite = 0;
  check(cudaMemcpyAsync(&nonfinite, bad.as<void>(), sizeof nonfinite, cudaMemcpyDeviceToHost,
                        stream),
        "download check");
  check(cudaStreamSynchronize(stream), "finite check");

  const double fwd_flops = 4.0 * batch * hq * double(seq) * seq * dim / 2.0;
  const double bwd_flops = 2.5 * fwd_flops;
  auto tflops = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
  std::printf(
      "{\"impl\":\"ftune\",\"dtype\":\"%s\",\"backend\":\"%s\",\"seq\":%d,\"batch\":%d,"
      "\"q_heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"causal\":true,\"iters\":%d,"
      "\"fwd_ms\":%.4f,\"bwd_ms\":%.4f,\"fwd_bwd_ms\":%.4f,\"fwd_tflops\":%.3f,"
      "\"bwd_tflops\":%.3f,\"fwd_bwd_tflops\":%.3f,\"finite\":%s,\"gpu\":\"%s\"}\n",
      dtype, kBf16 ? "ftune-cuda-mma" : "ftune-cuda", seq, batch, hq, hkv, dim, o.iters, fwd_ms,
      bwd_ms, fwd_bwd_ms, tflops(fwd_flops, fwd_ms),
      tflops(bwd_flops, bwd_ms), tflops(fwd_flops + bwd_flops, fwd_bwd_ms),
      nonfinite ? "false" : "true", json_escape(gpu).c_str());
  std::fflush(stdout);
  if (nonfinite) {
    std::fprintf(stderr, "bench_cuda_attention: %llu non-finite %s outputs at seq %d, heads %d:%d, "
                 "head_dim %d\n", nonfinite, dtype, seq, hq, hkv, dim);
  }
  return nonfinite == 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_attention: %s\n", e.what());
    return 2;
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    // gpu-check counts a "[  SKIPPED ]" line as a skip (a failure there).
    std::printf("[  SKIPPED ] bench_cuda_attention: no CUDA device (%s)\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    return 0;
  }
  try {
    check(cudaSetDevice(o.device), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, o.device), "cudaGetDeviceProperties");
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    bool ok = true;
    for (int seq : o.seqs) {
      for (const auto& [hq, hkv] : o.heads) {
        for (int dim : o.head_dims) {
          for (const auto& dt : o.dtypes) {
            if (dt == "fp32") {
              ok = bench_shape<float>(stream, o, prop.name, seq, hq, hkv, dim) && ok;
            } else if (dim == 64 || dim == 128) {
              ok = bench_shape<__nv_bfloat16>(stream, o, prop.name, seq, hq, hkv, dim) && ok;
            } else {
              std::fprintf(stderr, "bench_cuda_attention: bf16 takes head_dim 64 or 128, not %d\n",
                           dim);
            }
          }
        }
      }
    }
    check(cudaStreamDestroy(stream), "cudaStreamDestroy");
    return ok ? 0 : 1;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bench_cuda_attention: %s\n", ex.what());
    return 1;
  }
}
