// Which backend a run uses. `device: auto` picks CUDA when it is built in and a GPU answers,
// otherwise the CPU; `device: cuda` without a usable GPU is a clear error.
#pragma once
#include <memory>
#include <string>

#include "engine/backend/backend.h"

namespace ftune {

struct DeviceChoice {
  std::string kind;    // "cpu" or "cuda"
  std::string detail;  // human-readable: CPU threads, GPU name
  int index = 0;       // CUDA: the GPU
};

bool cuda_built();
// Number of usable GPUs (0 when CUDA is not built or no device answers); *why says why not.
int cuda_device_count(std::string* why);
// Resolves "auto" | "cpu" | "cuda". Throws ftune::Error for an impossible request.
DeviceChoice resolve_device(const std::string& requested);
// The same for a rank with local rank L: GPU L % (GPUs it sees), the one its NCCL communicator
// binds.
DeviceChoice resolve_device(const std::string& requested, int local_rank);
// The backend for a resolved choice (CUDA: GPU choice.index).
std::unique_ptr<Backend> make_backend(const DeviceChoice& choice);

}  // namespace ftune
