#include "engine/backend/cpu/blas_core.h"

#ifndef FTUNE_NO_BLAS
#include <cblas.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <strings.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace ftune {
namespace {

// The environment the restart passes on: the core ftune chose (so a later look at
// OPENBLAS_CORETYPE can tell ftune's choice from the user's) and the notice to print once.
constexpr const char* kChosenEnv = "FTUNE_BLAS_CORE_CHOSEN";
constexpr const char* kNoticeEnv = "FTUNE_BLAS_CORE_NOTICE";

bool same_name(const std::string& a, const std::string& b) {
  return strcasecmp(a.c_str(), b.c_str()) == 0;
}

// How much vector hardware a core's kernels use: 0 SSE-era generic, 1 AVX, 2 AVX2+FMA,
// 3 AVX-512; -1 for a name this table does not know.
int core_tier(const std::string& core) {
  static const char* const kSse[] = {"Katmai",       "Coppermine", "Northwood", "Prescott",
                                     "Banias",       "Atom",       "Core2",     "Penryn",
                                     "Dunnington",   "Nehalem",    "Athlon",    "Opteron",
                                     "Opteron_SSE3", "Barcelona",  "Nano",      "Bobcat"};
  static const char* const kAvx[] = {"Sandybridge", "Bulldozer", "Piledriver", "Steamroller",
                                     "Excavator"};
  static const char* const kAvx2[] = {"Haswell", "Zen"};
  static const char* const kAvx512[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
  for (const char* n : kSse)
    if (same_name(core, n)) return 0;
  for (const char* n : kAvx)
    if (same_name(core, n)) return 1;
  for (const char* n : kAvx2)
    if (same_name(core, n)) return 2;
  for (const char* n : kAvx512)
    if (same_name(core, n)) return 3;
  return -1;
}

bool accepts(const std::vector<std::string>& accepted, const std::string& core) {
  for (const std::string& a : accepted)
    if (same_name(a, core)) return true;
  return false;
}

std::string trimmed(std::string s) {
  const auto b = s.find_first_not_of(" \t\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\n");
  return s.substr(b, e - b + 1);
}

std::string short_vendor(const std::string& v) {
  if (v == "GenuineIntel") return "Intel";
  if (v == "AuthenticAMD") return "AMD";
  if (v == "HygonGenuine") return "Hygon";
  return v.empty() ? "unknown vendor" : v;
}

std::string isa_words(const CpuIsa& isa) {
  if (!isa.usable_avx512()) return isa.usable_avx2() ? "AVX2" : "no AVX2";
  std::string w = "AVX-512";
  if (isa.avx512_bf16) w += ", AVX512_BF16";
  if (isa.amx_bf16 && isa.amx_tile && isa.os_amx) w += ", AMX";
  return w;
}

}  // namespace

CpuIsa read_cpu_isa() {
  CpuIsa isa;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  const unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf == 0) return isa;
  __cpuid(0, a, b, c, d);
  char vendor[13] = {};
  for (int i = 0; i < 4; ++i) {
    vendor[i] = char(b >> (8 * i));
    vendor[4 + i] = char(d >> (8 * i));
    vendor[8 + i] = char(c >> (8 * i));
  }
  isa.vendor = vendor;
  __cpuid(1, a, b, c, d);
  // Extended family and model only count for base families 15 (and 6, for the model).
  const int base_family = int((a >> 8) & 0xf), base_model = int((a >> 4) & 0xf);
  isa.family = base_family == 0xf ? base_family + int((a >> 20) & 0xff) : base_family;
  isa.model = (base_family == 6 || base_family == 0xf) ? (int((a >> 16) & 0xf) << 4) | base_model
                                                       : base_model;
  isa.fma = (c >> 12) & 1;
  isa.avx = (c >> 28) & 1;
  const bool osxsave = (c >> 27) & 1;
  if (osxsave) {
    // XCR0: which register state the OS saves on a context switch.
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const uint64_t xcr0 = (uint64_t(hi) << 32) | lo;
    isa.os_avx = (xcr0 & 0x6) == 0x6;                     // XMM and YMM
    isa.os_avx512 = isa.os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
    isa.os_amx = ((xcr0 >> 17) & 3) == 3;                 // XTILECFG, XTILEDATA
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    isa.avx2 = (b >> 5) & 1;
    isa.avx512f = (b >> 16) & 1;
    isa.avx512dq = (b >> 17) & 1;
    isa.avx512bw = (b >> 30) & 1;
    isa.avx512vl = (b >> 31) & 1;
    isa.amx_bf16 = (d >> 22) & 1;
    isa.amx_tile = (d >> 24) & 1;
    const unsigned subleaves = a;
    if (subleaves >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      isa.avx512_bf16 = (a >> 5) & 1;
    }
  }
#endif
  return isa;
}

const std::vector<std::string>& default_accepted_cores() {
  // Checked with OPENBLAS_VERBOSE=2 on Debian's 0.3.21 (the DYNAMIC_ARCH build ftune links).
  static const std::vector<std::string> names = {"Sandybridge", "Haswell", "Zen", "SkylakeX"};
  return names;
}

BlasCoreDecision decide_blas_core(const CpuIsa& isa, const std::string& core_in_use,
                                  bool user_set_coretype,
                                  const std::vector<std::string>& accepted) {
  BlasCoreDecision d;
  d.core = core_in_use;
  if (user_set_coretype) {
    d.reason = "OPENBLAS_CORETYPE is set: the user's choice";
    return d;
  }
  const int have = core_tier(core_in_use);
  if (have < 0) {
    d.reason = "core " + core_in_use + " is not in ftune's table";
    return d;
  }
  const int can = isa.usable_avx512() ? 3 : isa.usable_avx2() ? 2 : -1;
  if (can < 0) {
    d.reason = "the CPU has no usable AVX2";
    return d;
  }
  if (have >= can) {
    d.reason = "core " + core_in_use + " fits the CPU";
    return d;
  }
  // The best kernels this CPU runs, newest first; the first the library accepts wins.
  std::vector<std::string> wanted;
  if (can == 3) {
    if (isa.avx512_bf16 && isa.amx_bf16 && isa.amx_tile && isa.os_amx)
      wanted.push_back("SapphireRapids");
    if (isa.avx512_bf16) wanted.push_back("Cooperlake");
    wanted.push_back("SkylakeX");
  } else {
    const bool zen = (isa.vendor == "AuthenticAMD" &&
                      (isa.family == 0x17 || isa.family == 0x19 || isa.family == 0x1a)) ||
                     (isa.vendor == "HygonGenuine" && isa.family == 0x18);
    if (zen) wanted.push_back("Zen");
    wanted.push_back("Haswell");
  }
  for (const std::string& w : wanted) {
    if (!accepts(accepted, w)) continue;
    d.rerun = true;
    d.core = w;
    d.reason = "core " + core_in_use + " is below the CPU's " + isa_words(isa);
    return d;
  }
  d.reason = "OpenBLAS accepts none of the cores for the CPU's " + isa_words(isa);
  return d;
}

std::string blas_core_notice(const CpuIsa& isa, const std::string& core_in_use,
                             const std::string& chosen) {
  const std::string kernels = core_tier(core_in_use) == 0
                                  ? "its generic " + core_in_use + " kernels"
                                  : "its older " + core_in_use + " kernels";
  return "ftune: OpenBLAS chose " + kernels + " for this CPU (" + short_vendor(isa.vendor) +
         " family " + std::to_string(isa.family) + " model " + std::to_string(isa.model) + ", " +
         isa_words(isa) + "); running with OPENBLAS_CORETYPE=" + chosen +
         " (set OPENBLAS_CORETYPE to choose yourself)";
}

std::string blas_version_from_config(const std::string& config) {
  std::istringstream in(config);
  std::string name, version;
  in >> name >> version;
  if (name.empty()) return "OpenBLAS (version unknown)";
  return version.empty() ? name : name + " " + version;
}

bool gemm_uses_openblas() {
#ifdef FTUNE_NO_BLAS
  return false;
#else
  return true;
#endif
}

std::string blas_core_in_use() {
#ifdef FTUNE_NO_BLAS
  return "";
#else
  const char* name = openblas_get_corename();
  return name ? trimmed(name) : "";
#endif
}

std::string gemm_path_line(int threads) {
  const std::string count = std::to_string(threads) + (threads == 1 ? " thread" : " threads");
#ifdef FTUNE_NO_BLAS
  return "GEMM: built-in (portable build, no BLAS library), " + count;
#else
  const char* config = openblas_get_config();
  std::string line =
      "GEMM: " + blas_version_from_config(config ? config : "") + ", core " + blas_core_in_use();
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  const char* chosen = std::getenv(kChosenEnv);
  if (set) line += chosen && same_name(set, chosen) ? " (set by ftune)" : " (OPENBLAS_CORETYPE)";
  return line + ", " + count;
#endif
}

bool prepare_blas_core_restart() {
#ifdef FTUNE_NO_BLAS
  return false;
#else
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  if (const char* notice = std::getenv(kNoticeEnv)) {
    // The restarted process: say once what happened (not again in processes it starts).
    const std::string text = notice;
    unsetenv(kNoticeEnv);
    const char* chosen = std::getenv(kChosenEnv);
    const std::string running = blas_core_in_use();
    if (user && chosen && same_name(user, chosen) && !same_name(running, chosen))
      std::fprintf(stderr,
                   "ftune: warning: OpenBLAS did not take OPENBLAS_CORETYPE=%s and runs its %s "
                   "kernels; set OPENBLAS_CORETYPE to a core it knows\n",
                   chosen, running.c_str());
    else
      std::fprintf(stderr, "%s\n", text.c_str());
    return false;
  }
  const char* test_core = std::getenv("FTUNE_TEST_BLAS_CORE");
  const std::string core = test_core && *test_core ? test_core : blas_core_in_use();
  const CpuIsa isa = read_cpu_isa();
  const BlasCoreDecision d = decide_blas_core(isa, core, user != nullptr, default_accepted_cores());
  if (!d.rerun) return false;
  // OPENBLAS_CORETYPE now being set is also what stops the restarted process from restarting.
  setenv("OPENBLAS_CORETYPE", d.core.c_str(), 1);
  setenv(kChosenEnv, d.core.c_str(), 1);
  setenv(kNoticeEnv, blas_core_notice(isa, core, d.core).c_str(), 1);
  return true;
#endif
}

void blas_core_restart_failed() {
  const int err = errno;  // execv's
  const char* chosen = std::getenv(kChosenEnv);
  if (!std::getenv(kNoticeEnv) || !chosen) return;
  std::fprintf(stderr,
               "ftune: warning: could not restart with OPENBLAS_CORETYPE=%s (%s); this run keeps "
               "OpenBLAS's %s kernels (set OPENBLAS_CORETYPE to choose yourself)\n",
               chosen, std::strerror(err), blas_core_in_use().c_str());
  // Processes this one starts decide for themselves.
  unsetenv(kNoticeEnv);
  unsetenv(kChosenEnv);
  unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace ftune
