// The OpenBLAS core check: the mapping from CPU and core to a decision, cpuid against
// /proc/cpuinfo, and the restart of the real binary with the chosen core.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "engine/backend/cpu/blas_core.h"
#include "engine/base/fs_util.h"
#include "test_util.h"

namespace ftune {
namespace {

CpuIsa avx2_cpu(const std::string& vendor, int family, int model) {
  CpuIsa c;
  c.vendor = vendor;
  c.family = family;
  c.model = model;
  c.avx = c.avx2 = c.fma = c.os_avx = true;
  return c;
}

CpuIsa avx512_cpu(int model) {
  CpuIsa c = avx2_cpu("GenuineIntel", 6, model);
  c.avx512f = c.avx512bw = c.avx512vl = c.avx512dq = c.os_avx512 = true;
  return c;
}

// Emerald Rapids, the CPU that Debian's OpenBLAS 0.3.21 runs on Prescott kernels.
CpuIsa emerald_rapids() {
  CpuIsa c = avx512_cpu(207);
  c.avx512_bf16 = c.amx_bf16 = c.amx_tile = c.os_amx = true;
  return c;
}

const std::vector<std::string> kAllCores = {"Sandybridge", "Haswell",    "Zen",
                                            "SkylakeX",    "Cooperlake", "SapphireRapids"};

BlasCoreDecision decide(const CpuIsa& isa, const std::string& core, bool user = false) {
  return decide_blas_core(isa, core, user, default_accepted_cores());
}

TEST(BlasCore, AvxFiveTwelveOnGenericCoreGetsSkylakeX) {
  const BlasCoreDecision d = decide(emerald_rapids(), "Prescott");
  EXPECT_TRUE(d.rerun);
  EXPECT_EQ(d.core, "SkylakeX");  // 0.3.21 refuses Cooperlake and SapphireRapids
  EXPECT_TRUE(decide(avx512_cpu(85), "Nehalem").rerun);
  // The same CPU as a library that accepts the newer names would see it.
  EXPECT_EQ(decide_blas_core(emerald_rapids(), "Prescott", false, kAllCores).core,
            "SapphireRapids");
  CpuIsa cooper = avx512_cpu(85);
  cooper.avx512_bf16 = true;
  EXPECT_EQ(decide_blas_core(cooper, "Prescott", false, kAllCores).core, "Cooperlake");
  // AMX the OS does not enable is no AMX.
  CpuIsa no_amx_state = emerald_rapids();
  no_amx_state.os_amx = false;
  EXPECT_EQ(decide_blas_core(no_amx_state, "Prescott", false, kAllCores).core, "Cooperlake");
}

TEST(BlasCore, AvxTwoAmdGetsZenAndIntelGetsHaswell) {
  const BlasCoreDecision zen3 = decide(avx2_cpu("AuthenticAMD", 0x19, 1), "Prescott");
  EXPECT_TRUE(zen3.rerun);
  EXPECT_EQ(zen3.core, "Zen");
  EXPECT_EQ(decide(avx2_cpu("AuthenticAMD", 0x17, 49), "Core2").core, "Zen");
  EXPECT_EQ(decide(avx2_cpu("AuthenticAMD", 0x1a, 2), "prescott").core, "Zen");  // any case
  EXPECT_EQ(decide(avx2_cpu("HygonGenuine", 0x18, 0), "Barcelona").core, "Zen");
  const BlasCoreDecision intel = decide(avx2_cpu("GenuineIntel", 6, 63), "Prescott");
  EXPECT_TRUE(intel.rerun);
  EXPECT_EQ(intel.core, "Haswell");
  // A core a tier below the CPU counts too.
  EXPECT_EQ(decide(avx2_cpu("GenuineIntel", 6, 158), "Sandybridge").core, "Haswell");
  // AVX-512 the OS does not save is AVX2.
  CpuIsa no_zmm = avx512_cpu(85);
  no_zmm.os_avx512 = false;
  EXPECT_EQ(decide(no_zmm, "Prescott").core, "Haswell");
  EXPECT_FALSE(decide(no_zmm, "Haswell").rerun);
}

TEST(BlasCore, KeepsTheUsersChoice) {
  const BlasCoreDecision d = decide(emerald_rapids(), "Prescott", /*user=*/true);
  EXPECT_FALSE(d.rerun);
  EXPECT_EQ(d.core, "Prescott");
  EXPECT_FALSE(decide(avx2_cpu("AuthenticAMD", 0x19, 1), "Prescott", true).rerun);
}

TEST(BlasCore, KeepsACoreThatFits) {
  EXPECT_FALSE(decide(avx2_cpu("AuthenticAMD", 0x19, 1), "Zen").rerun);
  EXPECT_FALSE(decide(avx2_cpu("AuthenticAMD", 0x19, 1), "Haswell").rerun);
  EXPECT_FALSE(decide(avx2_cpu("GenuineIntel", 6, 63), "Haswell").rerun);
  EXPECT_FALSE(decide(emerald_rapids(), "SkylakeX").rerun);
  EXPECT_FALSE(decide_blas_core(emerald_rapids(), "Cooperlake", false, kAllCores).rerun);
  // A name the table does not know: a newer OpenBLAS knows the CPU better than ftune does.
  EXPECT_FALSE(decide(emerald_rapids(), "GraniteRapids").rerun);
  EXPECT_FALSE(decide(emerald_rapids(), "Unknown").rerun);
}

TEST(BlasCore, KeepsWithoutUsableAvxTwo) {
  CpuIsa old = avx2_cpu("GenuineIntel", 6, 42);
  old.avx2 = false;  // Sandy Bridge
  EXPECT_FALSE(decide(old, "Prescott").rerun);
  CpuIsa no_fma = avx2_cpu("GenuineIntel", 6, 63);
  no_fma.fma = false;
  EXPECT_FALSE(decide(no_fma, "Prescott").rerun);
  CpuIsa no_ymm = avx2_cpu("AuthenticAMD", 0x19, 1);
  no_ymm.os_avx = false;  // the OS does not save YMM registers
  EXPECT_FALSE(decide(no_ymm, "Prescott").rerun);
  EXPECT_FALSE(decide(CpuIsa{}, "Prescott").rerun);
  // Nothing the library accepts: keep rather than set a name it would refuse.
  EXPECT_FALSE(decide_blas_core(emerald_rapids(), "Prescott", false, {"Zen"}).rerun);
}

TEST(BlasCore, NoticeNamesCpuCoreAndWayOut) {
  EXPECT_EQ(blas_core_notice(avx512_cpu(207), "Prescott", "SkylakeX"),
            "ftune: OpenBLAS chose its generic Prescott kernels for this CPU (Intel family 6 "
            "model 207, AVX-512); running with OPENBLAS_CORETYPE=SkylakeX (set OPENBLAS_CORETYPE "
            "to choose yourself)");
  const std::string amd = blas_core_notice(avx2_cpu("AuthenticAMD", 25, 1), "Sandybridge", "Zen");
  EXPECT_NE(amd.find("its older Sandybridge kernels for this CPU (AMD family 25 model 1, AVX2)"),
            std::string::npos)
      << amd;
}

TEST(BlasCore, VersionFromConfig) {
  EXPECT_EQ(blas_version_from_config("OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY "
                                     "USE_OPENMP "),
            "OpenBLAS 0.3.21");
  EXPECT_EQ(blas_version_from_config("  OpenBLAS 0.3.27"), "OpenBLAS 0.3.27");
  EXPECT_EQ(blas_version_from_config(""), "OpenBLAS (version unknown)");
}

// /proc/cpuinfo's first processor: key -> value.
std::map<std::string, std::string> cpuinfo() {
  std::ifstream in("/proc/cpuinfo");
  std::map<std::string, std::string> m;
  std::string line;
  while (std::getline(in, line) && !line.empty()) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    m[key] = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
  }
  return m;
}

TEST(BlasCore, CpuidAgreesWithProcCpuinfo) {
#if !(defined(__x86_64__) || defined(__i386__))
  GTEST_SKIP() << "cpuid is x86 only";
#endif
  const auto info = cpuinfo();
  if (info.count("vendor_id") == 0) GTEST_SKIP() << "no /proc/cpuinfo";
  const CpuIsa isa = read_cpu_isa();
  EXPECT_EQ(isa.vendor, info.at("vendor_id"));
  EXPECT_EQ(std::to_string(isa.family), info.at("cpu family"));
  EXPECT_EQ(std::to_string(isa.model), info.at("model"));
  std::set<std::string> flags;
  std::istringstream words(info.at("flags"));
  for (std::string w; words >> w;) flags.insert(w);
  // Linux drops a flag whose register state it does not enable, as the os_* fields do.
  EXPECT_EQ(flags.count("avx2") == 1, isa.avx2 && isa.os_avx);
  EXPECT_EQ(flags.count("fma") == 1, isa.fma && isa.os_avx);
  EXPECT_EQ(flags.count("avx512f") == 1, isa.avx512f && isa.os_avx512);
  EXPECT_EQ(flags.count("avx512bw") == 1, isa.avx512bw && isa.os_avx512);
  EXPECT_EQ(flags.count("avx512vl") == 1, isa.avx512vl && isa.os_avx512);
  EXPECT_EQ(flags.count("avx512dq") == 1, isa.avx512dq && isa.os_avx512);
  EXPECT_EQ(flags.count("avx512_bf16") == 1, isa.avx512_bf16 && isa.os_avx512);
  EXPECT_EQ(flags.count("amx_tile") == 1, isa.amx_tile && isa.os_amx);
  if (isa.usable_avx512()) {
    EXPECT_TRUE(isa.usable_avx2());
  }
}

TEST(BlasCore, GemmPathLineNamesLibraryCoreAndThreads) {
  const std::string line = gemm_path_line(3);
  EXPECT_EQ(line.rfind("GEMM: ", 0), 0u) << line;
  EXPECT_NE(line.find(", 3 threads"), std::string::npos) << line;
  if (!gemm_uses_openblas()) {
    EXPECT_NE(line.find("built-in"), std::string::npos) << line;
    return;
  }
  EXPECT_NE(line.find("GEMM: OpenBLAS 0."), std::string::npos) << line;
  EXPECT_FALSE(blas_core_in_use().empty());
  EXPECT_NE(line.find("core " + blas_core_in_use()), std::string::npos) << line;
  EXPECT_NE(gemm_path_line(1).find(", 1 thread"), std::string::npos);
}

// The binary with a tiny one-step bench: exit code, stdout, stderr.
struct Split {
  int code;
  std::string out, err;
};
Split run_bench(const std::string& env) {
  const std::string dir = testing::make_temp_dir("blas_core");
  const std::string cmd =
      "( env -u OPENBLAS_CORETYPE -u FTUNE_BLAS_CORE_CHOSEN -u FTUNE_BLAS_CORE_NOTICE " + env +
      " " + testing::ftune_binary() +
      " bench --hidden 32 --layers 1 --heads 2 --kv-heads 1 --intermediate 64 --vocab 64 "
      "--seq 8 --batch 1 --steps 1 --warmup 0 --threads 1 2>" +
      dir + "/err )";
  Split s;
  s.code = testing::run_command(cmd, &s.out);
  s.err = read_file(dir + "/err");
  return s;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
  return n;
}

TEST(BlasCore, BinaryRestartsOnceWithTheChosenCore) {
  if (!gemm_uses_openblas()) GTEST_SKIP() << "portable build: no OpenBLAS";
  const BlasCoreDecision want =
      decide_blas_core(read_cpu_isa(), "Prescott", false, default_accepted_cores());
  // OMP_WAIT_POLICY unset as well: both settings in one restart, one notice.
  const Split s = run_bench("-u OMP_WAIT_POLICY FTUNE_TEST_BLAS_CORE=Prescott");
  ASSERT_EQ(s.code, 0) << s.out << s.err;
  if (!want.rerun) {  // a CPU without usable AVX2: Prescott is all it gets
    EXPECT_EQ(count(s.err, "OpenBLAS chose"), 0u) << s.err;
    EXPECT_EQ(count(s.out, "(set by ftune)"), 0u) << s.out;
    return;
  }
  EXPECT_EQ(count(s.err, "ftune: OpenBLAS chose its generic Prescott kernels for this CPU"), 1u)
      << s.err;
  EXPECT_EQ(count(s.err, "running with OPENBLAS_CORETYPE=" + want.core + " "), 1u) << s.err;
  EXPECT_EQ(count(s.err, "warning"), 0u) << s.err;
  EXPECT_EQ(count(s.out, "GEMM: OpenBLAS"), 1u) << s.out;
  EXPECT_EQ(count(s.out, ", core " + want.core + " (set by ftune), 1 thread"), 1u) << s.out;
}

TEST(BlasCore, BinaryKeepsTheUsersCore) {
  if (!gemm_uses_openblas()) GTEST_SKIP() << "portable build: no OpenBLAS";
  const Split s = run_bench("FTUNE_TEST_BLAS_CORE=Prescott OPENBLAS_CORETYPE=Prescott");
  ASSERT_EQ(s.code, 0) << s.out << s.err;
  EXPECT_EQ(count(s.err, "OpenBLAS chose"), 0u) << s.err;
  // The line reports the core OpenBLAS really runs, here the one the user forced.
  EXPECT_EQ(count(s.out, ", core Prescott (OPENBLAS_CORETYPE), 1 thread"), 1u) << s.out;
}

}  // namespace
}  // namespace ftune
