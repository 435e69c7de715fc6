#include "engine/dist/launch_env.h"

#include <cstdlib>

#include "engine/base/error.h"

namespace ftune {

namespace {

int parse_int(const std::string& name, const std::string& value, int lo) {
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || v < lo || v > 1 << 24)
    throw Error("launch environment: " + name + "='" + value +
                "' is not a whole number >= " + std::to_string(lo));
  return int(v);
}

// Reads a group of variables that must be set together: all, or none (nullopt).
std::optional<std::vector<std::string>> group(const EnvLookup& get, const std::string& launcher,
                                              const std::vector<std::string>& names) {
  std::vector<std::string> values, missing;
  for (const auto& n : names) {
    auto v = get(n);
    if (v && !v->empty()) {
      values.push_back(*v);
    } else {
      missing.push_back(n);
      values.emplace_back();
    }
  }
  if (missing.size() == names.size()) return std::nullopt;
  if (!missing.empty()) {
    std::string m;
    for (const auto& n : missing) m += (m.empty() ? "" : ", ") + n;
    throw Error("launch environment: " + launcher + " variables are only partly set (missing " + m +
                "); launch with " + launcher + " as documented, or clear them for a " +
                "single-process run");
  }
  return values;
}

void check(LaunchEnv& e) {
  if (e.rank >= e.world_size)
    throw Error("launch environment (" + e.launcher + "): rank " + std::to_string(e.rank) +
                " is not below the world size " + std::to_string(e.world_size));
  if (e.local_rank > e.rank)
    throw Error("launch environment (" + e.launcher + "): local rank " +
                std::to_string(e.local_rank) + " exceeds the global rank " +
                std::to_string(e.rank));
}

}  // namespace

std::vector<std::string> expand_slurm_hosts(const std::string& list) {
  std::vector<std::string> out;
  size_t i = 0;
  auto bad = [&](const std::string& why) {
    return Error("SLURM_JOB_NODELIST '" + list + "': " + why);
  };
  while (i < list.size()) {
    // One host expression: literal text with bracketed ranges, up to a top-level comma.
    std::vector<std::string> hosts{""};
    while (i < list.size() && list[i] != ',') {
      if (list[i] == '[') {
        const size_t close = list.find(']', i);
        if (close == std::string::npos) throw bad("unclosed '['");
        std::vector<std::string> parts;
        const std::string inner = list.substr(i + 1, close - i - 1);
        if (inner.empty()) throw bad("empty '[]'");
        size_t p = 0;
        while (p <= inner.size()) {
          size_t comma = inner.find(',', p);
          if (comma == std::string::npos) comma = inner.size();
          const std::string item = inner.substr(p, comma - p);
          const size_t dash = item.find('-');
          if (item.empty()) throw bad("empty range item");
          if (dash == std::string::npos) {
            parts.push_back(item);
          } else {
            const std::string a = item.substr(0, dash), b = item.substr(dash + 1);
            if (a.empty() || b.empty() || a.find_first_not_of("0123456789") != std::string::npos ||
                b.find_first_not_of("0123456789") != std::string::npos)
              throw bad("bad range '" + item + "'");
            const long lo = std::stol(a), hi = std::stol(b);
            if (hi < lo || hi - lo > 100000) throw bad("bad range '" + item + "'");
            for (long v = lo; v <= hi; ++v) {
              std::string s = std::to_string(v);
              if (s.size() < a.size()) s.insert(0, a.size() - s.size(), '0');  // keep padding
              parts.push_back(s);
            }
          }
          p = comma + 1;
        }
        std::vector<std::string> next;
        for (const auto& h : hosts)
          for (const auto& part : parts) next.push_back(h + part);
        hosts.swap(next);
        i = close + 1;
      } else if (list[i] == ']') {
        throw bad("unmatched ']'");
      } else {
        for (auto& h : hosts) h += list[i];
        ++i;
      }
    }
    for (auto& h : hosts) {
      if (h.empty()) throw bad("empty host name");
      out.push_back(h);
    }
    if (i < list.size()) ++i;  // the comma
    if (i == list.size() && !list.empty() && list.back() == ',') throw bad("trailing ','");
  }
  if (out.empty()) throw bad("no hosts");
  return out;
}

std::string first_slurm_host(const std::string& nodelist) {
  return expand_slurm_hosts(nodelist).front();
}

LaunchEnv detect_launch_env(const EnvLookup& get) {
  LaunchEnv e;
  if (auto mpi = group(get, "mpirun (OpenMPI)", {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"})) {
    e.launcher = "mpi";
    e.rank = parse_int("OMPI_COMM_WORLD_RANK", (*mpi)[0], 0);
    e.world_size = parse_int("OMPI_COMM_WORLD_SIZE", (*mpi)[1], 1);
    auto local = get("OMPI_COMM_WORLD_LOCAL_RANK");
    e.local_rank = local ? parse_int("OMPI_COMM_WORLD_LOCAL_RANK", *local, 0) : 0;
  } else if (auto slurm = group(get, "Slurm (srun)", {"SLURM_PROCID", "SLURM_NTASKS"})) {
    e.launcher = "slurm";
    e.rank = parse_int("SLURM_PROCID", (*slurm)[0], 0);
    e.world_size = parse_int("SLURM_NTASKS", (*slurm)[1], 1);
    auto local = get("SLURM_LOCALID");
    e.local_rank = local ? parse_int("SLURM_LOCALID", *local, 0) : 0;
    check(e);
    auto nodes = get("SLURM_JOB_NODELIST");
    if (!nodes) nodes = get("SLURM_NODELIST");
    if (e.world_size > 1) {
      if (!nodes || nodes->empty())
        throw Error("launch environment: Slurm gives SLURM_NTASKS=" + std::to_string(e.world_size) +
                    " but no SLURM_JOB_NODELIST to find the " +
                    "master host; run the ranks with srun inside an allocation");
      e.master_addr = first_slurm_host(*nodes);
    }
    if (auto port = get("MASTER_PORT")) e.master_port = parse_int("MASTER_PORT", *port, 1);
  } else if (auto tr = group(get, "torchrun-style launch", {"RANK", "WORLD_SIZE"})) {
    e.launcher = "torchrun";
    e.rank = parse_int("RANK", (*tr)[0], 0);
    e.world_size = parse_int("WORLD_SIZE", (*tr)[1], 1);
    auto local = get("LOCAL_RANK");
    e.local_rank = local ? parse_int("LOCAL_RANK", *local, 0) : 0;
    check(e);
    if (e.world_size > 1) {
      auto addr = get("MASTER_ADDR");
      auto port = get("MASTER_PORT");
      if (!addr || addr->empty() || !port || port->empty())
        throw Error("launch environment: RANK/WORLD_SIZE are set for " +
                    std::to_string(e.world_size) + " ranks but MASTER_ADDR and MASTER_PORT " +
                    "are not; set both (host and port of rank 0)");
      e.master_addr = *addr;
      e.master_port = parse_int("MASTER_PORT", *port, 1);
    }
  }
  if (e.master_port > 65535)
    throw Error("launch environment: MASTER_PORT " + std::to_string(e.master_port) +
                " is not a TCP port");
  check(e);
  return e;
}

LaunchEnv detect_launch_env() {
  return detect_launch_env([](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  });
}

}  // namespace ftune
