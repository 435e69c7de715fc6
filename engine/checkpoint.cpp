#include "engine/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "engine/adapter.h"
#include "engine/error.h"
#include "engine/fs_util.h"
#include "engine/safetensors.h"

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

void prune(const std::string& ckpt_root, int64_t keep_last) {
  if (keep_last <= 0) return;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ckpt_root)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos)
      names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + size_t(keep_last) < names.size(); ++i)
    fs::remove_all(fs::path(ckpt_root) / names[i]);
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const Model& model, const float* m,
                            const float* v, const TrainState& state, int64_t keep_last,
                            const std::string& base_model, const WeightKey* key) {
  const std::string root = run_dir + "/checkpoints";
  fs::create_directories(root);
  const std::string name = step_name(state.step);
  const std::string final_dir = root + "/" + name;
  const std::string tmp_dir = final_dir + ".tmp." + std::to_string(getpid());
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);

  Backend* be = model.backend();
  const size_t total = model.num_train_params();
  std::vector<float> hm(total), hv(total);
  be->download(hm.data(), m, total * sizeof(float));
  be->download(hv.data(), v, total * sizeof(float));

  if (model.has_lora()) {
    // Only the adapters change; the checkpoint is a PEFT adapter directory of its own.
    write_adapter_files(model, tmp_dir, base_model, DType::F32, key);
  } else {
    // Weights under their HF names (the checkpoint directory loads like a model directory);
    // moments as two flat tensors: a checkpoint is a few large writes.
    const ParamLayout& lay = model.layout();
    std::vector<float> p = model.params_to_host();
    SafetensorsWriter w;
    for (const auto& e : lay.entries())
      w.add(e.name, e.shape, p.data() + e.offset, DType::F32, DType::F32);
    w.set_metadata("format", "pt");
    w.write(tmp_dir + "/model.safetensors", key);
    write_file_atomic(tmp_dir + "/config.json",
                      model_config_json(model.config(), DType::F32).dump(2));
  }
  SafetensorsWriter o;
  o.add("adamw.exp_avg", {int64_t(total)}, hm.data(), DType::F32, DType::F32);
  o.add("adamw.exp_avg_sq", {int64_t(total)}, hv.data(), DType::F32, DType::F32);
  o.write(tmp_dir + "/optimizer.safetensors", key);
  write_file_atomic(tmp_dir + "/state.json", train_state_to_json(state).dump(2));
  fsync_dir(tmp_dir);

  fs::remove_all(final_dir);  // a stale copy of the same step from an earlier crashed run
  fs::rename(tmp_dir, final_dir);
  fsync_dir(root);
  write_file_atomic(root + "/latest", name + "\n");
  prune(root, keep_last);
  return final_dir;
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

TrainState load_checkpoint(const std::string& dir, Model& model, float* m, float* v,
                           const WeightKey* key) {
  if (model.has_lora()) {
    if (!is_adapter_dir(dir))
      throw Error(dir + ": holds full weights, not adapters: it was written by a run with " +
                  "method: full");
    load_adapter(model, dir, key);
  } else {
    if (is_adapter_dir(dir))
      throw Error(dir + ": holds LoRA adapters, not full weights: it was written by a run " +
                  "with method: lora");
    model.load_weights(WeightStore::open_dir(dir, key));
  }
  const size_t total = model.num_train_params();
  SafetensorsReader opt = SafetensorsReader::open(dir + "/optimizer.safetensors", key);
  std::vector<float> host(total);
  for (auto [name, dst] : {std::pair{"adamw.exp_avg", m}, {"adamw.exp_avg_sq", v}}) {
    const TensorInfo* t = opt.find(name);
    if (!t || t->numel() != int64_t(total))
      throw Error(dir + "/optimizer.safetensors: tensor '" + name +
                  "' is missing or sized for another model");
    opt.read_as(*t, DType::F32, host.data());
    model.backend()->upload(dst, host.data(), total * sizeof(float));
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(dir + "/state.json"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(dir + "/state.json: invalid JSON (" + e.what() + ")");
  }
  return train_state_from_json(j, dir + "/state.json");
}

}  // namespace ftune
