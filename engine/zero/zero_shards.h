// ZeRO-2/3 for full fine-tunes (sharding: zero2 | zero3). One partition of the flat buffer:
// rank r owns shard_range(total, r, W) of the gradients, the AdamW moments and (ZeRO-3) the
// weights. Collectives run one unit at a time (ParamLayout::unit: the embedding, each decoder
// layer, the tail); a rank's part of a unit is the overlap of the unit with its shard, possibly
// empty, so uneven sizes need no padding and any unit size works with any rank count.
// ZeRO-2: every rank keeps whole weights; each unit's gradients are reduce-scattered into the
// shard as soon as the unit's backward is done, so only one layer's full gradients exist at a
// time (plus the embedding's and the tail's, which backward holds from the loss to its end).
// With overlap the layers take turns in two gradient slots: a layer's reduce-scatter, in place
// (Communicator::start_reduce_scatter_sum_in_place), runs while the next layer's backward fills
// the other slot, and is added into the shard when its slot is needed again or backward ends.
// ZeRO-3: weights live only as shards; a unit's weights are all-gathered into a work slot just
// before use (forward, and again in backward) and the slot is reused by the next unit. With
// overlap the decoder layers take turns in two slots and the model's hint starts the next
// layer's gather (Communicator::start_all_gather_v) while the current one computes. A slot keeps
// its unit after release, so a unit used again before its slot is needed (the tail and a tied
// head right after forward, the last layers at the turn into backward) is not gathered twice;
// invalidate_weights() forgets them all when the shard's weights change.
#pragma once
#include <cstddef>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/dist/communicator.h"
#include "engine/model/model.h"
#include "engine/model/param_layout.h"

namespace ftune {

// Bytes the sharded buffers hold on this rank, by purpose.
struct ZeroMemory {
  size_t weights = 0;    // ZeRO-3: the shard + gather slots
  size_t gradients = 0;  // the shard + per-unit staging + the reduce buffer
};

class ZeroShards final : public ShardHooks {
 public:
  ZeroShards(Backend* be, Communicator& comm, const ParamLayout& layout, int stage, int threads,
             bool overlap = true);
  ~ZeroShards() override;

  int stage() const { return stage_; }
  ShardRange shard() const { return shard_; }
  float* shard_params() const { return params_.get(); }  // ZeRO-3 only (else null)
  float* shard_grads() const { return grads_.get(); }
  void zero_grads();
  // The shard's gradients are complete once this returns: reductions still under way are
  // finished and added (backward's last unit does it too).
  void finish_grads();
  ZeroMemory memory() const;
  // ZeRO-3: call before the shard's weights change (the optimizer step; loads call it
  // themselves). Finishes gathers still under way and forgets every gathered unit.
  void invalidate_weights();

  // ZeRO-3 weight gathers so far: by how they were served.
  struct GatherStats {
    int64_t waited = 0;      // gathered when acquired (the compute waited for all of it)
    int64_t prefetched = 0;  // started ahead by a hint, finished when acquired
    int64_t reused = 0;      // still in its slot from an earlier use
    double wait_s = 0;       // host time spent gathering or finishing gathers
  };
  const GatherStats& gather_stats() const { return stats_; }

  // ZeRO-3, collective: unit u's weights to rank 0's host memory (unit-local floats, valid until
  // the next call; null on the other ranks). The export streams the model through this, so no
  // rank ever holds all of it.
  const float* gather_unit_to_root(int u);
  size_t largest_host_unit() const { return largest_host_unit_; }  // floats, for the record
  // ZeRO-3, collective: rank 0 receives the whole weights in host memory (gathered unit by
  // unit), which params_to_host then returns. For tests that compare a sharded model with a
  // whole one; a run exports through gather_unit_to_root instead.
  void gather_whole_to_root();
  // ZeRO-3: this rank's weight slice (shard().size() floats, host) from a sharded checkpoint.
  void load_shard(const std::vector<float>& slice);

  bool shards_params() const override { return stage_ >= 3; }
  const float* acquire_params(int u) override;
  void release_params(int u) override;
  void prefetch_params(int u) override;
  float* acquire_grads(int u) override;
  void grads_done(int u) override;
  void params_from_host(const std::vector<float>& host) override;
  std::vector<float> params_to_host() const override;

 private:
  // A work buffer for one unit at a time: unit 0, the tail, or the current decoder layer.
  struct Slot {
    DeviceBuffer<float> buf;
    int unit = -1;          // whose data it holds (or is gathering / reducing); -1: none
    int holds = 0;          // acquires not yet released
    uint64_t pending = 0;   // a started collective's handle (finish before use)
    bool reducing = false;  // gradients: being reduced in place, not yet added to the shard
    size_t result_at = 0;   // where in buf this rank's reduced part is left
  };
  // Weights or gradients: the unit's slot (layers alternate between two with overlap).
  Slot& slot(std::vector<Slot>& slots, int u);
  void finish(Slot& s);
  // A gradient slot's reduce-scatter, finished and added into the shard.
  void complete_grads(Slot& s);
  // Unit u's weights into slot s, waiting for them.
  void gather(Slot& s, int u);
  // Each rank's part of unit u, in rank order (the counts of the collectives).
  std::vector<size_t> parts(int u) const;
  ShardRange my_part(int u) const;

  Backend* be_;
  Communicator& comm_;
  ParamLayout layout_;
  int stage_;
  bool overlap_;
  bool alone_;  // the single-process communicator: units move by backend copies, nothing waits
  GatherStats stats_;
  ExecContext ctx_;
  ShardRange shard_;
  DeviceBuffer<float> params_, grads_, reduced_;
  std::vector<Slot> param_slots_, grad_slots_;
  std::vector<float> whole_;
  std::vector<float> host_unit_;  // gather_unit_to_root's buffer (rank 0)
  size_t largest_host_unit_ = 0;
};

}  // namespace ftune
