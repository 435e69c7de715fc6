// The NCCL communicator (cuda/communicator_nccl.cu). Anywhere: the loader finds libnccl.so.2 with
// every function ftune calls, or says clearly how to provide it. With a GPU and NCCL: a world of
// one rank runs every collective, and two processes of this binary share GPU 0 as ranks 0 and 1 of
// a torchrun-style job (NCCL 2.30+, NCCL_MULTI_RANK_GPU_ENABLE=1): every collective with irregular
// counts including zeros, against values computed here, and a rank that stops answering ends the
// other within dist.timeout, naming the rank and the operation. The GPU tests skip without a GPU
// or NCCL; the two-rank ones also with an older NCCL, saying which.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/dist/launch_env.h"
#include "tests/test_util.h"
#ifdef FTUNE_HAVE_CUDA
#include <arpa/inet.h>
#include <cuda_runtime.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cuda/communicator_nccl.h"

extern char** environ;
#endif

namespace ftune {
namespace {

#ifdef FTUNE_HAVE_CUDA

constexpr size_t npos = std::string::npos;

// ---- the loader (no GPU needed) ----

TEST(NcclLoader, MissingLibraryIsAClearError) {
  const NcclLibrary lib = probe_nccl_library("/nonexistent/libnccl.so.2");
  EXPECT_EQ(lib.version, 0);
  for (const char* needle : {"cannot load NCCL", "/nonexistent/libnccl.so.2", "LD_LIBRARY_PATH",
                             "nvidia/nccl/lib", "FTUNE_NCCL_LIBRARY"})
    EXPECT_NE(lib.error.find(needle), npos) << lib.error;
}

TEST(NcclLoader, AnotherLibraryIsAClearError) {
  const NcclLibrary lib = probe_nccl_library("libc.so.6");
  EXPECT_EQ(lib.version, 0);
  EXPECT_NE(lib.error.find("is not an NCCL library"), npos) << lib.error;
}

TEST(NcclLoader, VersionText) {
  EXPECT_EQ(nccl_version_text(23007), "2.30.7");
  EXPECT_EQ(nccl_version_text(22809), "2.28.9");
  EXPECT_EQ(nccl_version_text(2804), "2.8.4");
}

TEST(NcclLoader, LoadsTheLibraryWithEveryFunction) {
  const NcclLibrary& lib = nccl_library();
  if (!lib.error.empty()) GTEST_SKIP() << lib.error;
  // scripts/gpu-check reports this line.
  std::printf("NCCL version %s from %s\n", nccl_version_text(lib.version).c_str(),
              lib.path.c_str());
  EXPECT_GE(lib.version, 21400);
  EXPECT_FALSE(lib.path.empty());
}

// ---- set-up errors, before any GPU is touched ----

// Sets (or unsets, with nullptr) an environment variable for a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old) old_ = old, had_ = true;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_.c_str(), old_.c_str(), 1);
    else
      unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

LaunchEnv two_torchrun_ranks() {
  LaunchEnv env;
  env.launcher = "torchrun";
  env.world_size = 2;
  return env;
}

TEST(NcclSetup, RanksWithoutAMeetingPointAreAClearError) {
  if (!nccl_library().error.empty()) GTEST_SKIP() << nccl_library().error;
  ScopedEnv no_id("NCCL_COMM_ID", nullptr);
  testing::expect_error(
      [] { make_nccl_communicator(two_torchrun_ranks(), 5); },
      {"launch environment (torchrun)", "2 GPU ranks", "MASTER_ADDR", "MASTER_PORT", "mpirun"});
}

TEST(NcclSetup, AHostCommunicatorOfAnotherWorldIsAnError) {
  if (!nccl_library().error.empty()) GTEST_SKIP() << nccl_library().error;
  testing::expect_error(
      [] { make_nccl_communicator(two_torchrun_ranks(), 5, nullptr, make_local_communicator()); },
      {"rank 0 of 2", "host communicator says 0 of 1"});
}

TEST(NcclSetup, SeveralRanksPerGpuNeedNccl230) {
  const NcclLibrary& lib = nccl_library();
  if (!lib.error.empty()) GTEST_SKIP() << lib.error;
  if (lib.version >= 23000) {
    std::printf("NCCL %s allows several ranks per GPU: nothing to refuse here\n",
                nccl_version_text(lib.version).c_str());
    return;
  }
  ScopedEnv multi("NCCL_MULTI_RANK_GPU_ENABLE", "1");
  testing::expect_error(
      [] { make_nccl_communicator(two_torchrun_ranks(), 5); },
      {"NCCL_MULTI_RANK_GPU_ENABLE=1", "2.30 or newer", nccl_version_text(lib.version), lib.path});
}

// ---- GPU helpers ----

// Why the GPU tests cannot run here; empty when they can.
std::string gpu_missing() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return "no GPU";
  }
  return nccl_library().error;
}

void cuda_ok(cudaError_t e) {
  ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
}

// A device buffer. cudaMemcpy runs on the legacy default stream, so it is ordered after the
// collectives, which use that stream too.
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * 4));
  }
  explicit Dev(const std::vector<float>& v) : Dev(v.size()) { put(v); }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  float* get() const { return p_; }
  void put(const std::vector<float>& v) {
    ASSERT_LE(v.size(), n_);
    cuda_ok(cudaMemcpy(p_, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  std::vector<float> read() const {
    std::vector<float> v(n_);
    EXPECT_EQ(cudaMemcpy(v.data(), p_, n_ * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

 private:
  float* p_ = nullptr;
  size_t n_;
};

std::vector<float> iota(size_t n, float from) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = from + float(i);
  return v;
}

// ---- one rank ----

TEST(NcclOneRank, EveryCollectiveIsTheIdentity) {
  if (std::string why = gpu_missing(); !why.empty()) GTEST_SKIP() << why;
  LaunchEnv env;  // rank 0 of 1
  std::unique_ptr<Communicator> comm = make_nccl_communicator(env, 60);
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);

  Dev a(iota(9, 1));
  comm->all_reduce_sum(a.get(), 9);
  EXPECT_EQ(a.read(), iota(9, 1));
  double host[3] = {1.5, -2, 1e12};
  comm->all_reduce_sum_host(host, 3);
  EXPECT_EQ(host[0], 1.5);
  EXPECT_EQ(host[1], -2);
  EXPECT_EQ(host[2], 1e12);
  comm->barrier();
  comm->all_gather(a.get(), 9);
  EXPECT_EQ(a.read(), iota(9, 1));

  Dev full(std::vector<float>(9, -1.f));
  comm->gather_to_root(a.get(), full.get(), 9);
  EXPECT_EQ(full.read(), iota(9, 1));

  Dev out(std::vector<float>(9, -1.f));
  comm->reduce_scatter_sum(a.get(), out.get(), {9});
  EXPECT_EQ(out.read(), iota(9, 1));
  Dev untouched(std::vector<float>(2, -1.f));
  comm->reduce_scatter_sum(a.get(), untouched.get(), {0});
  comm->all_gather_v(a.get(), untouched.get(), {0});
  EXPECT_EQ(untouched.read(), std::vector<float>(2, -1.f));
  Dev gathered(std::vector<float>(9, -1.f));
  comm->all_gather_v(a.get(), gathered.get(), {9});
  EXPECT_EQ(gathered.read(), iota(9, 1));
  comm->barrier();
}

TEST(NcclOneRank, RunsOnTheCallersStream) {
  if (std::string why = gpu_missing(); !why.empty()) GTEST_SKIP() << why;
  cudaStream_t s = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    std::unique_ptr<Communicator> comm = make_nccl_communicator(LaunchEnv{}, 60, s);
    Dev a(iota(5, 0));
    comm->all_reduce_sum(a.get(), 5);
    cuda_ok(cudaStreamSynchronize(s));
    EXPECT_EQ(a.read(), iota(5, 0));
    comm->barrier();
  }
  cudaStreamDestroy(s);
}

// ---- two ranks on GPU 0, as two processes of this binary ----

// What one rank checks, with values any rank can compute for every other.
void check_collectives(Communicator& comm) {
  const int W = comm.world_size(), R = comm.rank();
  ASSERT_EQ(W, 2);
  const float tri = float(W * (W + 1) / 2);  // sum over ranks of (rank + 1)

  {  // all_reduce_sum on the device
    const size_t n = 1000;
    std::vector<float> v(n), want(n);
    for (size_t i = 0; i < n; ++i)
      v[i] = float(R + 1) * float(i % 17), want[i] = tri * float(i % 17);
    Dev d(v);
    comm.all_reduce_sum(d.get(), n);
    EXPECT_EQ(d.read(), want) << "all_reduce_sum";
  }
  {  // host doubles, barrier
    double h[3] = {double(R + 1), 0.5 * R, 1e12 + R};
    comm.all_reduce_sum_host(h, 3);
    EXPECT_EQ(h[0], double(tri));
    EXPECT_EQ(h[1], 0.5);
    EXPECT_EQ(h[2], 2e12 + 1);
    comm.barrier();
  }
  // all_gather and gather_to_root over shard_range slices, odd and even sizes (n = 1: rank 1's
  // slice is empty; n = 10: equal slices).
  for (size_t n : {size_t(1), size_t(7), size_t(10), size_t(11)}) {
    std::vector<float> data(n, -1.f), want(n);
    for (int r = 0; r < W; ++r) {
      const ShardRange s = shard_range(n, r, W);
      for (size_t i = s.begin; i < s.end; ++i) {
        want[i] = float(1000 * r) + float(i);
        if (r == R) data[i] = want[i];
      }
    }
    Dev d(data);
    comm.all_gather(d.get(), n);
    EXPECT_EQ(d.read(), want) << "all_gather n=" << n;

    const ShardRange mine = shard_range(n, R, W);
    Dev shard(std::vector<float>(want.begin() + long(mine.begin), want.begin() + long(mine.end)));
    Dev full(std::vector<float>(n, -1.f));
    comm.gather_to_root(shard.get(), R == 0 ? full.get() : nullptr, n);
    if (R == 0) {
      EXPECT_EQ(full.read(), want) << "gather_to_root n=" << n;
    }
  }
  // Irregular parts, zeros included; {6, 6} takes the equal-count path.
  const std::vector<std::vector<size_t>> layouts = {{5, 0}, {0, 7}, {4, 9}, {6, 6}, {0, 0}, {1, 3}};
  for (const std::vector<size_t>& counts : layouts) {
    std::vector<size_t> at(W + 1, 0);
    for (int r = 0; r < W; ++r) at[size_t(r) + 1] = at[size_t(r)] + counts[size_t(r)];
    const size_t total = at[size_t(W)], own = counts[size_t(R)];
    const std::string label =
        "counts {" + std::to_string(counts[0]) + ", " + std::to_string(counts[1]) + "}";

    std::vector<float> in(total);
    for (size_t j = 0; j < total; ++j) in[j] = float(R + 1) * float(j + 1);
    Dev din(std::max<size_t>(total, 1));
    din.put(in);
    Dev out(std::vector<float>(std::max<size_t>(own, 1), -1.f));
    comm.reduce_scatter_sum(din.get(), out.get(), counts);
    std::vector<float> want(std::max<size_t>(own, 1), -1.f);
    for (size_t k = 0; k < own; ++k) want[k] = tri * float(at[size_t(R)] + k + 1);
    EXPECT_EQ(out.read(), want) << "reduce_scatter_sum " << label;

    Dev mine(std::max<size_t>(own, 1));
    mine.put(iota(own, float(100 * R)));
    Dev gathered(std::vector<float>(std::max<size_t>(total, 1), -1.f));
    comm.all_gather_v(mine.get(), gathered.get(), counts);
    std::vector<float> all(std::max<size_t>(total, 1), -1.f);
    for (int s = 0; s < W; ++s)
      for (size_t k = 0; k < counts[size_t(s)]; ++k)
        all[at[size_t(s)] + k] = float(100 * s + int(k));
    EXPECT_EQ(gathered.read(), all) << "all_gather_v " << label;

    // Started ahead (ZeRO-3 prefetch): two in flight with a blocking collective between them,
    // each result there once finished.
    Dev early(std::vector<float>(std::max<size_t>(total, 1), -1.f));
    Dev late(std::vector<float>(std::max<size_t>(total, 1), -1.f));
    const uint64_t h1 = comm.start_all_gather_v(mine.get(), early.get(), counts);
    double one = 1;
    comm.all_reduce_sum_host(&one, 1);
    const uint64_t h2 = comm.start_all_gather_v(mine.get(), late.get(), counts);
    comm.finish(h1);
    comm.finish(h2);
    EXPECT_EQ(one, double(W));
    EXPECT_EQ(early.read(), all) << "start_all_gather_v " << label;
    EXPECT_EQ(late.read(), all) << "start_all_gather_v " << label;
  }
  {  // a large all-reduce, timed (reported, not checked)
    const size_t n = size_t(1) << 24;
    Dev big(n);
    cuda_ok(cudaMemset(big.get(), 0, n * 4));
    comm.all_reduce_sum(big.get(), n);
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    const int iters = 5;
    const double busy0 = comm.busy_seconds();
    for (int i = 0; i < iters; ++i) comm.all_reduce_sum(big.get(), n);
    comm.barrier();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    // The device time the events measured is there, and no more than the wall time around it.
    const double busy = comm.busy_seconds() - busy0;
    EXPECT_GT(busy, 0.0);
    EXPECT_LT(busy, s * iters * 1.5 + 0.01);
    if (R == 0)
      std::printf(
          "ftune-test: all-reduce of %zu floats between 2 ranks on one GPU: %.2f ms, "
          "bus bandwidth %.1f GB/s\n",
          n, s * 1e3, 2.0 * (W - 1) / W * double(n) * 4 / s / 1e9);
  }
}

// A host communicator for the two ranks below that carries rank 0's values to rank 1 once, which
// is all the NCCL unique id needs: rank 0 writes them to a file, rank 1 waits for it and adds
// them to its own (rank 0's stay as they are: the id's sum has only rank 0's part).
class FileHost final : public Communicator {
 public:
  FileHost(int rank, std::string path) : rank_(rank), path_(std::move(path)) {}
  int rank() const override { return rank_; }
  int world_size() const override { return 2; }
  void all_reduce_sum_host(double* data, size_t n) override {
    if (rank_ == 0) {
      std::ofstream(path_ + ".tmp", std::ios::binary)
          .write(reinterpret_cast<const char*>(data), std::streamsize(n * sizeof(double)));
      ASSERT_EQ(std::rename((path_ + ".tmp").c_str(), path_.c_str()), 0);
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::ifstream f;
    while (!(f = std::ifstream(path_, std::ios::binary)).good()) {
      ASSERT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60)) << path_;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::vector<double> got(n);
    f.read(reinterpret_cast<char*>(got.data()), std::streamsize(n * sizeof(double)));
    ASSERT_EQ(size_t(f.gcount()), n * sizeof(double));
    for (size_t i = 0; i < n; ++i) data[i] += got[i];
  }
  void all_reduce_sum(float*, size_t) override { ADD_FAILURE() << "FileHost: unused"; }
  void barrier() override { ADD_FAILURE() << "FileHost: unused"; }
  void all_gather(float*, size_t) override { ADD_FAILURE() << "FileHost: unused"; }
  void gather_to_root(const float*, float*, size_t) override {
    ADD_FAILURE() << "FileHost: unused";
  }
  void reduce_scatter_sum(const float*, float*, const std::vector<size_t>&) override {
    ADD_FAILURE() << "FileHost: unused";
  }
  void all_gather_v(const float*, float*, const std::vector<size_t>&) override {
    ADD_FAILURE() << "FileHost: unused";
  }

 private:
  int rank_;
  std::string path_;
};

// A rank of the job RunRanks starts (never run directly: a disabled test).
TEST(NcclRankProcess, DISABLED_Run) {
  const char* mode = std::getenv("FTUNE_NCCL_TEST_MODE");
  const char* dir = std::getenv("FTUNE_NCCL_TEST_DIR");
  const char* timeout = std::getenv("FTUNE_NCCL_TEST_TIMEOUT");
  ASSERT_TRUE(mode && dir && timeout) << "started by the NcclTwoRanks tests only";
  const LaunchEnv env = detect_launch_env();
  std::unique_ptr<Communicator> comm =
      std::string(mode) == "host"
          ? make_nccl_communicator(env, std::atof(timeout), nullptr,
                                   std::make_unique<FileHost>(env.rank, std::string(dir) + "/id"))
          : make_nccl_communicator(env, std::atof(timeout));
  if (std::string(mode) == "host") {
    Dev d(iota(33, float(env.rank)));
    comm->all_reduce_sum(d.get(), 33);
    std::vector<float> want(33);
    for (size_t i = 0; i < 33; ++i) want[i] = 2 * float(i) + 1;
    EXPECT_EQ(d.read(), want);
    comm->barrier();
  } else if (std::string(mode) == "collectives") {
    check_collectives(*comm);
    comm->barrier();
  } else if (std::string(mode) == "hang") {
    comm->barrier();
    if (env.rank == 1) {
      std::this_thread::sleep_for(std::chrono::seconds(120));  // never joins the all-reduce
      return;
    }
    Dev d(std::vector<float>(16, 1.f));
    comm->all_reduce_sum(d.get(), 16);
    double x = 1;
    comm->all_reduce_sum_host(&x, 1);
    ADD_FAILURE() << "a collective returned that rank 1 never joined";
  }
  if (!::testing::Test::HasFailure())
    std::ofstream(std::string(dir) + "/rank-" + std::to_string(env.rank) + ".ok") << "ok\n";
}

int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (s >= 0 && bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  if (s >= 0) close(s);
  return port;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct RankResult {
  int code = -1;  // exit code; 128 + signal when killed
  double seconds = 0;
  std::string log;
  bool ok = false;  // the rank wrote its marker: it ran to the end without a failed check
};

// Runs ranks 0 and 1 of a torchrun-style job, both on GPU 0, as processes of this binary. Waits
// up to `limit` seconds for every rank; with `rest_after_rank0`, the others are killed once rank
// 0 has ended.
std::vector<RankResult> run_ranks(const std::string& mode, double timeout_s, double limit,
                                  bool rest_after_rank0) {
  const int world = 2;
  const std::string dir = testing::make_temp_dir("nccl-ranks");
  const int port = free_port();
  EXPECT_GT(port, 0);
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  EXPECT_GT(len, 0);
  exe[len > 0 ? len : 0] = '\0';

  // The parent's environment without any launcher's variables, then this job's.
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    bool drop = false;
    for (const char* prefix : {"OMPI_", "PMIX_", "SLURM_"})
      drop = drop || name.rfind(prefix, 0) == 0;
    for (const char* n :
         {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
          "NCCL_COMM_ID", "NCCL_MULTI_RANK_GPU_ENABLE", "TORCHELASTIC_RUN_ID",
          "FTUNE_NCCL_TEST_MODE", "FTUNE_NCCL_TEST_DIR", "FTUNE_NCCL_TEST_TIMEOUT"})
      drop = drop || name == n;
    if (!drop) base.push_back(kv);
  }
  if (!std::getenv("NCCL_DEBUG")) base.push_back("NCCL_DEBUG=WARN");
  // One machine: NCCL's bootstrap stays on the loopback interface, as NCCL_COMM_ID does.
  if (!std::getenv("NCCL_SOCKET_IFNAME")) base.push_back("NCCL_SOCKET_IFNAME=lo");
  for (const std::string& kv :
       {"WORLD_SIZE=" + std::to_string(world), std::string("LOCAL_RANK=0"),
        std::string("MASTER_ADDR=127.0.0.1"), "MASTER_PORT=" + std::to_string(port),
        std::string("NCCL_MULTI_RANK_GPU_ENABLE=1"), "FTUNE_NCCL_TEST_MODE=" + mode,
        "FTUNE_NCCL_TEST_DIR=" + dir, "FTUNE_NCCL_TEST_TIMEOUT=" + std::to_string(timeout_s)})
    base.push_back(kv);

  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<pid_t> pids(world, -1);
  std::vector<RankResult> res(world);
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> env = base;
    env.push_back("RANK=" + std::to_string(r));
    std::vector<char*> envp;
    for (std::string& kv : env) envp.push_back(kv.data());
    envp.push_back(nullptr);
    std::string a0 = exe, a1 = "--gtest_filter=NcclRankProcess.DISABLED_Run",
                a2 = "--gtest_also_run_disabled_tests";
    char* argv[] = {a0.data(), a1.data(), a2.data(), nullptr};
    const std::string log = dir + "/rank-" + std::to_string(r) + ".log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    EXPECT_EQ(posix_spawn(&pids[size_t(r)], exe, &fa, nullptr, argv, envp.data()), 0);
    posix_spawn_file_actions_destroy(&fa);
  }
  int running = world;
  while (running > 0) {
    for (int r = 0; r < world; ++r) {
      pid_t& pid = pids[size_t(r)];
      if (pid <= 0) continue;
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) != pid) continue;
      res[size_t(r)].code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      res[size_t(r)].seconds = since();
      pid = -1;
      --running;
      if (r == 0 && rest_after_rank0)
        for (pid_t other : pids)
          if (other > 0) kill(other, SIGKILL);
    }
    if (running > 0 && since() > limit) {
      for (pid_t p : pids)
        if (p > 0) kill(p, SIGKILL);
      ADD_FAILURE() << "ranks still running after " << limit << " s; killed";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world; ++r) {
    const std::string stem = dir + "/rank-" + std::to_string(r);
    res[size_t(r)].log = read_text(stem + ".log");
    res[size_t(r)].ok = std::ifstream(stem + ".ok").good();
  }
  return res;
}

// Why two ranks cannot share GPU 0 here; empty when they can.
std::string two_ranks_missing() {
  if (std::string why = gpu_missing(); !why.empty()) return why;
  const NcclLibrary& lib = nccl_library();
  if (lib.version < 23000)
    return "two ranks on one GPU need NCCL 2.30 or newer (NCCL_MULTI_RANK_GPU_ENABLE); " +
           lib.path + " is NCCL " + nccl_version_text(lib.version);
  return "";
}

TEST(NcclTwoRanks, EveryCollectiveWithIrregularCounts) {
  if (std::string why = two_ranks_missing(); !why.empty()) GTEST_SKIP() << why;
  const std::vector<RankResult> res = run_ranks("collectives", 60, 300, false);
  for (size_t r = 0; r < res.size(); ++r) {
    EXPECT_EQ(res[r].code, 0) << "rank " << r << ":\n" << res[r].log;
    EXPECT_TRUE(res[r].ok) << "rank " << r << ":\n" << res[r].log;
  }
  std::istringstream lines(res[0].log);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("ftune-test:", 0) == 0) std::printf("%s\n", line.c_str());
}

// The unique id from rank 0 through a host communicator (MPI's in a real job) instead of
// NCCL_COMM_ID.
TEST(NcclTwoRanks, UniqueIdThroughAHostCommunicator) {
  if (std::string why = two_ranks_missing(); !why.empty()) GTEST_SKIP() << why;
  const std::vector<RankResult> res = run_ranks("host", 60, 180, false);
  for (size_t r = 0; r < res.size(); ++r) {
    EXPECT_EQ(res[r].code, 0) << "rank " << r << ":\n" << res[r].log;
    EXPECT_TRUE(res[r].ok) << "rank " << r << ":\n" << res[r].log;
  }
}

TEST(NcclTwoRanks, HungRankEndsTheJobWithinTheTimeout) {
  if (std::string why = two_ranks_missing(); !why.empty()) GTEST_SKIP() << why;
  const std::vector<RankResult> res = run_ranks("hang", 3, 120, true);
  EXPECT_EQ(res[0].code, 3) << res[0].log;
  EXPECT_NE(res[0].log.find("ftune: error on rank 0: NCCL all-reduce did not finish within 3 s "
                            "(dist.timeout): another rank has died or hangs; ending the job"),
            npos)
      << res[0].log;
  // Start-up (two NCCL inits) plus the 3 s timeout, far below the 120 s rank 1 sleeps.
  EXPECT_LT(res[0].seconds, 60) << res[0].log;
}

#else
TEST(NcclLoader, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace ftune
