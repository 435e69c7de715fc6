// MPI communicator for CPU ranks (OpenMPI): the collectives map one to one onto MPI's, which
// keep a fixed reduction order for a given number of ranks, so runs repeat exactly.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/base/error.h"
#include "engine/dist/communicator.h"
#include "engine/dist/launch_env.h"

#ifdef FTUNE_HAVE_MPI
#include <mpi.h>
#endif

namespace ftune {

#ifdef FTUNE_HAVE_MPI
namespace {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(std::string("MPI ") + what + " failed: " + std::string(text, size_t(len)));
}

// MPI's counts are ints: large buffers go in slices.
constexpr size_t kSlice = size_t(1) << 30;

// Watches the collective in progress from a thread of its own. MPI (initialised FUNNELED) may
// only be called from the main thread, so the watchdog ends the process with _exit; mpirun or
// srun then takes the other ranks down.
class Watchdog {
 public:
  Watchdog(int rank, double timeout_s) : rank_(rank), timeout_(timeout_s) {
    thread_ = std::thread([this] { run(); });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void begin(const char* op) {
    std::lock_guard<std::mutex> lock(mu_);
    op_ = op;
    since_ = std::chrono::steady_clock::now();
  }
  void end() {
    std::lock_guard<std::mutex> lock(mu_);
    op_ = nullptr;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(200));
      if (!op_) continue;
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - since_).count();
      if (waited > timeout_) {
        std::fprintf(stderr,
                     "ftune: error on rank %d: MPI %s did not finish within %.0f s (dist.timeout):"
                     " another rank has died or hangs; ending the job\n",
                     rank_, op_, timeout_);
        std::fflush(stderr);
        _exit(3);
      }
    }
  }
  int rank_;
  double timeout_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  const char* op_ = nullptr;
  std::chrono::steady_clock::time_point since_;
  bool stop_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init");
      owns_ = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    if (timeout_s > 0) watchdog_ = std::make_unique<Watchdog>(rank_, timeout_s);
  }
  ~MpiCommunicator() override {
    watchdog_.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  void all_reduce_sum(float* data, size_t n) override {
    Watch w(this, "all-reduce");
    for (size_t at = 0; at < n; at += kSlice)
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + at, int(std::min(kSlice, n - at)), MPI_FLOAT,
                              MPI_SUM, MPI_COMM_WORLD),
                "all-reduce");
  }
  void all_reduce_sum_host(double* data, size_t n) override {
    Watch w(this, "all-reduce");
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, int(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
              "all-reduce");
  }
  void barrier() override {
    Watch w(this, "barrier");
    check_mpi(MPI_Barrier(MPI_COMM_WORLD), "barrier");
  }
  void all_gather(float* data, size_t n) override {
    Watch w(this, "all-gather");
    std::vector<int> counts, displs;
    layout(n, &counts, &displs);
    check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(),
                             MPI_FLOAT, MPI_COMM_WORLD),
              "all-gather");
  }
  void gather_to_root(const float* shard, float* full, size_t n) override {
    Watch w(this, "gather");
    std::vector<int> counts, displs;
    layout(n, &counts, &displs);
    check_mpi(MPI_Gatherv(shard, counts[size_t(rank_)], MPI_FLOAT, full, counts.data(),
                          displs.data(), MPI_FLOAT, 0, MPI_COMM_WORLD),
              "gather");
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) override {
    Watch w(this, "reduce-scatter");
    std::vector<int> c = int_counts(counts);
    check_mpi(MPI_Reduce_scatter(in, out, c.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "reduce-scatter");
  }
  void all_gather_v(const float* mine, float* out, const std::vector<size_t>& counts) override {
    Watch w(this, "all-gather");
    std::vector<int> c = int_counts(counts), displs(c.size(), 0);
    for (size_t r = 1; r < c.size(); ++r) displs[r] = displs[r - 1] + c[r - 1];
    check_mpi(MPI_Allgatherv(mine, c[size_t(rank_)], MPI_FLOAT, out, c.data(), displs.data(),
                             MPI_FLOAT, MPI_COMM_WORLD),
              "all-gather");
  }
  uint64_t start_all_gather_v(const float* mine, float* out,
                              const std::vector<size_t>& counts) override {
    Watch w(this, "all-gather");
    // The counts and displacements must outlive the request: they travel with it.
    Started s;
    s.counts = int_counts(counts);
    s.displs.assign(s.counts.size(), 0);
    for (size_t r = 1; r < s.counts.size(); ++r) s.displs[r] = s.displs[r - 1] + s.counts[r - 1];
    check_mpi(MPI_Iallgatherv(mine, s.counts[size_t(rank_)], MPI_FLOAT, out, s.counts.data(),
                              s.displs.data(), MPI_FLOAT, MPI_COMM_WORLD, &s.request),
              "all-gather");
    const uint64_t handle = ++last_handle_;
    started_.emplace(handle, std::move(s));
    return handle;
  }
  uint64_t start_reduce_scatter_sum_in_place(float* buf, const std::vector<size_t>& counts,
                                             size_t* result_at) override {
    Watch w(this, "reduce-scatter");
    Started s;
    s.op = "reduce-scatter";
    s.counts = int_counts(counts);
    // MPI_IN_PLACE: the input is taken from buf and this rank's part is left at its start.
    check_mpi(MPI_Ireduce_scatter(MPI_IN_PLACE, buf, s.counts.data(), MPI_FLOAT, MPI_SUM,
                                  MPI_COMM_WORLD, &s.request),
              "reduce-scatter");
    *result_at = 0;
    const uint64_t handle = ++last_handle_;
    started_.emplace(handle, std::move(s));
    return handle;
  }
  void finish(uint64_t handle) override {
    auto it = started_.find(handle);
    if (it == started_.end()) return;
    Watch w(this, it->second.op);
    check_mpi(MPI_Wait(&it->second.request, MPI_STATUS_IGNORE), it->second.op);
    started_.erase(it);
  }
  void abort(int code) override { MPI_Abort(MPI_COMM_WORLD, code); }

 private:
  void layout(size_t n, std::vector<int>* counts, std::vector<int>* displs) const {
    if (n > size_t(INT32_MAX))
      throw Error("MPI all-gather of " + std::to_string(n) + " floats exceeds MPI's int counts");
    for (int r = 0; r < size_; ++r) {
      const ShardRange s = shard_range(n, r, size_);
      counts->push_back(int(s.size()));
      displs->push_back(int(s.begin));
    }
  }
  std::vector<int> int_counts(const std::vector<size_t>& counts) const {
    FTUNE_CHECK(counts.size() == size_t(size_), "one count per rank");
    size_t total = 0;
    for (size_t n : counts) total += n;
    if (total > size_t(INT32_MAX))
      throw Error("MPI collective of " + std::to_string(total) +
                  " floats exceeds MPI's int counts");
    return std::vector<int>(counts.begin(), counts.end());
  }
  // Marks one collective in progress for the watchdog.
  struct Watch {
    Watch(MpiCommunicator* c, const char* op) : c_(c) {
      if (c_->watchdog_) c_->watchdog_->begin(op);
    }
    ~Watch() {
      if (c_->watchdog_) c_->watchdog_->end();
    }
    MpiCommunicator* c_;
  };
  // A started all-gather (start_all_gather_v) until its finish.
  struct Started {
    const char* op = "all-gather";
    MPI_Request request = MPI_REQUEST_NULL;
    std::vector<int> counts, displs;
  };
  int rank_ = 0, size_ = 1;
  bool owns_ = false;
  std::unique_ptr<Watchdog> watchdog_;
  std::map<uint64_t, Started> started_;
  uint64_t last_handle_ = 0;
};

}  // namespace
#endif

std::unique_ptr<Communicator> make_mpi_communicator(const LaunchEnv& env, double timeout_s) {
#ifdef FTUNE_HAVE_MPI
  auto c = std::make_unique<MpiCommunicator>(timeout_s);
  if (c->rank() != env.rank || c->world_size() != env.world_size)
    throw Error("launch environment says rank " + std::to_string(env.rank) + " of " +
                std::to_string(env.world_size) + " but MPI says " + std::to_string(c->rank()) +
                " of " + std::to_string(c->world_size()) + "; launch with mpirun or srun --mpi");
  return c;
#else
  throw Error("launch environment: " + std::to_string(env.world_size) + " ranks, but this ftune " +
              "was built without MPI (install libopenmpi-dev and rebuild)");
#endif
}

std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, double timeout_s) {
  if (env.world_size <= 1) return make_local_communicator();
  if (env.launcher == "torchrun")
    throw Error("launch environment: " + std::to_string(env.world_size) + " torchrun-style " +
                "ranks run on GPUs (`device: cuda`, NCCL); launch CPU ranks with " +
                "`ftune launch -n N train ...` (mpirun) or srun");
  return make_mpi_communicator(env, timeout_s);
}

}  // namespace ftune
