#include "engine/train/finish.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/fs_util.h"
#include "engine/infer/generate.h"
#include "engine/model/hf_export.h"
#include "engine/model/peft_adapter.h"
#include "engine/report/report.h"
#include "engine/train/agreed_error.h"
#include "engine/trust/manifest.h"

namespace ftune {

namespace {

// ZeRO-3 export: rank 0 writes the model while every rank gathers one unit after another to it
// (export_weights_dir asks for them in order). Should rank 0's write fail, it still serves the
// remaining gathers, and every rank then ends with the error together.
void export_sharded(ZeroShards& zero, const Model& model, Communicator& comm,
                    const std::string& source_dir, const std::string& dir, DType dtype,
                    size_t max_shard, const WeightKey* key, int fail_at) {
  const int units = model.layout().num_units();
  int served = 0;  // units gathered so far, in order, on every rank
  std::string failure;
  // fail_at (tests, FaultInjection): rank 0's write fails as that unit comes up.
  if (comm.rank() == 0) {
    auto unit_weights = [&](int u) -> const float* {
      if (u == fail_at) throw Error("injected export failure at unit " + std::to_string(u));
      // Counted before the call: once a gather's collective has run, a failure copying it out
      // on rank 0 still leaves that unit served on every rank.
      while (served < u) zero.gather_unit_to_root(served++);
      ++served;
      return zero.gather_unit_to_root(u);
    };
    try {
      export_weights_dir(model.config(), model.layout(), unit_weights, source_dir, dir, dtype,
                         max_shard, key);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown error";
    }
  }
  while (served < units) zero.gather_unit_to_root(served++);
  double failed = failure.empty() ? 0.0 : 1.0;
  comm.all_reduce_sum_host(&failed, 1);
  if (failed > 0)
    throw AgreedError(comm.rank() == 0 ? failure : "rank 0 could not write the model to " + dir);
}

// What each rank held at its peak in training (`ftune plan` predicts it; tests compare).
void write_memory_json(const Job& job, const Session& s, const std::vector<double>& peaks,
                       size_t export_host_bytes) {
  const RecipeConfig& c = job.c();
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < s.world; ++r)
    ranks.push_back({{"rank", r}, {"peak_allocated_bytes", int64_t(peaks[size_t(r)])}});
  write_file_atomic(c.output_dir + "/memory.json",
                    nlohmann::json{{"world_size", s.world},
                                   {"sharding", sharding_name(c.sharding)},
                                   {"device", job.dev.kind},
                                   {"ranks", ranks},
                                   {"export_host_bytes", int64_t(export_host_bytes)}}
                            .dump(2) +
                        "\n");
}

void write_summary(const Job& job, const Session& s, Communicator& comm, const TrainState& state,
                   RunLog& log, const TrainResult& result) {
  const RecipeConfig& c = job.c();
  nlohmann::json summary = {{"steps", state.step},
                            {"tokens_seen", state.tokens_seen},
                            {"final_train_loss", state.last_loss},
                            {"tokens_per_s", result.tokens_per_s},
                            {"method", method_name(c.method)},
                            {"model_dir", result.model_dir},
                            {"adapter_dir", result.adapter_dir}};
  if (result.val_before.tokens > 0)
    summary["val_before"] = {{"loss", result.val_before.loss},
                             {"perplexity", result.val_before.perplexity}};
  if (result.val_after.tokens > 0)
    summary["val_after"] = {{"loss", result.val_after.loss},
                            {"perplexity", result.val_after.perplexity}};
  if (s.world > 1) summary["comm_busy_s"] = comm.busy_seconds();  // 0 where not measured (MPI)
  if (s.stage >= 3) {
    // How rank 0's weight gathers were served: started ahead (overlapping compute), waited for,
    // or reused from a slot; and the host time spent in them.
    const ZeroShards::GatherStats& g = s.zero->gather_stats();
    summary["zero3_gathers"] = {{"overlap", c.dist_overlap},
                                {"prefetched", g.prefetched},
                                {"waited", g.waited},
                                {"reused", g.reused},
                                {"wait_s", g.wait_s}};
    char spent[64];
    std::snprintf(spent, sizeof spent, "%.2f s", g.wait_s);
    log.say("ZeRO-3 weight gathers on rank 0: " + std::to_string(g.prefetched) +
            " started ahead, " + std::to_string(g.waited) + " waited for, " +
            std::to_string(g.reused) + " reused; " + spent + " spent in them");
  }
  write_file_atomic(c.output_dir + "/summary.json", summary.dump(2) + "\n");
}

// A manifest (signed when asked) in each output users ship.
void write_manifests(const Job& job, const TrainState& state, const TrainResult& result) {
  const RecipeConfig& c = job.c();
  std::vector<std::string> data_files;
  for (const DataSource& d : recipe_data_sources(c)) data_files.push_back(d.path);
  if (!c.data_validation.empty()) data_files.push_back(c.data_validation);
  nlohmann::json prov = provenance_base(c.model_path, job.recipe->resolved_yaml, data_files);
  prov["method"] = method_name(c.method);
  prov["steps"] = state.step;
  prov["tokens_seen"] = state.tokens_seen;
  prov["final_train_loss"] = state.last_loss;
  prov["final_val_loss"] =
      result.val_after.tokens > 0 ? nlohmann::json(result.val_after.loss) : nlohmann::json();
  prov["start_time"] = utc_timestamp(job.wall_start);
  prov["end_time"] = utc_timestamp(std::chrono::system_clock::now());
  // Which key, never the key: its one-way fingerprint.
  if (job.out_key)
    prov["encryption"] = {{"cipher", "AES-256-GCM"}, {"key_id", key_id(*job.out_key)}};
  for (const std::string& dir : {result.adapter_dir, result.model_dir}) {
    if (dir.empty()) continue;
    nlohmann::json m = prov;
    m["output"] = dir == result.adapter_dir  ? "adapter"
                  : c.method == Method::Lora ? "merged"
                                             : "model";
    write_manifest(dir, m, c.export_sign_key);
  }
}

}  // namespace

void finish_run(const Job& job, Session& s, Communicator& comm, const TrainState& state,
                const FaultInjection& faults, RunLog& log, TrainResult& result) {
  const RecipeConfig& c = job.c();
  const bool lead = job.lead;
  Model& model = *s.model;
  // Every rank's training peak, before export and generation add their own buffers, and while
  // every rank is still here (below ZeRO-3 rank 0 exports alone).
  std::vector<double> peaks(size_t(s.world), 0.0);
  peaks[size_t(comm.rank())] = double(job.be->peak_allocated_bytes());
  comm.all_reduce_sum_host(peaks.data(), peaks.size());

  // ---- export: rank 0 writes. Under ZeRO-3 every rank takes part, gathering the weights to
  // rank 0 one unit at a time, so no rank ever holds the whole model; generation below runs
  // sharded on every rank for the same reason. ----
  const bool sharded_weights = s.stage >= 3;
  if (!lead && !sharded_weights) return;
  const DType out_dtype = resolve_export_dtype(c.export_dtype, s.base_dtype);
  const size_t max_shard = size_t(c.export_max_shard_mb) * 1000 * 1000;
  if (s.lora && lead) {
    result.adapter_dir = c.output_dir + "/adapter";
    export_adapter_dir(model, result.adapter_dir, c.model_path, out_dtype, job.okey());
    log.say("adapter written to " + result.adapter_dir);
  }
  // The most weight bytes rank 0 held in host memory at once while exporting.
  size_t export_host_bytes = 0;
  if (!s.lora || c.export_merge) {
    // Generation below runs on the merged model then, which gives the same logits.
    if (s.lora) model.merge_lora();
    result.model_dir = c.output_dir + "/model";
    if (sharded_weights) {
      export_sharded(*s.zero, model, comm, c.model_path, result.model_dir, out_dtype, max_shard,
                     job.okey(), faults.export_fail_at_unit);
      export_host_bytes = s.zero->largest_host_unit() * sizeof(float);
    } else {
      export_model_dir(model, c.model_path, result.model_dir, out_dtype, max_shard, job.okey());
      for (int u = 0; u < model.layout().num_units(); ++u)
        export_host_bytes =
            std::max(export_host_bytes, model.layout().unit(u).size() * sizeof(float));
    }
  }
  if (s.data->val_batches() > 0) {
    if (state.step > 0 && result.val_before.tokens > 0)
      log.say("validation before: " + fmt("loss %.4f  perplexity %.2f", result.val_before.loss,
                                          result.val_before.perplexity));
    log.say("validation after:  " +
            fmt("loss %.4f  perplexity %.2f", result.val_after.loss, result.val_after.perplexity));
  }
  if (!result.model_dir.empty()) log.say("model written to " + result.model_dir);

  if (!c.generate_prompt.empty()) {
    GenerateOptions g;
    g.max_new_tokens = c.generate_max_new_tokens;
    g.temperature = c.generate_temperature;
    g.top_p = c.generate_top_p;
    g.seed = uint64_t(c.seed);
    g.context_window = c.seq_len;
    // Sharded, every forward is collective: all ranks continue with rank 0's token, so they
    // stay in step even if their logits were to differ in the last bit.
    if (sharded_weights)
      g.agree = [&](int32_t token) {
        double t = lead ? double(token) : 0.0;
        comm.all_reduce_sum_host(&t, 1);
        return int32_t(t);
      };
    result.generation = generate_text(model, s.tok, c.generate_prompt, g, job.threads);
  }
  if (!lead) return;
  write_memory_json(job, s, peaks, export_host_bytes);
  write_summary(job, s, comm, state, log, result);
  write_manifests(job, state, result);
  // Last, so that it shows the manifests (and checks the hashes) of what was just written.
  if (const std::string report = write_report_or_warn(c.output_dir); !report.empty())
    log.say("report written to " + report);
}

std::string write_report_or_warn(const std::string& output_dir) {
  try {
    return write_report(output_dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ftune: warning: report.html not written: %s\n", e.what());
    return "";
  }
}

}  // namespace ftune
