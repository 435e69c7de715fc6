// The NCCL communicator for GPU ranks (issue #6). Plain C++ header (no CUDA or NCCL headers): the
// engine includes it only when FTUNE_HAVE_CUDA is defined.
//
// NCCL is not linked: libnccl.so.2 is dlopen'ed on first use (like cuBLASLt), so ftune starts and
// trains on the CPU where NCCL is absent. FTUNE_NCCL_LIBRARY names another file to load.
#pragma once
#include <memory>
#include <string>

#include "engine/dist/communicator.h"
#include "engine/dist/launch_env.h"

namespace ftune {

struct NcclLibrary {
  int version = 0;    // NCCL_VERSION_CODE of the loaded library (23007 = 2.30.7); 0: not loaded
  std::string path;   // the file that was loaded
  std::string error;  // why it cannot be used, and what to do; empty when it can
};
// libnccl.so.2 (or $FTUNE_NCCL_LIBRARY), loaded once with every entry point ftune calls. `error`
// is set when the library is missing, too old (before 2.14) or lacks a function.
const NcclLibrary& nccl_library();
// Loads `file` afresh and checks it the same way (diagnostics and tests; nothing is kept).
NcclLibrary probe_nccl_library(const std::string& file);
// "2.30.7" for 23007.
std::string nccl_version_text(int version);

// The GPU a rank binds: its local rank modulo the GPUs it sees. Throws ftune::Error without one.
int gpu_for_local_rank(int local_rank);

// NCCL communicator for rank env.rank of env.world_size. Binds gpu_for_local_rank(env.local_rank)
// (the caller's backend must use the same GPU). The NCCL unique id travels through `host` when
// given (a CPU communicator of the same ranks, e.g. MPI's: its all_reduce_sum_host carries the
// id from rank 0; the communicator keeps it and ends the job through it in abort()); otherwise
// NCCL bootstraps from NCCL_COMM_ID = MASTER_ADDR:MASTER_PORT (env.master_addr/master_port;
// MASTER_PORT + 1 under torchrun itself, TORCHELASTIC_RUN_ID set, whose agent holds MASTER_PORT;
// an NCCL_COMM_ID already in the environment wins). A world of 1 needs neither.
//
// Collectives are enqueued on `stream` (a cudaStream_t; nullptr = the legacy default stream, which
// orders against every blocking stream such as the CUDA backend's own) and return once enqueued;
// all_reduce_sum_host and barrier wait for their result. A thread watches every enqueued
// collective: one that has not finished timeout_s seconds after the stream reached it (a rank
// died or hangs), or an asynchronous NCCL error, aborts the NCCL communicator and ends the process
// with exit code 3 and "ftune: error on rank R: NCCL <op> did not finish within T s
// (dist.timeout) ...". timeout_s <= 0 disables the timeout (errors still end the process).
//
// Several ranks on one GPU need NCCL 2.30 or newer and NCCL_MULTI_RANK_GPU_ENABLE=1.
std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, double timeout_s,
                                                     void* stream = nullptr,
                                                     std::unique_ptr<Communicator> host = nullptr);

}  // namespace ftune
