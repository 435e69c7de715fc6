#include "engine/device.h"

#include "engine/error.h"
#ifdef FTUNE_HAVE_CUDA
#include "cuda/cuda_device.h"
#endif

namespace ftune {

constexpr bool kCudaTrainingBackend = false;

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

DeviceChoice resolve_device(const std::string& requested) {
  if (requested == "cpu") return {"cpu", "CPU"};
  std::string why;
  int n = cuda_device_count(&why);
  if (requested == "cuda") {
    if (n == 0)
      throw Error("device: cuda was requested but no GPU is usable (" + why +
                  "); set `device: cpu` or `device: auto` to train on the CPU");
    return {"cuda", "CUDA"};
  }
  if (requested == "auto") {
    // Until the CUDA training backend exists (issue #5) auto stays on the CPU even with a GPU.
    if (n > 0 && kCudaTrainingBackend) return {"cuda", "CUDA"};
    return {"cpu",
            n > 0 ? "CPU (a GPU is present; the CUDA training backend arrives with #5)" : "CPU"};
  }
  throw Error("device: unknown value '" + requested + "' (use auto, cpu or cuda)");
}

std::unique_ptr<Backend> make_backend(const DeviceChoice& choice) {
  if (choice.kind == "cpu") return make_cpu_backend();
  throw Error(
      "the CUDA training backend is not part of this build yet (it lands with issue #5); "
      "use `device: cpu`");
}

}  // namespace ftune
