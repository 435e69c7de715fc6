#include "engine/zero/zero_shards.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>

#include "engine/base/error.h"

namespace ftune {

ZeroShards::ZeroShards(Backend* be, Communicator& comm, const ParamLayout& layout, int stage,
                       int threads, bool overlap)
    : be_(be),
      comm_(comm),
      layout_(layout),
      stage_(stage),
      overlap_(overlap),
      alone_(comm.is_local()) {
  FTUNE_CHECK(stage == 2 || stage == 3, "ZeroShards is for ZeRO-2 and ZeRO-3");
  ctx_.threads = threads;
  shard_ = shard_range(layout_.total(), comm_.rank(), comm_.world_size());
  grads_ = DeviceBuffer<float>(be_, shard_.size());
  if (stage_ >= 3) params_ = DeviceBuffer<float>(be_, shard_.size());
  // Slots 0 and 1: the embedding and the tail; 2 (and 3 with overlap): decoder layers, which
  // alternate so that the next layer's collective runs while one computes.
  const size_t sizes[3] = {layout_.unit(0).size(), layout_.unit(layout_.tail_unit()).size(),
                           layout_.max_layer_size()};
  const int n = overlap_ ? 4 : 3;
  for (std::vector<Slot>* slots : {&grad_slots_, &param_slots_}) {
    if (slots == &param_slots_ && stage_ < 3) break;
    slots->resize(size_t(n));
    for (int i = 0; i < n; ++i)
      (*slots)[size_t(i)].buf = DeviceBuffer<float>(be_, sizes[std::min(i, 2)]);
  }
  // Where this rank's reduced part of a unit lands before it is added to the shard; with
  // overlap each reduction runs in place in its slot instead, and needs none.
  if (!overlap_) {
    size_t largest_part = 0;
    for (int u = 0; u < layout_.num_units(); ++u)
      largest_part = std::max(largest_part, my_part(u).size());
    reduced_ = DeviceBuffer<float>(be_, largest_part);
  }
}

ZeroShards::~ZeroShards() {
  // Every started collective is finished on the way out, unless an error is unwinding: the
  // ranks then no longer meet, and the process ends anyway.
  if (std::uncaught_exceptions() > 0) return;
  try {
    for (Slot& s : param_slots_) finish(s);
    for (Slot& s : grad_slots_) finish(s);
  } catch (const std::exception& e) {  // a destructor must not throw; the run has ended anyway
    std::fprintf(stderr, "ftune: warning: a ZeRO collective failed at shutdown: %s\n", e.what());
  }
}

ShardRange ZeroShards::my_part(int u) const {
  const ParamUnit pu = layout_.unit(u);
  const size_t b = std::max(pu.begin, shard_.begin), e = std::min(pu.end, shard_.end);
  return b < e ? ShardRange{b, e} : ShardRange{b, b};
}

std::vector<size_t> ZeroShards::parts(int u) const {
  const ParamUnit pu = layout_.unit(u);
  std::vector<size_t> counts;
  for (int r = 0; r < comm_.world_size(); ++r) {
    const ShardRange s = shard_range(layout_.total(), r, comm_.world_size());
    const size_t b = std::max(pu.begin, s.begin), e = std::min(pu.end, s.end);
    counts.push_back(b < e ? e - b : 0);
  }
  return counts;
}

ZeroShards::Slot& ZeroShards::slot(std::vector<Slot>& slots, int u) {
  const bool layer = u != 0 && u != layout_.tail_unit();
  return slots[size_t(!layer ? (u == 0 ? 0 : 1) : overlap_ ? 2 + u % 2 : 2)];
}

void ZeroShards::finish(Slot& s) {
  if (!s.pending) return;
  comm_.finish(s.pending);
  s.pending = 0;
}

void ZeroShards::invalidate_weights() {
  for (Slot& s : param_slots_) {
    FTUNE_CHECK(s.holds == 0, "ZeRO-3 weights changed while a unit is in use");
    finish(s);
    s.unit = -1;
  }
}

void ZeroShards::zero_grads() {
  finish_grads();
  be_->zero(grads_.get(), grads_.bytes());
}

void ZeroShards::complete_grads(Slot& s) {
  if (!s.reducing) return;
  finish(s);
  s.reducing = false;
  const ShardRange mine = my_part(s.unit);
  if (mine.size() > 0)
    be_->add_inplace(ctx_, grads_.get() + (mine.begin - shard_.begin), s.buf.get() + s.result_at,
                     mine.size());
  s.unit = -1;
}

void ZeroShards::finish_grads() {
  for (Slot& s : grad_slots_) complete_grads(s);
}

ZeroMemory ZeroShards::memory() const {
  ZeroMemory m;
  m.weights = params_.bytes();
  for (const Slot& s : param_slots_) m.weights += s.buf.bytes();
  m.gradients = grads_.bytes() + reduced_.bytes();
  for (const Slot& s : grad_slots_) m.gradients += s.buf.bytes();
  return m;
}

const float* ZeroShards::acquire_params(int u) {
  FTUNE_CHECK(stage_ >= 3, "weights are whole below ZeRO-3");
  Slot& s = slot(param_slots_, u);
  FTUNE_CHECK(s.holds == 0 || s.unit == u, "ZeRO work slot still held by another unit");
  if (s.holds == 0) {
    const auto t0 = std::chrono::steady_clock::now();
    if (s.unit == u && s.pending) {
      ++stats_.prefetched;
      finish(s);
    } else if (s.unit == u) {
      ++stats_.reused;
    } else {
      finish(s);  // a prefetch nobody took: completed first, collectives stay in order
      s.unit = u;
      gather(s, u);
      ++stats_.waited;
    }
    stats_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  ++s.holds;
  return s.buf.get();
}

void ZeroShards::release_params(int u) {
  Slot& s = slot(param_slots_, u);
  FTUNE_CHECK(s.holds > 0 && s.unit == u, "ZeRO weights released more often than acquired");
  --s.holds;  // the data stays, for a use before the slot is needed again
}

void ZeroShards::prefetch_params(int u) {
  if (!overlap_ || stage_ < 3) return;
  Slot& s = slot(param_slots_, u);
  if (s.unit == u || s.holds > 0) return;  // there or on its way already, or the slot is busy
  finish(s);
  s.unit = u;
  if (alone_) return gather(s, u);
  const ShardRange mine = my_part(u);
  s.pending =
      comm_.start_all_gather_v(params_.get() + (mine.begin - shard_.begin), s.buf.get(), parts(u));
}

void ZeroShards::gather(Slot& s, int u) {
  const ShardRange mine = my_part(u);
  // Alone the shard is everything: the unit is a copy (the backend's, as buffers may be on a
  // GPU).
  if (alone_)
    be_->copy(s.buf.get(), params_.get() + (mine.begin - shard_.begin),
              mine.size() * sizeof(float));
  else
    comm_.all_gather_v(params_.get() + (mine.begin - shard_.begin), s.buf.get(), parts(u));
}

float* ZeroShards::acquire_grads(int u) {
  Slot& s = slot(grad_slots_, u);
  if (s.holds == 0 || s.unit != u) {  // a second acquire before grads_done returns the same buffer
    FTUNE_CHECK(s.holds == 0, "ZeRO work slot still held by another unit");
    complete_grads(s);  // the slot's previous unit, still being reduced
    s.unit = u;
    s.holds = 1;
    be_->zero(s.buf.get(), layout_.unit(u).size() * sizeof(float));
  }
  return s.buf.get();
}

void ZeroShards::grads_done(int u) {
  Slot& s = slot(grad_slots_, u);
  FTUNE_CHECK(s.holds == 1 && s.unit == u, "ZeRO gradients finished without being taken");
  s.holds = 0;
  // Sum this unit's gradients over ranks; each keeps its part and adds it to its shard
  // (micro-batches accumulate there). With overlap the sum runs while backward goes on, and is
  // added when the slot is needed again; the embedding, backward's last unit, finishes them all.
  const ShardRange mine = my_part(u);
  if (alone_) {  // the sum over one rank is its own gradients
    // The slot holds this micro-batch's terms from the whole model's GEMMs (same shapes): on the
    // first micro-batch (zero shard) bitwise the whole model's gradients. Later ones add the
    // slot's sum to the shard, g + (a + b), where the whole model adds each term in turn.
    be_->add_inplace(ctx_, grads_.get() + (mine.begin - shard_.begin), s.buf.get(), mine.size());
    s.unit = -1;
    if (u == 0) finish_grads();
    return;
  }
  if (overlap_) {
    s.pending = comm_.start_reduce_scatter_sum_in_place(s.buf.get(), parts(u), &s.result_at);
    s.reducing = true;
    if (u == 0) finish_grads();
    return;
  }
  comm_.reduce_scatter_sum(s.buf.get(), reduced_.get(), parts(u));
  if (mine.size() > 0)
    be_->add_inplace(ctx_, grads_.get() + (mine.begin - shard_.begin), reduced_.get(), mine.size());
  s.unit = -1;
}

void ZeroShards::params_from_host(const std::vector<float>& host) {
  FTUNE_CHECK(stage_ >= 3 && host.size() == layout_.total(), "parameter count mismatch");
  invalidate_weights();
  be_->upload(params_.get(), host.data() + shard_.begin, shard_.size() * sizeof(float));
}

void ZeroShards::load_shard(const std::vector<float>& slice) {
  FTUNE_CHECK(stage_ >= 3 && slice.size() == shard_.size(), "shard size mismatch");
  invalidate_weights();
  be_->upload(params_.get(), slice.data(), shard_.size() * sizeof(float));
}

std::vector<float> ZeroShards::params_to_host() const {
  FTUNE_CHECK(!whole_.empty(), "ZeRO-3 weights were not gathered to rank 0 first");
  return whole_;
}

const float* ZeroShards::gather_unit_to_root(int u) {
  FTUNE_CHECK(stage_ >= 3, "weights are whole below ZeRO-3");
  // Through the unit's work slot (an all-gather, as forward uses), then to the host on rank 0.
  const ParamUnit pu = layout_.unit(u);
  const float* w = acquire_params(u);
  const bool root = comm_.rank() == 0;
  if (root) {
    try {
      host_unit_.resize(pu.size());
      host_unit_.shrink_to_fit();  // one unit's worth, not the largest seen so far
      largest_host_unit_ = std::max(largest_host_unit_, pu.size());
      be_->download(host_unit_.data(), w, pu.size() * sizeof(float));
    } catch (...) {
      release_params(u);  // the gather itself is done: the slot is free for the next unit
      throw;
    }
  }
  release_params(u);
  return root ? host_unit_.data() : nullptr;
}

void ZeroShards::gather_whole_to_root() {
  const bool root = comm_.rank() == 0;
  if (root) whole_.assign(layout_.total(), 0.f);
  for (int u = 0; u < layout_.num_units(); ++u) {
    const float* w = gather_unit_to_root(u);
    if (root)
      std::copy(w, w + layout_.unit(u).size(), whole_.begin() + long(layout_.unit(u).begin));
  }
}

}  // namespace ftune
