// Host-side entry points of the CUDA library, callable from plain C++ (no CUDA headers here).
// Only compiled in when FTUNE_HAVE_CUDA is defined; engine/device/device.cpp wraps them.
#pragma once
#include <string>

namespace ftune::cuda {

struct DeviceInfo {
  int index = -1;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
};

// Number of usable CUDA devices; 0 with *why set when the driver or device is missing.
int device_count(std::string* why);
DeviceInfo device_info(int index);
// Runs a small kernel (y = a*x + y over n elements) on the device and checks the result on the
// host. Returns the max abs error; throws std::runtime_error on any CUDA failure.
double smoke_test(int device, int n);

}  // namespace ftune::cuda
