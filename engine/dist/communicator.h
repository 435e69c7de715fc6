// Collective operations between ranks. World size 1 exists from the start and the trainer
// already calls every reduce point, so sharding (issue #6) adds implementations, not a new loop.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/error.h"

namespace ftune {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Sums in place across ranks (device pointers of the run's backend).
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  // Host scalars (loss sums, token counts, squared norms).
  virtual void all_reduce_sum_host(double* data, size_t n) = 0;
  virtual void barrier() = 0;
  // Sharded buffers of n floats are split into world_size slices of ceil(n / world_size)
  // (the last shorter); rank r owns shard_range(n, r).
  // all_gather: every rank's own slice of data -> everyone's data, in place.
  virtual void all_gather(float* data, size_t n) = 0;
  // gather_to_root: every rank's slice (`shard`, its own length) -> `full` (n floats) on rank 0.
  virtual void gather_to_root(const float* shard, float* full, size_t n) = 0;
  // Irregular parts, for collectives over one unit (a layer) of a sharded buffer. counts[r] is
  // rank r's part (may be 0); parts lie in rank order.
  // reduce_scatter_sum: `in` (sum of counts floats, same layout on every rank) is summed across
  // ranks and this rank's part is written (not accumulated) to `out` (counts[rank] floats).
  virtual void reduce_scatter_sum(const float* in, float* out,
                                  const std::vector<size_t>& counts) = 0;
  // all_gather_v: this rank's `mine` (counts[rank] floats) -> every rank's `out` (sum of counts).
  virtual void all_gather_v(const float* mine, float* out, const std::vector<size_t>& counts) = 0;
  // all_gather_v and reduce_scatter_sum started without waiting for them (ZeRO overlap): `out`
  // holds the result once finish(handle) has returned (device communicators: for work the run's
  // stream enqueues after finish). Until then neither buffer may be touched. Other collectives
  // may run in between; every rank starts the same collectives in the same order and finishes
  // every one it started (in any order). The defaults run them at once (handle 0, nothing to
  // finish).
  virtual uint64_t start_all_gather_v(const float* mine, float* out,
                                      const std::vector<size_t>& counts) {
    all_gather_v(mine, out, counts);
    return 0;
  }
  // The reduce-scatter in place: `buf` is the input, and this rank's summed part is left at
  // buf + *result_at (where depends on the library), so no second buffer is needed.
  virtual uint64_t start_reduce_scatter_sum_in_place(float* buf, const std::vector<size_t>& counts,
                                                     size_t* result_at) {
    // One rank: its part of the sum is its own data, in place.
    FTUNE_CHECK(world_size() == 1, "this communicator has no in-place reduce-scatter");
    (void)buf, (void)counts;
    *result_at = 0;
    return 0;
  }
  virtual void finish(uint64_t handle) { (void)handle; }
  // Ends every rank of the job (after a rank's error); returns only when there is one rank.
  virtual void abort(int code) { (void)code; }
  // The single-process communicator: its collectives are plain host copies, so a caller with
  // device buffers copies through its backend instead (ZeRO-2/3 on one GPU).
  virtual bool is_local() const { return false; }
  // The run's device stream (Backend::native_stream), once the backend exists: collectives are
  // ordered against it from then on. Null, or a communicator without a device, ignores it.
  virtual void use_stream(void* stream) { (void)stream; }
  // Seconds the device spent running collectives so far, from events around each (0 where not
  // measured: MPI on the CPU). Against the step time it shows how much communication overlap
  // can hide.
  virtual double busy_seconds() { return 0; }
};

struct ShardRange {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};
ShardRange shard_range(size_t n, int rank, int world_size);

// The single-process communicator: every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

struct LaunchEnv;
// The communicator for how this process was launched (launch_env.h): MPI ranks under mpirun or
// srun, else the local one. Several ranks without MPI built in, or from a launcher that needs
// NCCL, are errors saying what to do.
// A collective that has not finished after timeout_s seconds (a rank died or hangs) ends this
// process with a message naming the rank and the operation, so the job fails instead of
// waiting forever.
std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, double timeout_s = 600);
// The MPI communicator of ranks MPI launched (mpirun, srun --mpi); an error naming what to
// install when MPI is not built in. NCCL bootstraps over it (engine/device/device.h).
std::unique_ptr<Communicator> make_mpi_communicator(const LaunchEnv& env, double timeout_s);
}  // namespace ftune
