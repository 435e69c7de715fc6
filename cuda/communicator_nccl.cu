// The NCCL communicator for GPU ranks (issue #6); the contract is in cuda/communicator_nccl.h.
//
// Loading: libnccl.so.2 is dlopen'ed on first use and every entry point below is resolved through
// dlsym, so neither ftune nor its tests link NCCL; nccl.h supplies only the types and signatures.
//
// Irregular parts: reduce_scatter_sum and all_gather_v take one count per rank, any of them 0.
// ncclReduceScatter / ncclAllGather need equal counts, so they serve only that case; otherwise
// one group holds, per rank r with a nonzero part, an ncclReduce to root r (reduce-scatter) or an
// ncclBroadcast from root r (all-gather). gather_to_root is ncclSend/ncclRecv to rank 0.
//
// Streams: every collective runs on the communicator's own stream, after an event that marks what
// the run's stream had enqueued by then. A blocking collective makes the run's stream wait for it
// (the old order, two event calls more); start_all_gather_v does not, and finish() adds that wait
// later, so a ZeRO-3 layer gathers while the previous one computes. One stream per communicator
// keeps NCCL's requirement that its operations are issued in one order.
//
// Hangs: the communicator is nonblocking (ncclConfig_t::blocking = 0), so init and enqueueing
// return at once and are polled against dist.timeout. Each collective is bracketed by two CUDA
// events; a watchdog thread starts its clock when the stream reaches the first and ends the
// process when the second has not completed dist.timeout later, or when NCCL reports an
// asynchronous error. It must be a thread: a hung collective blocks whichever call next waits for
// the stream, often inside the backend. The main thread never resumes after that (park()), so no
// rank writes anything from a half-finished step.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda/communicator_nccl.h"
#include "engine/base/error.h"

#if __has_include(<nccl.h>) && !defined(FTUNE_NO_NCCL_HEADER)
#include <nccl.h>
#define FTUNE_NCCL_HEADER 1
#else
#define FTUNE_NCCL_HEADER 0
#endif

namespace ftune {
namespace {

constexpr int kMinVersion = 21400;  // 2.14: nonblocking communicators

// Every NCCL function ftune calls; the library must have all of them.
#define FTUNE_NCCL_FUNCTIONS(X) \
  X(ncclGetVersion)             \
  X(ncclGetUniqueId)            \
  X(ncclCommInitRankConfig)     \
  X(ncclCommGetAsyncError)      \
  X(ncclCommFinalize)           \
  X(ncclCommDestroy)            \
  X(ncclCommAbort)              \
  X(ncclGetErrorString)         \
  X(ncclGetLastError)           \
  X(ncclAllReduce)              \
  X(ncclReduce)                 \
  X(ncclBroadcast)              \
  X(ncclReduceScatter)          \
  X(ncclAllGather)              \
  X(ncclSend)                   \
  X(ncclRecv)                   \
  X(ncclGroupStart)             \
  X(ncclGroupEnd)

#define FTUNE_NCCL_NAME(name) #name,
constexpr const char* kFunctions[] = {FTUNE_NCCL_FUNCTIONS(FTUNE_NCCL_NAME)};
#undef FTUNE_NCCL_NAME

std::string how_to_provide() {
  return "GPU ranks need NCCL 2.14 or newer: put the directory holding libnccl.so.2 on "
         "LD_LIBRARY_PATH, e.g. the pip wheel's site-packages/nvidia/nccl/lib (pip install "
         "nvidia-nccl-cu13; PyTorch brings it too), or set FTUNE_NCCL_LIBRARY to the library file";
}

struct Loaded {
  void* handle = nullptr;
  NcclLibrary info;
};

// Opens the first of `files` that loads and checks it; on any failure `info.error` says why and
// the handle is closed again.
Loaded load(const std::vector<std::string>& files) {
  Loaded out;
  std::string why;
  std::string file;
  for (const std::string& f : files) {
    (void)dlerror();
    out.handle = dlopen(f.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (out.handle) {
      file = f;
      break;
    }
    const char* e = dlerror();
    why += (why.empty() ? "" : "; ") + (e ? std::string(e) : f + ": cannot be loaded");
  }
  if (!out.handle) {
    out.info.error = "cannot load NCCL (" + why + "); " + how_to_provide();
    return out;
  }
  link_map* map = nullptr;
  out.info.path =
      dlinfo(out.handle, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name && map->l_name[0]
          ? map->l_name
          : file;
  auto fail = [&](const std::string& what) {
    out.info.error = out.info.path + " " + what + "; " + how_to_provide();
    dlclose(out.handle);
    out.handle = nullptr;
    return out;
  };
  auto get_version = reinterpret_cast<int (*)(int*)>(dlsym(out.handle, "ncclGetVersion"));
  int version = 0;
  if (!get_version || get_version(&version) != 0 || version <= 0)
    return fail("is not an NCCL library (ncclGetVersion is missing or fails)");
  out.info.version = version;
  if (version < kMinVersion) return fail("is NCCL " + nccl_version_text(version) + ", too old");
  for (const char* name : kFunctions)
    if (!dlsym(out.handle, name))
      return fail("(NCCL " + nccl_version_text(version) + ") lacks " + name);
  return out;
}

const Loaded& loaded() {
  static Loaded lib;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* file = std::getenv("FTUNE_NCCL_LIBRARY");
    lib = file && *file ? load({file}) : load({"libnccl.so.2", "libnccl.so"});
  });
  return lib;
}

}  // namespace

std::string nccl_version_text(int v) {
  // NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9, major*1000 + minor*100 + patch
  // before.
  const int major = v >= 10000 ? v / 10000 : v / 1000;
  const int minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

const NcclLibrary& nccl_library() {
  return loaded().info;
}

NcclLibrary probe_nccl_library(const std::string& file) {
  Loaded l = load({file});
  if (l.handle) dlclose(l.handle);
  return l.info;
}

int gpu_for_local_rank(int local_rank) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    throw Error(std::string("GPU ranks: no GPU is usable (") +
                (e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device") +
                "); train on the CPU with `device: cpu`");
  }
  return local_rank % n;
}

#if FTUNE_NCCL_HEADER
namespace {

constexpr int kMultiRankGpuVersion = 23000;  // 2.30: NCCL_MULTI_RANK_GPU_ENABLE

struct Api {
#define FTUNE_NCCL_POINTER(name) decltype(&::name) name = nullptr;
  FTUNE_NCCL_FUNCTIONS(FTUNE_NCCL_POINTER)
#undef FTUNE_NCCL_POINTER
};

const Api& api() {
  static Api a;
  static std::once_flag once;
  const Loaded& l = loaded();
  if (!l.handle) throw Error(l.info.error);
  std::call_once(once, [&] {
#define FTUNE_NCCL_RESOLVE(name) \
  a.name = reinterpret_cast<decltype(a.name)>(dlsym(l.handle, #name));
    FTUNE_NCCL_FUNCTIONS(FTUNE_NCCL_RESOLVE)
#undef FTUNE_NCCL_RESOLVE
  });
  return a;
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void check_cuda(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  throw Error(std::string("CUDA error in the NCCL communicator: ") + call +
              " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Makes the communicator's GPU current for a scope and gives the caller's back afterwards.
class DeviceScope {
 public:
  explicit DeviceScope(int device) : device_(device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != device_) check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceScope() {
    if (prev_ >= 0 && prev_ != device_) (void)cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int device_;
  int prev_ = -1;
};

// Start of part r in a buffer of parts laid out in rank order; one more entry holds the total.
std::vector<size_t> offsets(const std::vector<size_t>& counts) {
  std::vector<size_t> at(counts.size() + 1, 0);
  for (size_t r = 0; r < counts.size(); ++r) at[r + 1] = at[r] + counts[r];
  return at;
}

bool all_equal(const std::vector<size_t>& counts) {
  for (size_t c : counts)
    if (c != counts.front()) return false;
  return true;
}

[[noreturn]] void park() {
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const Api& nccl, const LaunchEnv& env, int device, cudaStream_t stream,
                   double timeout_s, std::unique_ptr<Communicator> host)
      : nccl_(nccl),
        rank_(env.rank),
        world_(env.world_size),
        device_(device),
        stream_(stream),
        timeout_(timeout_s),
        host_(std::move(host)) {}

  // Collective: creates the NCCL communicator, then starts the watchdog.
  void init(const ncclUniqueId& id) {
    DeviceScope scope(device_);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const Clock::time_point t0 = Clock::now();
    ncclResult_t state = nccl_.ncclCommInitRankConfig(&comm_, world_, id, rank_, &config);
    if (comm_ && (state == ncclSuccess || state == ncclInProgress)) {
      for (;;) {
        const ncclResult_t r = nccl_.ncclCommGetAsyncError(comm_, &state);
        if (r != ncclSuccess) state = r;
        if (state != ncclInProgress) break;
        if (timeout_ > 0 && seconds_since(t0) > timeout_)
          die(timed_out("init") + ", or rank " + std::to_string(rank_) +
              " cannot reach rank 0's bootstrap address");
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    if (!comm_ || state != ncclSuccess) {
      std::string msg = "NCCL init failed on rank " + std::to_string(rank_) + " of " +
                        std::to_string(world_) + " (GPU " + std::to_string(device_) +
                        "): " + describe(state);
      if (state == ncclInvalidUsage)
        msg +=
            "; if several ranks share a GPU, set NCCL_MULTI_RANK_GPU_ENABLE=1 (NCCL 2.30 or "
            "newer) or give each rank a GPU of its own";
      if (comm_) (void)nccl_.ncclCommAbort(comm_);
      comm_ = nullptr;
      throw Error(msg);
    }
    // Every collective runs on a stream of its own, ordered after the run's stream by events, so
    // one started early (start_all_gather_v) overlaps the run's kernels; one communicator, one
    // stream keeps NCCL's per-communicator order.
    check_cuda(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    reserve_host(64);
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    if (comm_) {
      (void)cudaSetDevice(device_);
      // Everything enqueued finishes first (still under the watchdog).
      cudaEvent_t last = nullptr;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!pending_.empty()) last = pending_.back().end;
      }
      if (last) (void)cudaEventSynchronize(last);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    if (comm_) {
      ncclResult_t state = nccl_.ncclCommFinalize(comm_);
      const Clock::time_point t0 = Clock::now();
      const double limit = timeout_ > 0 ? timeout_ : 60;
      while (state == ncclInProgress && seconds_since(t0) < limit) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        const ncclResult_t r = nccl_.ncclCommGetAsyncError(comm_, &state);
        if (r != ncclSuccess) state = r;
      }
      if (state == ncclSuccess)
        (void)nccl_.ncclCommDestroy(comm_);
      else
        (void)nccl_.ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    for (const Pending& p : pending_) free_.insert(free_.end(), {p.start, p.end});
    for (const auto& [handle, e] : started_) free_.push_back(e);
    for (cudaEvent_t e : free_) (void)cudaEventDestroy(e);
    if (comm_stream_) (void)cudaStreamDestroy(comm_stream_);
    if (dev_buf_) (void)cudaFree(dev_buf_);
    if (host_buf_) (void)cudaFreeHost(host_buf_);
    host_.reset();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  void all_reduce_sum(float* data, size_t n) override {
    if (n == 0) return;
    enqueue("all-reduce", [&] {
      check(nccl_.ncclAllReduce(data, data, n, ncclFloat32, ncclSum, comm_, comm_stream_),
            "all-reduce");
    });
  }

  void all_reduce_sum_host(double* data, size_t n) override {
    host_all_reduce(data, n, "all-reduce");
  }

  void barrier() override {
    double one = 1;
    host_all_reduce(&one, 1, "barrier");
  }

  void all_gather(float* data, size_t n) override {
    std::vector<size_t> counts;
    for (int r = 0; r < world_; ++r) counts.push_back(shard_range(n, r, world_).size());
    all_gather_v(data + shard_range(n, rank_, world_).begin, data, counts);
  }

  void gather_to_root(const float* shard, float* full, size_t n) override {
    if (n == 0) return;
    const char* op = "gather";
    if (rank_ == 0) {
      const ShardRange mine = shard_range(n, 0, world_);
      if (mine.size() && shard != full + mine.begin) {
        DeviceScope scope(device_);
        check_cuda(cudaMemcpyAsync(full + mine.begin, shard, mine.size() * sizeof(float),
                                   cudaMemcpyDeviceToDevice, stream_),
                   "cudaMemcpyAsync");
      }
    }
    enqueue(op, [&] {
      if (rank_ == 0) {
        for (int r = 1; r < world_; ++r) {
          const ShardRange s = shard_range(n, r, world_);
          if (s.size())
            check(nccl_.ncclRecv(full + s.begin, s.size(), ncclFloat32, r, comm_, comm_stream_),
                  op);
        }
      } else {
        const size_t count = shard_range(n, rank_, world_).size();
        if (count) check(nccl_.ncclSend(shard, count, ncclFloat32, 0, comm_, comm_stream_), op);
      }
    });
  }

  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) override {
    (void)reduce_scatter(in, out, counts, true);
  }

  void all_gather_v(const float* mine, float* out, const std::vector<size_t>& counts) override {
    (void)gather_v(mine, out, counts, true);
  }

  uint64_t start_all_gather_v(const float* mine, float* out,
                              const std::vector<size_t>& counts) override {
    return started(gather_v(mine, out, counts, false));
  }

  uint64_t start_reduce_scatter_sum_in_place(float* buf, const std::vector<size_t>& counts,
                                             size_t* result_at) override {
    // In place as NCCL defines it: this rank's part lands where its input part was (for
    // ncclReduceScatter recvbuff = sendbuff + rank * count; for the per-root ncclReduce the
    // root's send and receive buffers are the same).
    FTUNE_CHECK(counts.size() == size_t(world_), "one count per rank");
    const std::vector<size_t> at = offsets(counts);
    *result_at = at[size_t(rank_)];
    return started(reduce_scatter(buf, buf + at[size_t(rank_)], counts, false));
  }

  void finish(uint64_t handle) override {
    auto it = started_.find(handle);
    if (it == started_.end()) return;
    DeviceScope scope(device_);
    const cudaError_t e = cudaStreamWaitEvent(stream_, it->second, 0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(it->second);
    }
    started_.erase(it);
    check_cuda(e, "cudaStreamWaitEvent");
  }

  void use_stream(void* stream) override {
    // Blocking streams and the legacy default one order against each other, so work already
    // joined to the old stream stays ordered before what comes next.
    if (stream) stream_ = static_cast<cudaStream_t>(stream);
  }

  double busy_seconds() override {
    DeviceScope scope(device_);
    std::lock_guard<std::mutex> lock(mu_);
    // What has completed but the watchdog has not retired yet counts too.
    while (!pending_.empty() && cudaEventQuery(pending_.front().end) == cudaSuccess) retire_front();
    return busy_s_;
  }

  void abort(int code) override {
    if (world_ == 1) return;
    std::fflush(stdout);
    std::fflush(stderr);
    if (dying_.exchange(true)) park();
    end_process(code, true);
  }

 private:
  // A handle for a collective enqueued without joining (`end` null: nothing was enqueued). The
  // handle has an event of its own: the watchdog recycles the collective's once it completes.
  uint64_t started(cudaEvent_t end) {
    if (!end) return 0;
    DeviceScope scope(device_);
    const cudaEvent_t done = take_event();
    check_cuda(cudaEventRecord(done, comm_stream_), "cudaEventRecord");
    const uint64_t handle = ++last_handle_;
    started_.emplace(handle, done);
    return handle;
  }

  // reduce_scatter_sum enqueued; joined to the run's stream or not. Returns the event that
  // completes with it, or null when there was nothing to reduce.
  cudaEvent_t reduce_scatter(const float* in, float* out, const std::vector<size_t>& counts,
                             bool join) {
    FTUNE_CHECK(counts.size() == size_t(world_), "one count per rank");
    const std::vector<size_t> at = offsets(counts);
    if (at.back() == 0) return nullptr;
    const char* op = "reduce-scatter";
    return enqueue(
        op,
        [&] {
          if (all_equal(counts)) {
            check(nccl_.ncclReduceScatter(in, out, counts[0], ncclFloat32, ncclSum, comm_,
                                          comm_stream_),
                  op);
            return;
          }
          for (int r = 0; r < world_; ++r) {
            if (counts[size_t(r)] == 0) continue;
            // Root r receives the sum of part r; elsewhere the receive buffer is not used.
            const float* send = in + at[size_t(r)];
            void* recv = r == rank_ ? static_cast<void*>(out) : const_cast<float*>(send);
            check(nccl_.ncclReduce(send, recv, counts[size_t(r)], ncclFloat32, ncclSum, r, comm_,
                                   comm_stream_),
                  op);
          }
        },
        [] {}, join);
  }

  // all_gather_v enqueued; joined to the run's stream or not. Returns the event that completes
  // with it, or null when there was nothing to gather.
  cudaEvent_t gather_v(const float* mine, float* out, const std::vector<size_t>& counts,
                       bool join) {
    FTUNE_CHECK(counts.size() == size_t(world_), "one count per rank");
    const std::vector<size_t> at = offsets(counts);
    if (at.back() == 0) return nullptr;
    const char* op = "all-gather";
    return enqueue(
        op,
        [&] {
          if (all_equal(counts)) {
            check(nccl_.ncclAllGather(mine, out, counts[0], ncclFloat32, comm_, comm_stream_), op);
            return;
          }
          for (int r = 0; r < world_; ++r) {
            if (counts[size_t(r)] == 0) continue;
            // Root r sends its part; only the root's send buffer is read.
            float* recv = out + at[size_t(r)];
            const void* send = r == rank_ ? static_cast<const void*>(mine) : recv;
            check(nccl_.ncclBroadcast(send, recv, counts[size_t(r)], ncclFloat32, r, comm_,
                                      comm_stream_),
                  op);
          }
        },
        [] {}, join);
  }

  // The oldest collective, completed: its duration is added, its events go back to the pool
  // (mu_ held).
  void retire_front() {
    const Pending& p = pending_.front();
    float ms = 0;
    if (cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess)
      busy_s_ += double(ms) / 1e3;
    else
      (void)cudaGetLastError();
    free_.insert(free_.end(), {p.start, p.end});
    pending_.pop_front();
  }

  // One enqueued collective, between its two events.
  struct Pending {
    const char* op;
    cudaEvent_t start, end;
    bool started = false;
    Clock::time_point since{};
  };

  std::string describe(ncclResult_t r) const {
    std::string s = nccl_.ncclGetErrorString(r);
    const char* last = nccl_.ncclGetLastError(comm_);
    if (last && *last) s += std::string(" (") + last + ")";
    return s;
  }
  std::string timed_out(const char* op) const {
    char text[160];
    std::snprintf(text, sizeof text,
                  "NCCL %s did not finish within %.0f s (dist.timeout): another rank has died or "
                  "hangs",
                  op, timeout_);
    return text;
  }
  // ncclSuccess, and ncclInProgress (a nonblocking communicator still at work), go on.
  void check(ncclResult_t r, const char* op) const {
    if (r == ncclSuccess || r == ncclInProgress) return;
    throw Error(std::string("NCCL ") + op + " failed on rank " + std::to_string(rank_) + ": " +
                describe(r));
  }

  // Waits until NCCL has enqueued what the last call handed it.
  void settle(const char* op) {
    const Clock::time_point t0 = Clock::now();
    for (int spins = 0;; ++spins) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = nccl_.ncclCommGetAsyncError(comm_, &state);
      check(r, op);
      if (state == ncclSuccess) return;
      check(state, op);
      if (timeout_ > 0 && seconds_since(t0) > timeout_) die(timed_out(op));
      if (spins < 1000)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  cudaEvent_t take_event() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        cudaEvent_t e = free_.back();
        free_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    // Timing events: the watchdog adds each collective's duration to busy_seconds().
    check_cuda(cudaEventCreateWithFlags(&e, cudaEventDefault), "cudaEventCreate");
    return e;
  }

  // Enqueues one collective: `calls` (the NCCL calls, grouped) and then `after` (stream work that
  // belongs to it) between the two events, and hands it to the watchdog. Returns the event that
  // completes with it.
  // The collective's stream first waits for what the run's stream has enqueued so far, and (join)
  // the run's stream then waits for the collective.
  template <class Calls, class After>
  cudaEvent_t enqueue(const char* op, Calls&& calls, After&& after, bool join = true) {
    if (dying_) park();
    DeviceScope scope(device_);
    Pending p{op, take_event(), take_event()};
    try {
      {
        // A stream wait takes the event as last recorded, so it can go back to the pool at once.
        const cudaEvent_t ready = take_event();
        const cudaError_t rec = cudaEventRecord(ready, stream_);
        const cudaError_t wt =
            rec == cudaSuccess ? cudaStreamWaitEvent(comm_stream_, ready, 0) : rec;
        {
          std::lock_guard<std::mutex> lock(mu_);
          free_.push_back(ready);
        }
        check_cuda(wt, "cudaStreamWaitEvent");
      }
      check_cuda(cudaEventRecord(p.start, comm_stream_), "cudaEventRecord");
      check(nccl_.ncclGroupStart(), op);
      try {
        calls();
      } catch (...) {
        (void)nccl_.ncclGroupEnd();
        throw;
      }
      check(nccl_.ncclGroupEnd(), op);
      settle(op);
      after();
      check_cuda(cudaEventRecord(p.end, comm_stream_), "cudaEventRecord");
      if (join) check_cuda(cudaStreamWaitEvent(stream_, p.end, 0), "cudaStreamWaitEvent");
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      free_.insert(free_.end(), {p.start, p.end});
      throw;
    }
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(p);
    return p.end;
  }
  template <class Calls>
  cudaEvent_t enqueue(const char* op, Calls&& calls) {
    return enqueue(op, calls, [] {});
  }

  void wait(cudaEvent_t done) {
    const cudaError_t e = cudaEventSynchronize(done);
    if (dying_) park();
    check_cuda(e, "cudaEventSynchronize");
  }

  void reserve_host(size_t n) {
    if (n <= host_cap_) return;
    // Host collectives finish before they return, so nothing still uses the old buffers.
    if (dev_buf_) (void)cudaFree(dev_buf_);
    if (host_buf_) (void)cudaFreeHost(host_buf_);
    dev_buf_ = nullptr;
    host_buf_ = nullptr;
    host_cap_ = 0;
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&dev_buf_), n * sizeof(double)), "cudaMalloc");
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&host_buf_), n * sizeof(double)),
               "cudaMallocHost");
    host_cap_ = n;
  }

  void host_all_reduce(double* data, size_t n, const char* op) {
    if (n == 0) return;
    if (dying_) park();
    DeviceScope scope(device_);
    reserve_host(n);
    const size_t bytes = n * sizeof(double);
    std::memcpy(host_buf_, data, bytes);
    check_cuda(cudaMemcpyAsync(dev_buf_, host_buf_, bytes, cudaMemcpyHostToDevice, stream_),
               "cudaMemcpyAsync");
    const cudaEvent_t done = enqueue(
        op,
        [&] {
          check(
              nccl_.ncclAllReduce(dev_buf_, dev_buf_, n, ncclFloat64, ncclSum, comm_, comm_stream_),
              op);
        },
        [&] {
          check_cuda(
              cudaMemcpyAsync(host_buf_, dev_buf_, bytes, cudaMemcpyDeviceToHost, comm_stream_),
              "cudaMemcpyAsync");
        });
    wait(done);
    std::memcpy(data, host_buf_, bytes);
  }

  // The watchdog thread: retires finished collectives, times the oldest unfinished one from the
  // moment the stream reached it, and reads NCCL's asynchronous error.
  void watch() {
    (void)cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (stop_) break;
      while (!pending_.empty()) {
        Pending& p = pending_.front();
        if (!p.started) {
          if (cudaEventQuery(p.start) != cudaSuccess) break;
          p.started = true;
          p.since = Clock::now();
        }
        const cudaError_t q = cudaEventQuery(p.end);
        if (q == cudaSuccess) {
          retire_front();
          continue;
        }
        if (q == cudaErrorNotReady && timeout_ > 0 && seconds_since(p.since) > timeout_)
          die(timed_out(p.op));
        break;
      }
      ncclResult_t state = ncclSuccess;
      if (nccl_.ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess &&
          state != ncclInProgress)
        die(std::string("NCCL ") + (pending_.empty() ? "collective" : pending_.front().op) +
            " failed: " + describe(state));
    }
  }

  // Prints why, aborts the NCCL communicator and ends the process with code 3. Whoever comes
  // second waits for the end.
  [[noreturn]] void die(const std::string& why) {
    if (dying_.exchange(true)) park();
    std::fprintf(stderr, "ftune: error on rank %d: %s; ending the job\n", rank_, why.c_str());
    std::fflush(stderr);
    end_process(3, false);
  }
  [[noreturn]] void end_process(int code, bool through_host) {
    // ncclCommAbort returns at once as a rule; should it not, the process still ends.
    std::thread([code] {
      std::this_thread::sleep_for(std::chrono::seconds(10));
      _exit(code);
    }).detach();
    if (comm_) (void)nccl_.ncclCommAbort(comm_);
    if (through_host && host_) host_->abort(code);  // MPI_Abort: the launcher ends every rank
    _exit(code);
  }

  const Api& nccl_;
  const int rank_, world_, device_;
  cudaStream_t stream_;                 // the run's (the backend's) stream
  cudaStream_t comm_stream_ = nullptr;  // every collective's
  const double timeout_;
  std::unique_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  double* dev_buf_ = nullptr;
  double* host_buf_ = nullptr;  // pinned
  size_t host_cap_ = 0;

  std::mutex mu_;  // guards pending_, free_ and stop_
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  std::map<uint64_t, cudaEvent_t> started_;  // start_all_gather_v handle -> its event
  double busy_s_ = 0;                        // collectives' device time so far (mu_)
  uint64_t last_handle_ = 0;
  bool stop_ = false;
  std::atomic<bool> dying_{false};
  std::thread watchdog_;
};

std::string env_text(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

void check_unique_id(const Api& nccl, ncclResult_t r) {
  if (r == ncclSuccess) return;
  std::string msg = std::string("NCCL could not make its unique id: ") + nccl.ncclGetErrorString(r);
  const char* last = nccl.ncclGetLastError(nullptr);
  if (last && *last) msg += std::string(" (") + last + ")";
  if (std::getenv("NCCL_COMM_ID"))
    msg += "; NCCL_COMM_ID=" + env_text("NCCL_COMM_ID") + " must be host:port of rank 0";
  throw Error(msg);
}

}  // namespace
#endif  // FTUNE_NCCL_HEADER

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, double timeout_s,
                                                     void* stream,
                                                     std::unique_ptr<Communicator> host) {
#if FTUNE_NCCL_HEADER
  const Api& nccl = api();
  const NcclLibrary& lib = nccl_library();
  const std::string multi = env_text("NCCL_MULTI_RANK_GPU_ENABLE");
  if (!multi.empty() && multi != "0" && lib.version < kMultiRankGpuVersion)
    throw Error("NCCL_MULTI_RANK_GPU_ENABLE=" + multi + " (several ranks on one GPU) needs NCCL " +
                "2.30 or newer, but " + lib.path + " is NCCL " + nccl_version_text(lib.version) +
                ": put a newer one first on LD_LIBRARY_PATH (pip install -U nvidia-nccl-cu13) or " +
                "give each rank a GPU of its own");
  if (host && (host->rank() != env.rank || host->world_size() != env.world_size))
    throw Error("launch environment says rank " + std::to_string(env.rank) + " of " +
                std::to_string(env.world_size) + " but the host communicator says " +
                std::to_string(host->rank()) + " of " + std::to_string(host->world_size()));
  // Without a host communicator the ranks meet at NCCL_COMM_ID (an NCCL_COMM_ID already set wins).
  const bool by_env = env.world_size > 1 && !host;
  std::string comm_id;
  if (by_env && !std::getenv("NCCL_COMM_ID")) {
    if (env.master_addr.empty() || env.master_port <= 0)
      throw Error("launch environment (" + env.launcher + "): " + std::to_string(env.world_size) +
                  " GPU ranks bootstrap NCCL from MASTER_ADDR and MASTER_PORT (rank 0's host " +
                  "and a free TCP port there), which are not both set; set them, or launch " +
                  "the ranks through MPI (mpirun, or srun --mpi=pmix with an ftune built with " +
                  "MPI)");
    // torchrun's agent serves its own store on MASTER_PORT.
    int port = env.master_port;
    if (env.launcher == "torchrun" && std::getenv("TORCHELASTIC_RUN_ID")) ++port;
    if (port > 65535)
      throw Error("launch environment: MASTER_PORT " + std::to_string(port) + " is not a TCP port");
    comm_id = (env.master_addr.find(':') == std::string::npos ? env.master_addr
                                                              : "[" + env.master_addr + "]") +
              ":" + std::to_string(port);
  }

  // Each rank binds its GPU for the rest of the process.
  const int device = gpu_for_local_rank(env.local_rank);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");

  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (host && env.world_size > 1) {
    // Rank 0's id to every rank through the host communicator: a sum where only rank 0 adds.
    if (env.rank == 0) check_unique_id(nccl, nccl.ncclGetUniqueId(&id));
    std::vector<double> bytes(sizeof id.internal, 0.0);
    for (size_t i = 0; i < bytes.size(); ++i)
      bytes[i] = double(static_cast<unsigned char>(id.internal[i]));
    host->all_reduce_sum_host(bytes.data(), bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i)
      id.internal[i] = static_cast<char>(static_cast<unsigned char>(bytes[i]));
  } else {
    // With NCCL_COMM_ID every rank derives the same id, and rank 0 serves the bootstrap there; a
    // world of one needs no meeting point.
    if (!comm_id.empty()) setenv("NCCL_COMM_ID", comm_id.c_str(), 1);
    check_unique_id(nccl, nccl.ncclGetUniqueId(&id));
  }
  auto comm = std::make_unique<NcclCommunicator>(
      nccl, env, device, stream ? static_cast<cudaStream_t>(stream) : cudaStreamLegacy, timeout_s,
      std::move(host));
  comm->init(id);
  return comm;
#else
  (void)env, (void)timeout_s, (void)stream, (void)host;
  throw Error(
      "this ftune was built without NCCL's header (nccl.h), so it cannot run GPU ranks: "
      "install NCCL's development files (e.g. pip install nvidia-nccl-cu13 and add its "
      "nvidia/nccl/include to CPATH) and rebuild");
#endif
}

}  // namespace ftune
