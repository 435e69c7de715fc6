// The kill -9 soak: a CPU training run with a checkpoint every step is killed with SIGKILL at
// random instants (many land inside checkpoint writes, some in the start-up, some in the export)
// and resumed each time. After every kill `latest`, if present, must name a complete checkpoint
// (state.json, every tensor readable) no older than before; every resume must succeed; every run
// that reaches its end must hold the weights, moments, state and per-step metrics of an
// uninterrupted run, bit for bit. A run that ends before the trials are used up starts again in
// a fresh directory, so every trial is a kill.
//
// FTUNE_SOAK_TRIALS (kills, default 20 for one rank, 8 for two) and FTUNE_SOAK_SEED (default
// 7) set the soak; scripts/kill-soak runs it longer. The seed fixes the kill delays, not where
// in the program they land (that depends on the machine's speed): each trial is printed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/train/checkpoint.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;
constexpr int kSteps = 16;

// The reference and every resumed run get the same arguments (threads=1 included), so each step
// runs the same GEMMs on the same thread count: bit-exact by construction.
std::vector<std::string> train_args(const std::string& out, int ranks) {
  std::vector<std::string> a;
  if (ranks > 1) a = {"launch", "-n", std::to_string(ranks)};
  const std::vector<std::string> rest = {"train",
                                         kSrc + "/recipes/quickstart-base.yaml",
                                         "output_dir=" + out,
                                         "data.train=" + kSrc + "/data/quickstart/train.jsonl",
                                         "data.cache=false",
                                         "data.packing=pack",
                                         "train.seq_len=32",
                                         "train.micro_batch_size=2",
                                         "train.max_steps=" + std::to_string(kSteps),
                                         "schedule.warmup_steps=1",
                                         "eval.max_batches=1",
                                         "checkpoint.every=1",
                                         "checkpoint.keep_last=2",
                                         "threads=1",
                                         "dist.timeout=60"};
  a.insert(a.end(), rest.begin(), rest.end());
  if (ranks > 1) a.push_back("sharding=zero2");
  return a;
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

// Starts ftune in a session of its own, output to `log`. mpirun puts each rank in a process
// group of its own, but all stay in this session.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {testing::ftune_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  // Created here: a child killed before it opens the log still leaves one to read.
  ::close(open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644));
  const pid_t pid = fork();
  if (pid == 0) {
    setsid();
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> p;
    for (auto& s : argv) p.push_back(s.data());
    p.push_back(nullptr);
    execv(p[0], p.data());
    _exit(127);
  }
  return pid;
}

// Live (not zombie) processes of session `sid`.
std::vector<pid_t> session_members(pid_t sid) {
  std::vector<pid_t> pids;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat;
    try {
      stat = read_file(e.path().string() + "/stat");
    } catch (const std::exception&) {
      continue;  // gone meanwhile
    }
    // "pid (comm) state ppid pgrp session ...": comm may hold spaces, so parse after the ')'.
    std::istringstream in(stat.substr(stat.rfind(')') + 1));
    char state = 0;
    long ppid = 0, pgrp = 0, session = 0;
    in >> state >> ppid >> pgrp >> session;
    if (session == sid && state != 'Z') pids.push_back(pid_t(std::stol(name)));
  }
  return pids;
}

// SIGKILL to every process of the session at one instant, as a crash would: all are stopped
// first, then killed. Reaps them; ranks orphaned by mpirun's death are this process's children
// (it is a subreaper), and none may outlive the trial to write into the next one.
void kill_session(pid_t sid) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const std::vector<pid_t> pids = session_members(sid);
    for (pid_t p : pids) kill(p, SIGSTOP);
    for (pid_t p : pids) kill(p, SIGKILL);
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    if (pids.empty()) return;
    ASSERT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20))
        << "processes of session " << sid << " survive SIGKILL";
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Every file of the checkpoint `latest` names reads back whole. Returns its step, or -1.
int64_t check_latest(const std::string& run) {
  const std::optional<std::string> dir = latest_checkpoint(run);  // state.json must be there
  if (!dir) return -1;
  const TrainState st = read_checkpoint_state(*dir);
  int tensors = 0;
  for (const auto& e : fs::directory_iterator(*dir)) {
    const std::string p = e.path().string();
    if (e.path().extension() == ".safetensors") {
      SafetensorsReader r = SafetensorsReader::open(p);
      for (const TensorInfo& t : r.tensors()) {
        std::vector<float> buf(size_t(t.numel()));
        r.read_as(t, DType::F32, buf.data());
        ++tensors;
      }
    } else if (e.path().extension() == ".json") {
      EXPECT_FALSE(nlohmann::json::parse(read_file(p)).is_null()) << p;
    }
  }
  EXPECT_GT(tensors, 0) << *dir;
  return st.step;
}

// The per-step record without timings.
std::vector<std::string> step_metrics(const std::string& run) {
  std::vector<std::string> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    for (const char* k : {"elapsed_s", "tokens_per_s"}) j.erase(k);
    out.push_back(j.dump());
  }
  return out;
}

void expect_same_run(const std::string& run, const std::string& ref) {
  char step[32];
  std::snprintf(step, sizeof step, "/checkpoints/step-%08d", kSteps);
  std::vector<std::string> files = {"/model/model.safetensors"};
  for (const auto& e : fs::directory_iterator(ref + step))
    if (e.path().extension() == ".safetensors")
      files.push_back(std::string(step) + "/" + e.path().filename().string());
  for (const std::string& f : files)
    EXPECT_TRUE(read_file(run + f) == read_file(ref + f)) << f << " differs from the clean run's";
  // The state less the recipe hash, which covers output_dir.
  auto state = [&](const std::string& r) {
    nlohmann::json j = nlohmann::json::parse(read_file(r + step + "/state.json"));
    j.erase("recipe_sha256");
    return j;
  };
  EXPECT_EQ(state(run), state(ref));
  EXPECT_EQ(step_metrics(run), step_metrics(ref));
}

void soak(int ranks, int64_t trials) {
  const uint64_t seed = uint64_t(env_int("FTUNE_SOAK_SEED", 7));
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  const std::string base = testing::make_temp_dir("soak" + std::to_string(ranks));
  // The uninterrupted run, and how long one takes here: kill delays are drawn from [0, that).
  const std::string ref = base + "/ref";
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t rp = spawn(train_args(ref, ranks), base + "/ref.log");
  int status = 0;
  waitpid(rp, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(base + "/ref.log");
  const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("kill soak: %d rank(s), %lld kills, seed %llu, delays uniform in [0, %.2f s)\n",
              ranks, static_cast<long long>(trials), static_cast<unsigned long long>(seed), run_s);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> delay_s(0.0, run_s);

  int runs = 0, completed = 0, mid_write = 0, orphans = 0, resumed = 0;
  std::string run;
  int64_t last_step = -1;  // the step `latest` named after the last kill (-1: none)
  auto new_run = [&] {
    run = base + "/run" + std::to_string(runs++);
    last_step = -1;
  };
  // Starts the run again as a requeued job would: --resume once there is a checkpoint (it must
  // succeed), --auto-resume before (a fresh start, or a start over if a run died before its first
  // checkpoint).
  int64_t starts = 0;
  std::string log;
  auto start = [&] {
    std::vector<std::string> args = train_args(run, ranks);
    args.push_back(last_step >= 0 ? "--resume" : "--auto-resume");
    log = run + ".start" + std::to_string(++starts) + ".log";
    return spawn(args, log);
  };
  // A start that got as far as resuming resumed from the checkpoint `latest` named.
  auto check_resume = [&] {
    const std::string text = read_file(log);
    if (last_step < 0 || text.find("resumed from") == std::string::npos) return;
    char want[96];
    std::snprintf(want, sizeof want, "/checkpoints/step-%08lld at step %lld",
                  static_cast<long long>(last_step), static_cast<long long>(last_step));
    EXPECT_NE(text.find("resumed from " + run + want), std::string::npos) << text;
    ++resumed;
  };
  new_run();
  for (int64_t kills = 0; kills < trials;) {
    const pid_t pid = start();
    const double d = delay_s(rng);
    const auto t_start = std::chrono::steady_clock::now();
    bool exited = false;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() < d) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    kill_session(pid);  // with mpirun gone on its own, this reaps any rank it left
    check_resume();
    if (exited) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "a start of " << run << " failed on its own:\n"
          << read_file(log);
      expect_same_run(run, ref);
      if (::testing::Test::HasFailure()) return;
      ++completed;
      std::printf("  %s finished: the clean run's weights, moments, state and metrics\n",
                  fs::path(run).filename().c_str());
      new_run();
      continue;
    }
    ++kills;
    // What the kill left: half-written temp directories are fine, `latest` must be whole.
    bool temp = false;
    if (fs::is_directory(run + "/checkpoints"))
      for (const auto& e : fs::directory_iterator(run + "/checkpoints"))
        temp |= e.path().filename().string().find(".tmp.") != std::string::npos;
    int64_t step = -1;
    try {
      step = check_latest(run);
    } catch (const std::exception& e) {
      FAIL() << "kill " << kills << " after " << d << " s left a broken checkpoint: " << e.what();
    }
    char newer[64];
    std::snprintf(newer, sizeof newer, "/checkpoints/step-%08lld",
                  static_cast<long long>(step + 1));
    const bool orphan = step >= 0 && fs::exists(run + newer);
    ASSERT_GE(step, last_step) << "kill " << kills << ": latest went back";
    mid_write += temp;
    orphans += orphan;
    std::printf("  kill %2lld after %.3f s: latest %s%s\n", static_cast<long long>(kills), d,
                step < 0 ? "none" : ("step " + std::to_string(step)).c_str(),
                temp     ? " (killed mid-write: temp dir left)"
                : orphan ? " (killed between publishing a checkpoint and moving latest)"
                         : "");
    last_step = step;
  }
  // Finish the last run without a kill: it too must end on the clean run's bits.
  const pid_t pid = start();
  waitpid(pid, &status, 0);
  kill_session(pid);
  check_resume();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(log);
  expect_same_run(run, ref);
  ++completed;
  std::printf(
      "kill soak: %lld kills (%d inside a checkpoint write, %d between publishing and moving "
      "latest), %d resumes checked, %d runs finished bit-exact\n",
      static_cast<long long>(trials), mid_write, orphans, resumed, completed);
}

TEST(KillSoak, OneRank) {
  soak(1, env_int("FTUNE_SOAK_TRIALS", 20));
}

TEST(KillSoak, TwoZero2Ranks) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  soak(2, env_int("FTUNE_SOAK_TRIALS", 8));
#endif
}

}  // namespace
}  // namespace ftune
