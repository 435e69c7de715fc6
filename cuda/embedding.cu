// Embedding lookup and its deterministic backward for the CUDA backend.
//
// Backward without float atomics: token indices are stably radix-sorted by id (CUB), so equal
// ids form runs that keep token order. One block per (run head, column slice) then adds the run's
// gradient rows to the table row in token order, starting from the table's value: each table
// element receives exactly the CPU backend's sequence of float additions, on every run.
#include <climits>
#include <cub/device/device_radix_sort.cuh>

#include "cuda/cuda_ops.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr unsigned kBlock = 256;
constexpr unsigned kColsPerBlock = 256;

template <class T>
__global__ void gather_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                              T* __restrict__ out, int64_t n, int64_t dim) {
  const int64_t total = n * dim;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / dim, c = t - i * dim;
    out[t] = table[int64_t(ids[i]) * dim + c];
  }
}

__global__ void iota_kernel(int32_t* __restrict__ v, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    v[i] = int32_t(i);
}

// Block (i, slice): if sorted position i starts a run of equal ids, adds the run's rows of dout
// (tokens in ascending order) to that table row over the slice's columns.
template <class T>
__global__ void __launch_bounds__(kColsPerBlock)
    accumulate_runs_kernel(const uint32_t* __restrict__ keys, const int32_t* __restrict__ tokens,
                           const T* __restrict__ dout, T* __restrict__ dtable, int64_t n,
                           int64_t dim) {
  const int64_t i = blockIdx.x;
  const uint32_t id = keys[i];
  if (i > 0 && keys[i - 1] == id) return;  // not the head of its run
  const int64_t c = int64_t(blockIdx.y) * kColsPerBlock + threadIdx.x;
  if (c >= dim) return;
  T* dst = dtable + int64_t(id) * dim + c;
  T acc = *dst;
  for (int64_t j = i; j < n && keys[j] == id; ++j) acc = acc + dout[int64_t(tokens[j]) * dim + c];
  *dst = acc;
}

int key_bits(int64_t vocab) {
  int bits = 1;
  while (bits < 32 && (int64_t(1) << bits) < vocab) ++bits;
  return bits;
}

size_t align256(size_t b) {
  return (b + 255) / 256 * 256;
}

// Scratch layout: sorted keys | token indices | sorted token indices | CUB temp storage.
struct SortScratch {
  size_t keys_out = 0, vals_in = 0, vals_out = 0, temp = 0, temp_bytes = 0, total = 0;
};

SortScratch sort_scratch(int64_t n, int64_t vocab) {
  SortScratch s;
  size_t temp = 0;
  FTUNE_CUDA(cub::DeviceRadixSort::SortPairs(
                 nullptr, temp, static_cast<const uint32_t*>(nullptr),
                 static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                 static_cast<int32_t*>(nullptr), int(n), 0, key_bits(vocab)),
             "embedding_backward");
  const size_t v = align256(size_t(n) * 4);
  s.keys_out = 0;
  s.vals_in = v;
  s.vals_out = 2 * v;
  s.temp = 3 * v;
  s.temp_bytes = temp;
  s.total = 3 * v + align256(temp);
  return s;
}

}  // namespace

void embedding_forward(cudaStream_t s, const int32_t* ids, const float* table, float* out,
                       int64_t n, int64_t dim) {
  if (n <= 0 || dim <= 0) return;
  gather_kernel<float>
      <<<grid_for(size_t(n * dim), kBlock), kBlock, 0, s>>>(ids, table, out, n, dim);
  check_launch("gather_kernel", "embedding_forward");
}

size_t embedding_backward_scratch_bytes(int64_t n, int64_t vocab) {
  if (n <= 0) return 0;
  FTUNE_CHECK(n <= INT_MAX, "embedding_backward: more than INT_MAX tokens");
  return sort_scratch(n, vocab).total;
}

void embedding_backward(cudaStream_t s, const int32_t* ids, const float* dout, float* dtable,
                        int64_t n, int64_t dim, int64_t vocab, void* scratch, size_t bytes) {
  if (n <= 0 || dim <= 0) return;
  const SortScratch ss = sort_scratch(n, vocab);
  FTUNE_CHECK(bytes >= ss.total, "embedding_backward: scratch too small");
  auto* base = static_cast<unsigned char*>(scratch);
  auto* keys_out = reinterpret_cast<uint32_t*>(base + ss.keys_out);
  auto* vals_in = reinterpret_cast<int32_t*>(base + ss.vals_in);
  auto* vals_out = reinterpret_cast<int32_t*>(base + ss.vals_out);
  iota_kernel<<<grid_for(size_t(n), kBlock), kBlock, 0, s>>>(vals_in, n);
  check_launch("iota_kernel", "embedding_backward");
  size_t temp = ss.temp_bytes;
  // ids were validated to lie in [0, vocab), so as unsigned keys they sort the same; radix sort
  // is stable, so equal ids keep ascending token order.
  FTUNE_CUDA(
      cub::DeviceRadixSort::SortPairs(base + ss.temp, temp, reinterpret_cast<const uint32_t*>(ids),
                                      keys_out, vals_in, vals_out, int(n), 0, key_bits(vocab), s),
      "embedding_backward");
  const dim3 grid(unsigned(n), unsigned((dim + kColsPerBlock - 1) / kColsPerBlock));
  FTUNE_CHECK(grid.y <= 65535u, "embedding_backward: embedding dimension too large");
  accumulate_runs_kernel<float>
      <<<grid, kColsPerBlock, 0, s>>>(keys_out, vals_out, dout, dtable, n, dim);
  check_launch("accumulate_runs_kernel", "embedding_backward");
}

}  // namespace ftune::cuda
