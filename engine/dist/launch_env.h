// Where this process sits in a multi-process job, read from the launcher's environment (issue
// #6). Detected in this order, the first launcher whose variables are present wins:
//   1. MPI (mpirun/mpiexec, OpenMPI): OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK, or PMIx's
//      PMIX_RANK with OMPI's size;
//   2. Slurm (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master is the first host of
//      SLURM_JOB_NODELIST (or SLURM_NODELIST), e.g. "gpu[07-09,12],login1" -> gpu07;
//   3. torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
// None of them: a single process (rank 0 of 1). A partial or inconsistent set is an error naming
// the variables, never a silent single-rank run.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ftune {

struct LaunchEnv {
  std::string launcher = "none";  // none | mpi | slurm | torchrun
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;  // empty when the launcher does not say (MPI bootstraps by itself)
  int master_port = 0;
};

// `get` returns a variable's value, or nullopt when it is unset (tests pass a map; the real
// environment is read by detect_launch_env()).
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
LaunchEnv detect_launch_env(const EnvLookup& get);
LaunchEnv detect_launch_env();

// Expands the first host of a Slurm host list: "a[01-03,07]b,c" -> "a01b". Throws ftune::Error
// on a malformed list.
std::string first_slurm_host(const std::string& nodelist);
// Every host of a Slurm host list, in order.
std::vector<std::string> expand_slurm_hosts(const std::string& nodelist);

}  // namespace ftune
