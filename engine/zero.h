// ZeRO-2/3 for full fine-tunes (sharding: zero2 | zero3). One partition of the flat buffer:
// rank r owns shard_range(total, r, W) of the gradients, the AdamW moments and (ZeRO-3) the
// weights. Collectives run one unit at a time (ParamLayout::unit: the embedding, each decoder
// layer, the tail); a rank's part of a unit is the overlap of the unit with its shard, possibly
// empty, so uneven sizes need no padding and any unit size works with any rank count.
// ZeRO-2: every rank keeps whole weights; each unit's gradients are reduce-scattered into the
// shard as soon as the unit's backward is done, so only one layer's full gradients exist at a
// time (plus the embedding's and the tail's, which backward holds from the loss to its end).
// ZeRO-3: weights live only as shards; a unit's weights are all-gathered into a work slot just
// before use (forward, and again in backward) and the slot is reused by the next unit.
#pragma once
#include <cstddef>
#include <vector>

#include "engine/backend.h"
#include "engine/communicator.h"
#include "engine/model.h"
#include "engine/param_layout.h"

namespace ftune {

// Bytes the sharded buffers hold on this rank, by purpose.
struct ZeroMemory {
  size_t weights = 0;    // ZeRO-3: the shard + gather slots
  size_t gradients = 0;  // the shard + per-unit staging + the reduce buffer
};

class ZeroShards final : public ShardHooks {
 public:
  ZeroShards(Backend* be, Communicator& comm, const ParamLayout& layout, int stage, int threads);
  ~ZeroShards() override;

  int stage() const { return stage_; }
  ShardRange shard() const { return shard_; }
  float* shard_params() const { return params_.get(); }  // ZeRO-3 only (else null)
  float* shard_grads() const { return grads_.get(); }
  void zero_grads();
  ZeroMemory memory() const;

  // ZeRO-3, collective: rank 0 receives the whole weights in host memory (gathered unit by
  // unit), which params_to_host then returns (for the export); drop_whole() frees them again.
  void gather_whole_to_root();
  std::vector<float> take_whole();
  void drop_whole() { whole_.clear(), whole_.shrink_to_fit(); }
  // ZeRO-3: this rank's weight slice (shard().size() floats, host) from a sharded checkpoint.
  void load_shard(const std::vector<float>& slice);

  bool shards_params() const override { return stage_ >= 3; }
  const float* acquire_params(int u) override;
  void release_params(int u) override;
  float* acquire_grads(int u) override;
  void grads_done(int u) override;
  void params_from_host(const std::vector<float>& host) override;
  std::vector<float> params_to_host() const override;

 private:
  // A work buffer for one unit at a time: unit 0, the tail, or the current decoder layer.
  struct Slot {
    DeviceBuffer<float> buf;
    int unit = -1;
    int holds = 0;
  };
  Slot& slot(std::vector<Slot>& slots, int u);
  // Each rank's part of unit u, in rank order (the counts of the collectives).
  std::vector<size_t> parts(int u) const;
  ShardRange my_part(int u) const;

  Backend* be_;
  Communicator& comm_;
  ParamLayout layout_;
  int stage_;
  ExecContext ctx_;
  ShardRange shard_;
  DeviceBuffer<float> params_, grads_, reduced_;
  std::vector<Slot> param_slots_, grad_slots_;
  std::vector<float> whole_;
};

}  // namespace ftune
