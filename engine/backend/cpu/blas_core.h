// Which OpenBLAS kernels the CPU backend runs on, and whether they fit the CPU. OpenBLAS picks its
// core once, when the library loads; a CPU newer than the OpenBLAS build (Debian's 0.3.21 on
// Emerald Rapids) gets its generic Prescott kernels, about 4x slower than the right ones, with no
// word said. main() asks decide_blas_core() and restarts itself with OPENBLAS_CORETYPE when the
// core is below what the CPU can run, and every run shows its GEMM path (gemm_path_line()).
#pragma once
#include <string>
#include <vector>

namespace ftune {

// What cpuid says the CPU can do; the os_* fields say whether the OS saves that register state
// (XGETBV), without which the instructions fault.
struct CpuIsa {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", "HygonGenuine", ...
  int family = 0;      // display family and model, as Linux's /proc/cpuinfo shows them
  int model = 0;
  bool avx = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, amx_bf16 = false, amx_tile = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;

  bool usable_avx2() const { return avx && avx2 && fma && os_avx; }
  bool usable_avx512() const {
    return usable_avx2() && avx512f && avx512bw && avx512vl && avx512dq && os_avx512;
  }
};

// This CPU, read with cpuid (an empty CpuIsa off x86).
CpuIsa read_cpu_isa();

struct BlasCoreDecision {
  bool rerun = false;  // restart with OPENBLAS_CORETYPE=core
  std::string core;
  std::string reason;  // why it keeps or switches, for messages and tests
};

// Names that OPENBLAS_CORETYPE accepts in every OpenBLAS ftune has been checked against (0.3.21
// rejects Cooperlake and SapphireRapids, and an unknown name leaves it on Prescott).
const std::vector<std::string>& default_accepted_cores();

// Pure: keep `core_in_use`, or re-run with a better core that `accepted` holds. Keeps whenever
// the user set OPENBLAS_CORETYPE, the CPU lacks usable AVX2, or the core is one this table does
// not know (a newer OpenBLAS knows better than this table).
BlasCoreDecision decide_blas_core(const CpuIsa& isa, const std::string& core_in_use,
                                  bool user_set_coretype, const std::vector<std::string>& accepted);

// The one-line notice printed when ftune runs with another core than OpenBLAS chose.
std::string blas_core_notice(const CpuIsa& isa, const std::string& core_in_use,
                             const std::string& chosen);

// "OpenBLAS 0.3.21" from openblas_get_config()'s "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...".
std::string blas_version_from_config(const std::string& config);

// Whether this build multiplies with OpenBLAS (false in portable builds: the built-in GEMM).
bool gemm_uses_openblas();
// The core OpenBLAS runs ("Zen"); empty without OpenBLAS.
std::string blas_core_in_use();

// "GEMM: OpenBLAS 0.3.21, core Zen, 2 threads", saying where the core came from when the
// environment set it ("core SkylakeX (set by ftune)", "core Prescott (OPENBLAS_CORETYPE)").
std::string gemm_path_line(int threads);

// What main() does first, before OpenMP, MPI or anything else starts. Returns true when it set
// OPENBLAS_CORETYPE (and the notice for the restarted process to print): the caller must then
// re-exec. In the restarted process it prints that notice on stderr, once, or a warning when
// OpenBLAS did not take the core. FTUNE_TEST_BLAS_CORE=<name> stands in for the core OpenBLAS
// reports, so the restart can be tested on any CPU. Does nothing without OpenBLAS.
bool prepare_blas_core_restart();
// After a failed re-exec: says on stderr that the better core could not be applied.
void blas_core_restart_failed();

}  // namespace ftune
