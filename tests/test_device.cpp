#include <gtest/gtest.h>

#include "engine/base/error.h"
#include "engine/device/device.h"
#ifdef FTUNE_HAVE_CUDA
#include "cuda/cuda_device.h"
#endif

namespace ftune {
namespace {

TEST(Device, CpuAlwaysResolves) {
  EXPECT_EQ(resolve_device("cpu").kind, "cpu");
  EXPECT_EQ(resolve_device("auto").kind, "cpu");  // no CUDA training backend before #5
  EXPECT_EQ(make_backend(resolve_device("cpu"))->name(), "cpu");
}

TEST(Device, CudaWithoutGpuIsAClearError) {
  std::string why;
  if (cuda_device_count(&why) > 0) GTEST_SKIP() << "a GPU is present";
  try {
    resolve_device("cuda");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("no GPU is usable"), std::string::npos) << m;
    EXPECT_NE(m.find("device: cpu"), std::string::npos) << m;
  }
}

TEST(Device, UnknownDeviceNamed) {
  try {
    resolve_device("tpu");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'tpu'"), std::string::npos);
  }
}

#ifdef FTUNE_HAVE_CUDA
TEST(CudaSmoke, AxpyKernelMatchesHost) {
  std::string why;
  if (cuda::device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why;
  cuda::DeviceInfo info = cuda::device_info(0);
  EXPECT_FALSE(info.name.empty());
  EXPECT_GT(info.total_memory, 0u);
  EXPECT_LE(cuda::smoke_test(0, 100003), 1e-6);
}
#endif

}  // namespace
}  // namespace ftune
