// Which backend a run uses. `device: auto` picks CUDA when it is built in and a GPU answers,
// otherwise the CPU; `device: cuda` without a usable GPU is a clear error.
#pragma once
#include <memory>
#include <string>

#include "engine/backend/backend.h"
#include "engine/dist/communicator.h"
#include "engine/recipe/recipe.h"

namespace ftune {

struct DeviceChoice {
  std::string kind;    // "cpu" or "cuda"
  std::string detail;  // human-readable: CPU threads, GPU name
  int index = 0;       // CUDA: the GPU
};

bool cuda_built();
// Number of usable GPUs (0 when CUDA is not built or no device answers); *why says why not.
int cuda_device_count(std::string* why);
// Resolves the recipe's device (or a flag's "auto" | "cpu" | "cuda"). Throws ftune::Error for
// an impossible request.
DeviceChoice resolve_device(DeviceSetting requested, int local_rank = 0);
DeviceChoice resolve_device(const std::string& requested);
// The same for a rank with local rank L: GPU L % (GPUs it sees), the one its NCCL communicator
// binds.
DeviceChoice resolve_device(const std::string& requested, int local_rank);
// The backend for a resolved choice (CUDA: GPU choice.index).
std::unique_ptr<Backend> make_backend(const DeviceChoice& choice);

// make_communicator (engine/dist/communicator.h) for a run on `device_kind` ("cpu" | "cuda"):
// several GPU ranks get the NCCL communicator (cuda/communicator_nccl.h) on GPU local_rank %
// GPUs; its unique id travels over MPI when MPI launched the ranks (mpirun, or srun without
// MASTER_PORT), else through NCCL_COMM_ID = MASTER_ADDR:MASTER_PORT.
std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, double timeout_s,
                                                const std::string& device_kind);

}  // namespace ftune
