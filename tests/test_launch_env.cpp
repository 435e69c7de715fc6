// Launcher detection for multi-process runs: MPI, Slurm and torchrun-style variables, Slurm host
// lists, and clear errors for partial or inconsistent environments.
#include <gtest/gtest.h>

#include <map>

#include "engine/dist/launch_env.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

LaunchEnv detect(const std::map<std::string, std::string>& env) {
  return detect_launch_env([&](const std::string& n) -> std::optional<std::string> {
    auto it = env.find(n);
    if (it == env.end()) return std::nullopt;
    return it->second;
  });
}

TEST(LaunchEnv, NoLauncherIsOneProcess) {
  LaunchEnv e = detect({{"PATH", "/bin"}});
  EXPECT_EQ(e.launcher, "none");
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
}

TEST(LaunchEnv, MpiWinsOverSlurmAndTorchrun) {
  LaunchEnv e = detect({{"OMPI_COMM_WORLD_RANK", "3"},
                        {"OMPI_COMM_WORLD_SIZE", "4"},
                        {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                        {"SLURM_PROCID", "0"},
                        {"SLURM_NTASKS", "1"},
                        {"RANK", "0"},
                        {"WORLD_SIZE", "1"}});
  EXPECT_EQ(e.launcher, "mpi");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
}

TEST(LaunchEnv, SlurmMasterIsTheFirstHost) {
  LaunchEnv e = detect({{"SLURM_PROCID", "5"},
                        {"SLURM_NTASKS", "8"},
                        {"SLURM_LOCALID", "1"},
                        {"SLURM_JOB_NODELIST", "gpu[07-09,12],login1"},
                        {"MASTER_PORT", "29500"}});
  EXPECT_EQ(e.launcher, "slurm");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "gpu07");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(LaunchEnv, TorchrunNeedsMasterForSeveralRanks) {
  LaunchEnv e = detect({{"RANK", "1"},
                        {"WORLD_SIZE", "2"},
                        {"LOCAL_RANK", "1"},
                        {"MASTER_ADDR", "10.0.0.1"},
                        {"MASTER_PORT", "29500"}});
  EXPECT_EQ(e.launcher, "torchrun");
  EXPECT_EQ(e.master_addr, "10.0.0.1");
  testing::expect_error(
      [] {
        detect({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
      },
      {"MASTER_ADDR", "MASTER_PORT"});
}

TEST(LaunchEnv, PartialOrInconsistentEnvironmentsAreErrors) {
  testing::expect_error([] { detect({{"RANK", "0"}}); }, {"partly set", "WORLD_SIZE"});
  testing::expect_error([] { detect({{"OMPI_COMM_WORLD_SIZE", "2"}}); }, {"OMPI_COMM_WORLD_RANK"});
  testing::expect_error(
      [] {
        detect({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
      },
      {"rank 2", "world size 2"});
  testing::expect_error([] { detect({{"RANK", "x"}, {"WORLD_SIZE", "2"}}); }, {"RANK='x'"});
  testing::expect_error(
      [] {
        detect({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}});
      },
      {"SLURM_JOB_NODELIST"});
  testing::expect_error(
      [] {
        detect(
            {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}});
      },
      {"MASTER_PORT"});
}

TEST(SlurmHosts, ExpandsRangesKeepingZeroPadding) {
  EXPECT_EQ(expand_slurm_hosts("node1"), std::vector<std::string>{"node1"});
  EXPECT_EQ(expand_slurm_hosts("a[01-03,07]b,c"),
            (std::vector<std::string>{"a01b", "a02b", "a03b", "a07b", "c"}));
  EXPECT_EQ(expand_slurm_hosts("r[1-2]n[8-9]"),
            (std::vector<std::string>{"r1n8", "r1n9", "r2n8", "r2n9"}));
  EXPECT_EQ(first_slurm_host("gpu[099-101]"), "gpu099");
  EXPECT_EQ(expand_slurm_hosts("gpu[099-101]").back(), "gpu101");
  for (const char* bad : {"", "a[1-", "a]", "a[]", "a[3-1]", "a[x-2]", "a,", ",a"})
    testing::expect_error([&] { expand_slurm_hosts(bad); }, {"SLURM_JOB_NODELIST"});
}

}  // namespace
}  // namespace ftune
