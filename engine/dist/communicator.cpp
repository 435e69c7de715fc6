#include "engine/dist/communicator.h"

#include <algorithm>

namespace ftune {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum_host(double*, size_t) override {}
  void barrier() override {}
  void all_gather(float*, size_t) override {}
  void gather_to_root(const float* shard, float* full, size_t n) override {
    if (shard != full) std::copy(shard, shard + n, full);
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) override {
    if (in != out) std::copy(in, in + counts.at(0), out);
  }
  void all_gather_v(const float* mine, float* out, const std::vector<size_t>& counts) override {
    if (mine != out) std::copy(mine, mine + counts.at(0), out);
  }
  bool is_local() const override { return true; }
};

}  // namespace

ShardRange shard_range(size_t n, int rank, int world_size) {
  const size_t per = (n + size_t(world_size) - 1) / size_t(world_size);
  const size_t begin = std::min(n, per * size_t(rank));
  return {begin, std::min(n, begin + per)};
}

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace ftune
