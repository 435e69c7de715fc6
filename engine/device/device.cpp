#include "engine/device/device.h"

#include "engine/base/error.h"
#include "engine/dist/launch_env.h"
#ifdef FTUNE_HAVE_CUDA
#include "cuda/communicator_nccl.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_device.h"
#endif

namespace ftune {

// `device: auto` picks the CUDA backend whenever a GPU is usable: it has passed scripts/gpu-check
// on an H200 (docs/performance.md), the CPU backend staying the reference it is tested against.

bool cuda_built() {
#ifdef FTUNE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count(std::string* why) {
#ifdef FTUNE_HAVE_CUDA
  return cuda::device_count(why);
#else
  if (why) *why = "this ftune was built without CUDA (FTUNE_CUDA=OFF or no nvcc at build time)";
  return 0;
#endif
}

DeviceChoice resolve_device(DeviceSetting requested, int local_rank) {
  if (requested == DeviceSetting::Cpu) return {"cpu", "CPU"};
  std::string why;
  const int n = cuda_device_count(&why);
  if (requested == DeviceSetting::Cuda && n == 0)
    throw Error("device: cuda was requested but no GPU is usable (" + why +
                "); set `device: cpu` or `device: auto` to train on the CPU");
  if (n > 0) return {"cuda", "CUDA", local_rank % n};
  return {"cpu", "CPU"};  // auto without a usable GPU
}

DeviceChoice resolve_device(const std::string& requested) {
  return resolve_device(requested, 0);
}

DeviceChoice resolve_device(const std::string& requested, int local_rank) {
  if (requested == "cpu") return resolve_device(DeviceSetting::Cpu, local_rank);
  if (requested == "cuda") return resolve_device(DeviceSetting::Cuda, local_rank);
  if (requested == "auto") return resolve_device(DeviceSetting::Auto, local_rank);
  throw Error("device: unknown value '" + requested + "' (use auto, cpu or cuda)");
}

std::unique_ptr<Backend> make_backend(const DeviceChoice& choice) {
  if (choice.kind == "cpu") return make_cpu_backend();
#ifdef FTUNE_HAVE_CUDA
  return make_cuda_backend(choice.index);
#else
  throw Error("this ftune was built without CUDA; use `device: cpu`");
#endif
}

std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, double timeout_s,
                                                const std::string& device_kind) {
  if (device_kind != "cuda" || env.world_size <= 1) return make_communicator(env, timeout_s);
#ifdef FTUNE_HAVE_CUDA
  // MPI carries NCCL's unique id when it launched the ranks; srun with MASTER_PORT set, and
  // torchrun, bootstrap through NCCL_COMM_ID instead.
  std::unique_ptr<Communicator> host;
#ifdef FTUNE_HAVE_MPI
  if (env.launcher == "mpi" || (env.launcher == "slurm" && env.master_port == 0))
    host = make_mpi_communicator(env, timeout_s);
#endif
  return make_nccl_communicator(env, timeout_s, nullptr, std::move(host));
#else
  throw Error("launch environment: " + std::to_string(env.world_size) + " GPU ranks, but this " +
              "ftune was built without CUDA; use `device: cpu`");
#endif
}

}  // namespace ftune
