#include "engine/train/checkpointer.h"

#include <algorithm>
#include <filesystem>
#include <functional>

#include "engine/base/error.h"

namespace fs = std::filesystem;

namespace ftune {

TrainState Checkpointer::fresh_state() const {
  TrainState st;
  st.total_steps = s_.total_steps;
  st.seed = uint64_t(job_.c().seed);
  st.recipe_sha256 = job_.recipe_sha;
  st.world_size = s_.world;
  st.global_micro_batches = s_.grad_accum * s_.world;
  return st;
}

SaveOutcome Checkpointer::save(const TrainState& st) {
  const RecipeConfig& c = job_.c();
  const bool lead = job_.lead;
  const int world = s_.world;
  Model& model = *s_.model;
  SaveOutcome out;
  auto attempt = [&](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::exception& e) {
      out.error = e.what();
    }
  };
  // Also the barrier: no rank runs ahead of a checkpoint it might be resumed from.
  auto agree = [&] {
    std::vector<double> flags(size_t(world), 0.0);
    flags[size_t(comm_.rank())] = out.error.empty() ? 0.0 : 1.0;
    comm_.all_reduce_sum_host(flags.data(), flags.size());
    for (int r = 0; r < world; ++r)
      if (flags[size_t(r)] > 0 &&
          std::find(out.failed.begin(), out.failed.end(), r) == out.failed.end())
        out.failed.push_back(r);
    return out.failed.empty();
  };
  if (!s_.sharded) {
    if (lead)
      attempt([&] {
        out.dir = save_checkpoint(c.output_dir, model, s_.m.get(), s_.v.get(), st,
                                  c.checkpoint_keep_last, c.model_path, job_.okey());
      });
    agree();
    return out;
  }
  const std::string tmp = sharded_checkpoint_tmp_dir(c.output_dir, st.step);
  if (lead) attempt([&] { reset_checkpoint_dir(tmp); });
  if (!agree()) return out;
  attempt([&] {
    write_checkpoint_shard(tmp, s_.slice, s_.m.get(), s_.v.get(),
                           s_.stage >= 3 ? s_.zero->shard_params() : nullptr, job_.be.get(),
                           job_.okey());
  });
  // Every rank's files are written before the lead publishes.
  if (!agree()) {
    std::error_code ec;
    if (lead) fs::remove_all(tmp, ec);
    return out;
  }
  if (lead)
    attempt([&] {
      out.dir = finish_sharded_checkpoint(c.output_dir, tmp, s_.stage >= 3 ? nullptr : &model, st,
                                          c.checkpoint_keep_last, c.model_path, job_.okey());
    });
  if (!out.error.empty()) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
  }
  agree();
  return out;
}

TrainState Checkpointer::restore(const std::string& dir) {
  const int world = s_.world;
  const WeightKey* okey = job_.okey();
  TrainState st;
  if (s_.sharded) {
    // Each rank reads only its slices (ZeRO-3 weights included) from whole or sharded files.
    if (s_.stage >= 3 && checkpoint_has_sharded_weights(dir))
      s_.zero->load_shard(
          read_checkpoint_weights_range(dir, s_.shard.begin, s_.shard.end, s_.n_train, okey));
    else
      load_checkpoint_weights(dir, *s_.model, okey);
    load_checkpoint_moments(dir, s_.shard.begin, s_.shard.end, s_.n_train, s_.m.get(), s_.v.get(),
                            job_.be.get(), okey);
    st = read_checkpoint_state(dir);
  } else {
    st = load_checkpoint(dir, *s_.model, s_.m.get(), s_.v.get(), okey);
  }
  if (st.recipe_sha256 != job_.recipe_sha || st.total_steps != s_.total_steps)
    throw Error("--resume: checkpoint " + dir + " was written by a different recipe");
  // The same global batch continues on any number of ranks: the data position is stored per
  // rank of the writing run, so it converts to micro-batches dealt in total and back.
  const int64_t per_step = s_.grad_accum * world;
  if (st.global_micro_batches > 0 && st.global_micro_batches != per_step)
    throw Error("--resume: checkpoint " + dir + " was written with " +
                std::to_string(st.global_micro_batches) + " micro-batches per step over " +
                std::to_string(st.world_size) + " ranks, this run takes " +
                std::to_string(per_step) + " over " + std::to_string(world) +
                ": set train.global_batch_size so every rank count trains the same batch");
  DataPosition pos = st.data;
  if (st.world_size != world) {
    const int64_t dealt = pos.index * st.world_size;
    if (dealt % world != 0)
      throw Error("--resume: checkpoint " + dir + " stopped after " + std::to_string(dealt) +
                  " micro-batches of its epoch, which " + std::to_string(world) +
                  " ranks cannot split evenly; resume on " + std::to_string(st.world_size) +
                  " ranks or from another checkpoint");
    pos.index = dealt / world;
  }
  s_.data->set_position(pos);
  st.world_size = world;
  st.global_micro_batches = per_step;
  return st;
}

TrainState Checkpointer::restore_initial() {
  s_.reinit_weights(job_);
  job_.be->zero(s_.m.get(), s_.shard.size() * sizeof(float));
  job_.be->zero(s_.v.get(), s_.shard.size() * sizeof(float));
  s_.data->set_position(s_.initial_pos);
  return fresh_state();
}

std::string Checkpointer::latest_name() const {
  try {
    const std::optional<std::string> l = latest_checkpoint(job_.c().output_dir);
    return l ? fs::path(*l).filename().string() : "";
  } catch (const Error&) {
    return "";
  }
}

}  // namespace ftune
