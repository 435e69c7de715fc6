#include "engine/train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/formats/safetensors.h"
#include "engine/model/peft_adapter.h"

namespace fs = std::filesystem;

namespace ftune {

nlohmann::json train_state_to_json(const TrainState& s) {
  return {{"step", s.step},
          {"total_steps", s.total_steps},
          {"data", {{"epoch", s.data.epoch}, {"index", s.data.index}}},
          {"tokens_seen", s.tokens_seen},
          {"seed", s.seed},
          {"recipe_sha256", s.recipe_sha256},
          {"last_loss", s.last_loss},
          {"world_size", s.world_size},
          {"global_micro_batches", s.global_micro_batches},
          {"guard",
           {{"lr_scale", s.lr_scale}, {"rollbacks", s.rollbacks}, {"loss_window", s.loss_window}}},
          {"format", 1}};
}

TrainState train_state_from_json(const nlohmann::json& j, const std::string& label) {
  try {
    TrainState s;
    s.step = j.at("step").get<int64_t>();
    s.total_steps = j.at("total_steps").get<int64_t>();
    s.data.epoch = j.at("data").at("epoch").get<int64_t>();
    s.data.index = j.at("data").at("index").get<int64_t>();
    s.tokens_seen = j.at("tokens_seen").get<int64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    s.recipe_sha256 = j.at("recipe_sha256").get<std::string>();
    s.last_loss = j.at("last_loss").get<double>();
    s.world_size = j.value("world_size", 1);
    s.global_micro_batches = j.value("global_micro_batches", int64_t(0));
    if (j.contains("guard")) {  // absent in checkpoints written before the numeric guards
      const auto& g = j.at("guard");
      s.lr_scale = g.value("lr_scale", 1.0);
      s.rollbacks = g.value("rollbacks", int64_t(0));
      s.loss_window = g.value("loss_window", std::vector<double>{});
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw Error(label + ": damaged checkpoint state (" + e.what() + ")");
  }
}

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// After `published` became latest. Checkpoints of later steps are from an abandoned attempt (a
// run killed after renaming one into place but before moving `latest`, then resumed from an
// earlier one, or a guard rollback): they go, so that keeping the newest keep_last can never
// delete the one `latest` names. Failures are ignored: a leftover old checkpoint is harmless
// and the new one is already safe.
void prune(const std::string& ckpt_root, const std::string& published, int64_t keep_last) {
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ckpt_root, ec)) {
    std::string n = e.path().filename().string();
    if (!e.is_directory(ec) || n.rfind("step-", 0) != 0 || n.find(".tmp") != std::string::npos)
      continue;
    if (n > published)  // fixed-width step numbers sort as names
      fs::remove_all(e.path(), ec);
    else
      names.push_back(n);
  }
  if (keep_last <= 0) return;
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + size_t(keep_last) < names.size(); ++i)
    fs::remove_all(fs::path(ckpt_root) / names[i], ec);
}

// "<operation> '<path>': <OS error>" from a filesystem_error, whose what() reads
// "filesystem error: <operation>: <OS error> [<path>]".
std::string fs_error_text(const fs::filesystem_error& e) {
  std::string op = e.what();
  const std::string prefix = "filesystem error: ";
  if (op.rfind(prefix, 0) == 0) op.erase(0, prefix.size());
  const size_t colon = op.find(": ");
  if (colon != std::string::npos) op.erase(colon);
  std::string text = op + " '" + e.path1().string() + "'";
  if (!e.path2().empty()) text += " to '" + e.path2().string() + "'";
  return text + ": " + e.code().message();
}

// Runs one step of writing a checkpoint; any failure becomes an Error naming what failed
// (std::filesystem reports with its own exception type).
template <class F>
auto checkpoint_io(F f) -> decltype(f()) {
  try {
    return f();
  } catch (const fs::filesystem_error& e) {
    throw Error(fs_error_text(e));
  }
}

}  // namespace

namespace {

// The weights a checkpoint directory holds so that it loads like a model: LoRA runs store the
// adapters as a PEFT directory (base_model names the base), full runs model.safetensors (HF
// names, fp32) and config.json.
void write_model_files(const std::string& dir, const Model& model, const std::string& base_model,
                       const WeightKey* key) {
  if (model.has_lora()) {
    write_adapter_files(model, dir, base_model, DType::F32, key);
    return;
  }
  const ParamLayout& lay = model.layout();
  std::vector<float> p = model.params_to_host();
  SafetensorsWriter w;
  for (const auto& e : lay.entries())
    w.add(e.name, e.shape, p.data() + e.offset, DType::F32, DType::F32);
  w.set_metadata("format", "pt");
  w.write(dir + "/model.safetensors", key);
  write_file_atomic(dir + "/config.json", model_config_json(model.config(), DType::F32).dump(2));
}

// state.json last, then the whole directory moves into place and `latest` follows it.
// Until `latest` moves, a failure removes what this write made (the temp directory, or the
// renamed one nothing points to) and `latest` still names the previous checkpoint.
std::string publish(const std::string& root, const std::string& tmp_dir, const TrainState& state,
                    int64_t keep_last) {
  const std::string name = step_name(state.step);
  const std::string final_dir = root + "/" + name;
  bool renamed = false;
  try {
    checkpoint_io([&] {
      write_file_atomic(tmp_dir + "/state.json", train_state_to_json(state).dump(2));
      fsync_dir(tmp_dir);
      fs::remove_all(final_dir);  // a stale copy of the same step from an abandoned attempt
      fs::rename(tmp_dir, final_dir);
      renamed = true;
      fsync_dir(root);
      write_file_atomic(root + "/latest", name + "\n");
    });
  } catch (...) {
    std::error_code ec;
    fs::remove_all(renamed ? final_dir : tmp_dir, ec);
    throw;
  }
  prune(root, name, keep_last);
  return final_dir;
}

std::string shard_file(const std::string& dir, const char* kind, int rank, int world) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "/%s.rank-%05d-of-%05d.safetensors", kind, rank, world);
  return dir + buf;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const Model& model, const float* m,
                            const float* v, const TrainState& state, int64_t keep_last,
                            const std::string& base_model, const WeightKey* key) {
  const std::string root = run_dir + "/checkpoints";
  const std::string tmp_dir =
      root + "/" + step_name(state.step) + ".tmp." + std::to_string(getpid());
  try {
    checkpoint_io([&] {
      fs::create_directories(root);
      fs::remove_all(tmp_dir);
      fs::create_directories(tmp_dir);
      Backend* be = model.backend();
      const size_t total = model.num_train_params();
      std::vector<float> hm(total), hv(total);
      be->download(hm.data(), m, total * sizeof(float));
      be->download(hv.data(), v, total * sizeof(float));
      write_model_files(tmp_dir, model, base_model, key);
      // Moments as two flat tensors: a checkpoint is a few large writes.
      SafetensorsWriter o;
      o.add("adamw.exp_avg", {int64_t(total)}, hm.data(), DType::F32, DType::F32);
      o.add("adamw.exp_avg_sq", {int64_t(total)}, hv.data(), DType::F32, DType::F32);
      o.write(tmp_dir + "/optimizer.safetensors", key);
    });
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    throw;
  }
  return publish(root, tmp_dir, state, keep_last);
}

std::string sharded_checkpoint_tmp_dir(const std::string& run_dir, int64_t step) {
  return run_dir + "/checkpoints/" + step_name(step) + ".tmp.sharded";
}

void write_checkpoint_shard(const std::string& tmp_dir, const ShardSlice& s, const float* m,
                            const float* v, const float* params, Backend* be,
                            const WeightKey* key) {
  const size_t n = s.end - s.begin;
  auto meta = [&](SafetensorsWriter& w) {
    w.set_metadata("begin", std::to_string(s.begin));
    w.set_metadata("end", std::to_string(s.end));
    w.set_metadata("total", std::to_string(s.total));
  };
  std::vector<float> a(n), b(n);
  checkpoint_io([&] {
    be->download(a.data(), m, n * sizeof(float));
    be->download(b.data(), v, n * sizeof(float));
    SafetensorsWriter o;
    o.add("adamw.exp_avg", {int64_t(n)}, a.data(), DType::F32, DType::F32);
    o.add("adamw.exp_avg_sq", {int64_t(n)}, b.data(), DType::F32, DType::F32);
    meta(o);
    o.write(shard_file(tmp_dir, "optimizer", s.rank, s.world), key);
    if (!params) return;
    be->download(a.data(), params, n * sizeof(float));
    SafetensorsWriter w;
    w.add("params", {int64_t(n)}, a.data(), DType::F32, DType::F32);
    meta(w);
    w.write(shard_file(tmp_dir, "weights", s.rank, s.world), key);
  });
}

std::string finish_sharded_checkpoint(const std::string& run_dir, const std::string& tmp_dir,
                                      const Model* model, const TrainState& state,
                                      int64_t keep_last, const std::string& base_model,
                                      const WeightKey* key) {
  for (int r = 0; r < state.world_size; ++r)
    if (!path_exists(shard_file(tmp_dir, "optimizer", r, state.world_size)))
      throw Error("checkpoint " + tmp_dir + ": rank " + std::to_string(r) +
                  "'s optimizer shard is missing; the checkpoint is not published");
  if (model) checkpoint_io([&] { write_model_files(tmp_dir, *model, base_model, key); });
  return publish(run_dir + "/checkpoints", tmp_dir, state, keep_last);
}

namespace {

// [begin, end) of the flat tensor `name`, from whichever rank files overlap it.
std::vector<float> read_from_shards(const std::string& dir, const char* kind, const char* name,
                                    size_t begin, size_t end, size_t total, const WeightKey* key) {
  std::vector<float> out(end - begin);
  size_t covered = 0;
  int world = 0;
  for (int r = 0; world == 0 || r < world; ++r) {
    std::string path;
    if (world == 0) {  // the rank count is in the file names
      for (const auto& e : fs::directory_iterator(dir)) {
        const std::string f = e.path().filename().string();
        if (f.rfind(std::string(kind) + ".rank-00000-of-", 0) == 0)
          world = std::atoi(f.substr(f.size() - 17, 5).c_str());
      }
      if (world <= 0)
        throw Error(dir + ": no " + kind + " shards (" + kind + ".rank-*.safetensors)");
    }
    path = shard_file(dir, kind, r, world);
    if (!path_exists(path)) throw Error(path + " is missing: the checkpoint is incomplete");
    SafetensorsReader f = SafetensorsReader::open(path, key);
    const auto& md = f.metadata();
    size_t b = 0, e = 0, t = 0;
    try {
      b = std::stoull(md.at("begin")), e = std::stoull(md.at("end")),
      t = std::stoull(md.at("total"));
    } catch (const std::exception&) {
      throw Error(path + ": shard metadata (begin, end, total) is missing or damaged");
    }
    const TensorInfo* ti = f.find(name);
    if (t != total || !ti || ti->numel() != int64_t(e - b))
      throw Error(path + ": tensor '" + name + "' is missing or sized for another model");
    const size_t lo = std::max(b, begin), hi = std::min(e, end);
    if (lo >= hi) continue;
    std::vector<float> all(e - b);
    f.read_as(*ti, DType::F32, all.data());
    std::copy(all.begin() + long(lo - b), all.begin() + long(hi - b),
              out.begin() + long(lo - begin));
    covered += hi - lo;
  }
  if (covered != end - begin)
    throw Error(dir + ": the " + std::string(kind) + " shards do not cover the buffer");
  return out;
}

}  // namespace

bool checkpoint_has_sharded_weights(const std::string& dir) {
  return !path_exists(dir + "/model.safetensors") && !is_adapter_dir(dir);
}

std::vector<float> read_checkpoint_weights_range(const std::string& dir, size_t begin, size_t end,
                                                 size_t total, const WeightKey* key) {
  return read_from_shards(dir, "weights", "params", begin, end, total, key);
}

void load_checkpoint_moments(const std::string& dir, size_t begin, size_t end, size_t total,
                             float* m, float* v, Backend* be, const WeightKey* key) {
  const size_t n = end - begin;
  for (auto [name, dst] : {std::pair{"adamw.exp_avg", m}, {"adamw.exp_avg_sq", v}}) {
    std::vector<float> part;
    if (path_exists(dir + "/optimizer.safetensors")) {
      SafetensorsReader opt = SafetensorsReader::open(dir + "/optimizer.safetensors", key);
      const TensorInfo* t = opt.find(name);
      if (!t || t->numel() != int64_t(total))
        throw Error(dir + "/optimizer.safetensors: tensor '" + name +
                    "' is missing or sized for another model");
      std::vector<float> all(total);
      opt.read_as(*t, DType::F32, all.data());
      part.assign(all.begin() + long(begin), all.begin() + long(end));
    } else {
      part = read_from_shards(dir, "optimizer", name, begin, end, total, key);
    }
    be->upload(dst, part.data(), n * sizeof(float));
  }
}

void load_checkpoint_weights(const std::string& dir, Model& model, const WeightKey* key) {
  if (model.has_lora()) {
    if (!is_adapter_dir(dir))
      throw Error(dir + ": holds full weights, not adapters: it was written by a run with " +
                  "method: full");
    load_adapter(model, dir, key);
    return;
  }
  if (is_adapter_dir(dir))
    throw Error(dir + ": holds LoRA adapters, not full weights: it was written by a run " +
                "with method: lora");
  if (checkpoint_has_sharded_weights(dir)) {
    const size_t n = model.num_params();
    model.params_from_host(read_checkpoint_weights_range(dir, 0, n, n, key));
    return;
  }
  model.load_weights(WeightStore::open_dir(dir, key));
}

TrainState read_checkpoint_state(const std::string& dir) {
  nlohmann::json j;
  try {
    j = parse_json_bounded(read_file(dir + "/state.json"), dir + "/state.json");
  } catch (const nlohmann::json::exception& e) {
    throw Error(dir + "/state.json: invalid JSON (" + e.what() + ")");
  }
  return train_state_from_json(j, dir + "/state.json");
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  const std::string latest = root + "/latest";
  if (!path_exists(latest)) return std::nullopt;
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' '))
    name.pop_back();
  if (name.empty() || name.find('/') != std::string::npos)
    throw Error(latest + ": damaged pointer file; delete it to start over or fix the name");
  const std::string dir = root + "/" + name;
  if (!path_exists(dir + "/state.json"))
    throw Error(latest + " names '" + name + "' but that checkpoint is incomplete or missing");
  return dir;
}

void reset_checkpoint_dir(const std::string& dir) {
  checkpoint_io([&] {
    fs::remove_all(dir);
    fs::create_directories(dir);
  });
}

void remove_checkpoint_temps(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if ((n.rfind("step-", 0) == 0 || n.rfind("latest.", 0) == 0) &&
        n.find(".tmp.") != std::string::npos)
      fs::remove_all(e.path(), ec);
  }
}

TrainState load_checkpoint(const std::string& dir, Model& model, float* m, float* v,
                           const WeightKey* key) {
  load_checkpoint_weights(dir, model, key);
  const size_t total = model.num_train_params();
  load_checkpoint_moments(dir, 0, total, total, m, v, model.backend(), key);
  return read_checkpoint_state(dir);
}

}  // namespace ftune
