// Provenance manifests: every output hashed, any one-byte change / deletion / addition caught,
// signatures that fail under the wrong key or after tampering; `ftune verify`, `ftune keygen`
// and the `ftune inspect` summaries through the binary.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/tools/inspect.h"
#include "engine/trust/manifest.h"
#include "engine/trust/signing.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::CliRun;
using testing::expect_error;

void put(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// An output directory shaped like a run's: top-level files, nested model and checkpoint files,
// an empty file. Returns the relative paths written.
std::vector<std::string> make_output(const std::string& dir) {
  std::string blob;
  for (int i = 0; i < 3000; ++i) blob.push_back(char(i * 131 + 7));
  const std::vector<std::pair<std::string, std::string>> files = {
      {"metrics.jsonl", "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"loss\": 2.1}\n"},
      {"recipe.yaml", "model:\n  path: base\n"},
      {"model/model.safetensors", blob},
      {"model/config.json", "{\"hidden_size\": 64}\n"},
      {"checkpoints/step-2/state.json", "{\"step\": 2}\n"},
      {"checkpoints/latest", "step-2\n"},
      {"empty.txt", ""},
  };
  std::vector<std::string> rel;
  for (const auto& [name, bytes] : files) {
    put(dir + "/" + name, bytes);
    rel.push_back(name);
  }
  std::sort(rel.begin(), rel.end());
  return rel;
}

struct Keys {
  std::string priv, pub;
};

Keys make_keys(const std::string& dir, const std::string& name) {
  Keys k{dir + "/" + name + ".pem", dir + "/" + name + ".pub.pem"};
  generate_signing_keypair(k.priv, k.pub);
  return k;
}

std::string joined(const VerifyReport& r) {
  std::string s;
  for (const auto& p : r.problems) s += p + "\n";
  return s;
}

bool has_problem(const VerifyReport& r, const std::string& a, const std::string& b = "") {
  for (const auto& p : r.problems)
    if (p.find(a) != std::string::npos && p.find(b) != std::string::npos) return true;
  return false;
}

TEST(Manifest, HashesEveryOutputFileAndVerifies) {
  const std::string dir = testing::make_temp_dir("manifest");
  const auto rel = make_output(dir);
  const json written = write_manifest(dir, {{"method", "full"}, {"steps", 2}}, "");
  const json m = json::parse(read_file(dir + "/" + kManifestName));
  EXPECT_EQ(m, written);
  EXPECT_EQ(m["format"], "ftune-manifest/1");
  EXPECT_EQ(m["method"], "full");
  ASSERT_EQ(m["outputs"].size(), rel.size()) << m["outputs"].dump(2);
  for (const std::string& r : rel) {
    ASSERT_TRUE(m["outputs"].contains(r)) << r;
    EXPECT_EQ(m["outputs"][r]["sha256"], sha256_file(dir + "/" + r)) << r;
    EXPECT_EQ(m["outputs"][r]["size"], fs::file_size(dir + "/" + r)) << r;
  }
  EXPECT_FALSE(m["outputs"].contains(kManifestName));
  EXPECT_FALSE(path_exists(dir + "/" + kSignatureName));
  // Pretty-printed with sorted keys and a final newline: stable bytes to sign and to diff.
  EXPECT_EQ(read_file(dir + "/" + kManifestName), m.dump(2) + "\n");

  const VerifyReport r = verify_output(dir, "");
  EXPECT_TRUE(r.ok) << joined(r);
  EXPECT_EQ(r.files_checked, int(rel.size()));
  EXPECT_FALSE(r.signed_);
  EXPECT_FALSE(r.signature_ok);
}

TEST(Manifest, OneByteChangeInAnyOutputIsCaught) {
  const std::string dir = testing::make_temp_dir("manifest");
  const auto rel = make_output(dir);
  write_manifest(dir, json::object(), "");
  for (const std::string& r : rel) {
    const std::string path = dir + "/" + r;
    const std::string original = read_file(path);
    if (original.empty()) continue;  // nothing to flip; deletion is tested below
    for (size_t at : {size_t(0), original.size() / 2, original.size() - 1}) {
      std::string changed = original;
      changed[at] ^= 0x01;
      put(path, changed);
      const VerifyReport v = verify_output(dir, "");
      EXPECT_FALSE(v.ok) << r << " byte " << at;
      ASSERT_EQ(v.problems.size(), 1u) << joined(v);
      EXPECT_TRUE(has_problem(v, r + ": hash mismatch")) << joined(v);
    }
    put(path, original);
    EXPECT_TRUE(verify_output(dir, "").ok) << r;
  }
}

TEST(Manifest, MissingAddedAndResizedFilesAreCaught) {
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  write_manifest(dir, json::object(), "");

  fs::rename(dir + "/model/config.json", dir + "/config.moved");
  VerifyReport v = verify_output(dir, "");
  EXPECT_FALSE(v.ok);
  EXPECT_TRUE(has_problem(v, "model/config.json: missing")) << joined(v);
  EXPECT_TRUE(has_problem(v, "config.moved: unexpected file")) << joined(v);
  fs::rename(dir + "/config.moved", dir + "/model/config.json");

  fs::remove(dir + "/empty.txt");
  v = verify_output(dir, "");
  ASSERT_EQ(v.problems.size(), 1u) << joined(v);
  EXPECT_TRUE(has_problem(v, "empty.txt: missing"));
  put(dir + "/empty.txt", "");

  put(dir + "/checkpoints/step-2/extra.bin", "x");
  v = verify_output(dir, "");
  ASSERT_EQ(v.problems.size(), 1u) << joined(v);
  EXPECT_TRUE(has_problem(v, "checkpoints/step-2/extra.bin: unexpected file"));
  fs::remove(dir + "/checkpoints/step-2/extra.bin");

  put(dir + "/metrics.jsonl", read_file(dir + "/metrics.jsonl") + "{}\n");
  v = verify_output(dir, "");
  ASSERT_EQ(v.problems.size(), 1u) << joined(v);
  EXPECT_TRUE(has_problem(v, "metrics.jsonl: size mismatch"));
}

TEST(Manifest, MissingOrMalformedManifestFails) {
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  VerifyReport v = verify_output(dir, "");
  EXPECT_FALSE(v.ok);
  EXPECT_TRUE(has_problem(v, kManifestName, "missing")) << joined(v);

  put(dir + "/" + kManifestName, "{not json");
  v = verify_output(dir, "");
  EXPECT_FALSE(v.ok);
  EXPECT_TRUE(has_problem(v, kManifestName, "not valid JSON")) << joined(v);

  put(dir + "/" + kManifestName, "{\"format\": \"other/9\", \"outputs\": {}}");
  EXPECT_TRUE(has_problem(verify_output(dir, ""), kManifestName, "unsupported format"));

  // A crafted entry must not make verify vouch for files outside the directory.
  write_manifest(dir, json::object(), "");
  json m = json::parse(read_file(dir + "/" + kManifestName));
  m["outputs"]["../outside"] = {{"size", 0}, {"sha256", sha256_hex("")}};
  put(dir + "/" + kManifestName, m.dump(2));
  v = verify_output(dir, "");
  EXPECT_FALSE(v.ok);
  EXPECT_TRUE(has_problem(v, "../outside", "not a path inside")) << joined(v);

  v = verify_output(dir + "/nope", "");
  EXPECT_FALSE(v.ok);
  EXPECT_TRUE(has_problem(v, "nope", "not a directory")) << joined(v);
}

TEST(Manifest, SignedManifestVerifiesOnlyWithItsKeyAndUntouched) {
  const std::string keys = testing::make_temp_dir("keys");
  const Keys a = make_keys(keys, "a"), b = make_keys(keys, "b");
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  write_manifest(dir, {{"method", "lora"}}, a.priv);
  const json sig = json::parse(read_file(dir + "/" + kSignatureName));
  EXPECT_EQ(sig["algorithm"], "ed25519");
  EXPECT_EQ(base64_decode(sig["signature"].get<std::string>()).size(), 64u);
  EXPECT_EQ(sig["public_key_sha256"], public_key_sha256(a.pub));
  EXPECT_EQ(sig["manifest_sha256"], sha256_file(dir + "/" + kManifestName));

  VerifyReport v = verify_output(dir, a.pub);
  EXPECT_TRUE(v.ok) << joined(v);
  EXPECT_TRUE(v.signed_);
  EXPECT_TRUE(v.signature_ok);
  v = verify_output(dir, "");  // hashes only: fine, but the signature is not vouched for
  EXPECT_TRUE(v.ok) << joined(v);
  EXPECT_TRUE(v.signed_);
  EXPECT_FALSE(v.signature_ok);

  v = verify_output(dir, b.pub);
  EXPECT_FALSE(v.ok);
  EXPECT_FALSE(v.signature_ok);
  EXPECT_TRUE(has_problem(v, kSignatureName, "different key")) << joined(v);
  ASSERT_EQ(v.problems.size(), 1u) << joined(v);
}

TEST(Manifest, EditingTheManifestBreaksTheSignature) {
  const std::string keys = testing::make_temp_dir("keys");
  const Keys a = make_keys(keys, "a");
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  write_manifest(dir, {{"steps", 10}}, a.priv);
  const std::string manifest_path = dir + "/" + kManifestName;
  const std::string original = read_file(manifest_path);

  // The attack signatures exist for: swap an output and fix its hash in the manifest. The
  // hashes then agree, so only the signature can catch it.
  put(dir + "/model/config.json", "{\"hidden_size\": 65}\n");
  json m = json::parse(original);
  m["outputs"]["model/config.json"] = {{"size", fs::file_size(dir + "/model/config.json")},
                                       {"sha256", sha256_file(dir + "/model/config.json")}};
  put(manifest_path, m.dump(2) + "\n");
  VerifyReport v = verify_output(dir, "");
  EXPECT_TRUE(v.ok) << "hashes alone agree: " << joined(v);
  v = verify_output(dir, a.pub);
  EXPECT_FALSE(v.ok);
  EXPECT_FALSE(v.signature_ok);
  ASSERT_EQ(v.problems.size(), 1u) << joined(v);
  EXPECT_TRUE(has_problem(v, kSignatureName, "changed after signing")) << joined(v);

  // Even a change that means nothing (one byte of whitespace) breaks it.
  put(manifest_path, original + " ");
  EXPECT_FALSE(verify_output(dir, a.pub).signature_ok);
  std::string flipped = original;
  flipped[flipped.size() / 2] ^= 0x01;
  put(manifest_path, flipped);
  EXPECT_FALSE(verify_output(dir, a.pub).ok);
}

TEST(Manifest, TamperedOrMissingSignatureFails) {
  const std::string keys = testing::make_temp_dir("keys");
  const Keys a = make_keys(keys, "a");
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  write_manifest(dir, json::object(), a.priv);
  const std::string sig_path = dir + "/" + kSignatureName;
  const std::string original = read_file(sig_path);
  json sig = json::parse(original);
  const std::string raw = base64_decode(sig["signature"].get<std::string>());
  for (size_t i : {size_t(0), size_t(31), size_t(63)}) {
    std::string bad = raw;
    bad[i] ^= 0x01;
    sig["signature"] = base64_encode(bad);
    put(sig_path, sig.dump(2));
    const VerifyReport v = verify_output(dir, a.pub);
    EXPECT_FALSE(v.ok) << "signature byte " << i;
    EXPECT_TRUE(has_problem(v, kSignatureName, "signature invalid")) << joined(v);
  }
  sig["signature"] = "@@not base64@@";
  put(sig_path, sig.dump());
  EXPECT_TRUE(has_problem(verify_output(dir, a.pub), kSignatureName, "malformed"));
  sig["signature"] = base64_encode(raw);
  sig["algorithm"] = "rsa";
  put(sig_path, sig.dump());
  EXPECT_TRUE(has_problem(verify_output(dir, a.pub), kSignatureName, "unsupported algorithm"));
  put(sig_path, "garbage");
  EXPECT_FALSE(verify_output(dir, a.pub).ok);
  put(sig_path, original);
  EXPECT_TRUE(verify_output(dir, a.pub).ok);

  fs::remove(sig_path);
  const VerifyReport v = verify_output(dir, a.pub);
  EXPECT_FALSE(v.ok);
  EXPECT_TRUE(has_problem(v, kSignatureName, "missing")) << joined(v);
  EXPECT_TRUE(verify_output(dir, "").ok);
}

TEST(Manifest, RewritingUnsignedDropsTheStaleSignature) {
  const std::string keys = testing::make_temp_dir("keys");
  const Keys a = make_keys(keys, "a");
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  write_manifest(dir, json::object(), a.priv);
  put(dir + "/more.txt", "later output");
  write_manifest(dir, json::object(), "");
  EXPECT_FALSE(path_exists(dir + "/" + kSignatureName));
  EXPECT_TRUE(verify_output(dir, "").ok);
  EXPECT_TRUE(has_problem(verify_output(dir, a.pub), kSignatureName, "missing"));
  // Signing again over an existing manifest: the old manifest is not an output.
  write_manifest(dir, json::object(), a.priv);
  const VerifyReport v = verify_output(dir, a.pub);
  EXPECT_TRUE(v.ok) << joined(v);
  EXPECT_EQ(v.files_checked, 8);
}

TEST(Manifest, BadSigningKeyFailsBeforeWritingAnything) {
  const std::string keys = testing::make_temp_dir("keys");
  const Keys a = make_keys(keys, "a");
  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  expect_error([&] { write_manifest(dir, json::object(), a.pub); }, {a.pub, "private key"});
  expect_error([&] { write_manifest(dir, json::object(), keys + "/none.pem"); },
               {keys + "/none.pem"});
  EXPECT_FALSE(path_exists(dir + "/" + kManifestName));
  expect_error([&] { verify_output(dir, keys + "/none.pub.pem"); }, {keys + "/none.pub.pem"});
  expect_error([&] { write_manifest(dir + "/absent", json::object(), ""); }, {"absent"});
}

TEST(Manifest, ProvenanceBaseRecordsInputs) {
  const std::string dir = testing::make_temp_dir("prov");
  put(dir + "/model/config.json", "{}");
  put(dir + "/model/tokenizer.json", "{\"model\": {}}");
  put(dir + "/model/model.safetensors", "weights");
  put(dir + "/model/sub/ignored.txt", "not directly in the model dir");
  put(dir + "/train.jsonl", "{\"text\": \"a\"}\n");
  const std::string recipe = "model:\n  path: model\n";
  const json p = provenance_base(dir + "/model", recipe, {dir + "/train.jsonl"});
  EXPECT_EQ(p["engine"]["name"], "ftune");
  EXPECT_EQ(p["engine"]["version"], FTUNE_VERSION);
  EXPECT_EQ(p["engine"]["commit"], FTUNE_GIT_COMMIT);
  EXPECT_EQ(p["base_model"]["path"], dir + "/model");
  const json& files = p["base_model"]["files"];
  ASSERT_EQ(files.size(), 3u) << files.dump(2);
  EXPECT_EQ(files[0]["path"], "config.json");
  EXPECT_EQ(files[1]["path"], "model.safetensors");
  EXPECT_EQ(files[1]["size"], 7);
  EXPECT_EQ(files[1]["sha256"], sha256_hex("weights"));
  EXPECT_EQ(files[2]["path"], "tokenizer.json");
  EXPECT_EQ(p["tokenizer"]["sha256"], sha256_hex("{\"model\": {}}"));
  EXPECT_EQ(p["recipe"]["text"], recipe);
  EXPECT_EQ(p["recipe"]["sha256"], sha256_hex(recipe));
  ASSERT_EQ(p["data"].size(), 1u);
  EXPECT_EQ(p["data"][0]["path"], dir + "/train.jsonl");
  EXPECT_EQ(p["data"][0]["size"], 14);
  EXPECT_EQ(p["data"][0]["sha256"], sha256_file(dir + "/train.jsonl"));

  fs::remove(dir + "/model/tokenizer.json");
  EXPECT_TRUE(provenance_base(dir + "/model", recipe, {})["tokenizer"]["sha256"].is_null());
  expect_error([&] { provenance_base(dir + "/nope", recipe, {}); }, {dir + "/nope"});
  expect_error([&] { provenance_base(dir + "/model", recipe, {dir + "/missing.jsonl"}); },
               {dir + "/missing.jsonl"});
  EXPECT_EQ(utc_timestamp(std::chrono::system_clock::from_time_t(0)), "1970-01-01T00:00:00Z");
}

// --- the binary ---

unsigned mode_of(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

TEST(ManifestCli, KeygenSignAndVerifyExitCodes) {
  const std::string keys = testing::make_temp_dir("keys");
  CliRun k = testing::ftune("keygen --sign " + keys + "/release");
  ASSERT_EQ(k.code, 0) << k.out;
  EXPECT_NE(k.out.find("public key sha256"), std::string::npos) << k.out;
  EXPECT_EQ(mode_of(keys + "/release.pem"), 0600u);
  EXPECT_TRUE(path_exists(keys + "/release.pub.pem"));
  const std::string priv = read_file(keys + "/release.pem");
  EXPECT_EQ(k.out.find(priv.substr(30, 40)), std::string::npos) << "printed key material";
  k = testing::ftune("keygen --sign " + keys + "/release");
  EXPECT_NE(k.code, 0);
  EXPECT_NE(k.out.find("already exists"), std::string::npos) << k.out;
  EXPECT_EQ(read_file(keys + "/release.pem"), priv);
  const Keys other = make_keys(keys, "other");

  const std::string dir = testing::make_temp_dir("manifest");
  make_output(dir);
  CliRun v = testing::ftune("verify " + dir);
  EXPECT_EQ(v.code, 1) << v.out;
  EXPECT_NE(v.out.find("missing"), std::string::npos) << v.out;

  write_manifest(dir, json::object(), keys + "/release.pem");
  v = testing::ftune("verify " + dir);
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("verified 7 files"), std::string::npos) << v.out;
  v = testing::ftune("verify " + dir + " --pubkey " + keys + "/release.pub.pem");
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("signature ok"), std::string::npos) << v.out;
  v = testing::ftune("verify " + dir + " --pubkey " + other.pub);
  EXPECT_EQ(v.code, 1) << v.out;
  EXPECT_NE(v.out.find("FAILED: 1 problem"), std::string::npos) << v.out;
  v = testing::ftune("verify " + dir + " --pubkey " + keys + "/absent.pub.pem");
  EXPECT_NE(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("absent.pub.pem"), std::string::npos) << v.out;

  put(dir + "/recipe.yaml", "model:\n  path: evil\n");
  v = testing::ftune("verify " + dir + " --pubkey " + keys + "/release.pub.pem");
  EXPECT_EQ(v.code, 1) << v.out;
  EXPECT_NE(v.out.find("recipe.yaml: hash mismatch"), std::string::npos) << v.out;

  write_manifest(dir, json::object(), "");
  EXPECT_EQ(testing::ftune("verify " + dir).code, 0);
  v = testing::ftune("verify " + dir + " --pubkey " + keys + "/release.pub.pem");
  EXPECT_EQ(v.code, 1) << "unsigned manifest passed --pubkey: " << v.out;
}

TEST(ManifestCli, KeygenEncryptAndUsage) {
  const std::string keys = testing::make_temp_dir("keys");
  CliRun k = testing::ftune("keygen --encrypt " + keys + "/data.key");
  ASSERT_EQ(k.code, 0) << k.out;
  const std::string key = read_file(keys + "/data.key");
  EXPECT_EQ(key.size(), 65u);
  EXPECT_EQ(mode_of(keys + "/data.key"), 0600u);
  EXPECT_EQ(k.out.find(key.substr(0, 64)), std::string::npos) << "printed the key";
  EXPECT_NE(testing::ftune("keygen --encrypt " + keys + "/data.key").code, 0);
  EXPECT_EQ(read_file(keys + "/data.key"), key);

  k = testing::ftune("keygen");
  EXPECT_NE(k.code, 0);
  EXPECT_NE(k.out.find("--sign"), std::string::npos) << k.out;
  EXPECT_NE(testing::ftune("keygen --sign " + keys + "/a --encrypt " + keys + "/b").code, 0);
  EXPECT_FALSE(path_exists(keys + "/a.pem"));
  EXPECT_FALSE(path_exists(keys + "/b"));
  for (const char* cmd : {"verify --help", "keygen --help"}) {
    CliRun h = testing::ftune(cmd);
    EXPECT_EQ(h.code, 0) << cmd;
    EXPECT_NE(h.out.find("Example"), std::string::npos) << cmd;
  }
}

// --- inspect summaries ---

void write_tensors(const std::string& path,
                   const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes,
                   std::vector<std::vector<float>>& keep) {
  SafetensorsWriter w;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    keep.emplace_back(size_t(n), 0.5f);
    w.add(name, shape, keep.back().data(), DType::F32, DType::F32);
  }
  w.write(path);
}

TEST(InspectSummary, LoraAdapterDirectory) {
  const std::string dir = testing::make_temp_dir("adapter");
  put(dir + "/adapter_config.json",
      R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": false,
          "target_modules": ["v_proj", "q_proj"], "base_model_name_or_path": "base/llama"})");
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (int layer = 0; layer < 2; ++layer)
    for (const char* m : {"q_proj", "v_proj"}) {
      const std::string p =
          "base_model.model.model.layers." + std::to_string(layer) + ".self_attn." + m;
      shapes.push_back({p + ".lora_A.weight", {4, 16}});
      shapes.push_back({p + ".lora_B.weight", {std::string(m) == "q_proj" ? 16 : 8, 4}});
    }
  std::vector<std::vector<float>> keep;
  keep.reserve(shapes.size());
  write_tensors(dir + "/adapter_model.safetensors", shapes, keep);
  const std::string out = inspect_path(dir);
  for (const char* want :
       {"adapter:", "LORA, rank 4, alpha 8, scale 2", "targets:    q_proj, v_proj",
        "base model: base/llama", "adapted:    4 modules (q_proj, v_proj) in 2 layers",
        "tensors:    8", "(448)", "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"})
    EXPECT_NE(out.find(want), std::string::npos) << want << "\n" << out;
  EXPECT_EQ(out.find("tensor rank"), std::string::npos) << out;
  EXPECT_EQ(out.find("manifest"), std::string::npos) << out;

  // rsLoRA scales by alpha/sqrt(r); a manifest beside the adapter is summarised too.
  put(dir + "/adapter_config.json",
      R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true,
          "target_modules": "all-linear"})");
  write_manifest(dir, {{"method", "lora"}, {"steps", 3}}, "");
  const std::string out2 = inspect_path(dir);
  EXPECT_NE(out2.find("scale 4 (rsLoRA)"), std::string::npos) << out2;
  EXPECT_NE(out2.find("targets:    all-linear"), std::string::npos) << out2;
  EXPECT_NE(out2.find("method:     lora"), std::string::npos) << out2;
  EXPECT_NE(out2.find("outputs:    2 files"), std::string::npos) << out2;
  CliRun r = testing::ftune("inspect " + dir);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, out2);
}

TEST(InspectSummary, ManifestOfARunDirectory) {
  const std::string keys = testing::make_temp_dir("keys");
  const Keys a = make_keys(keys, "a");
  const std::string dir = testing::make_temp_dir("run");
  std::vector<std::vector<float>> keep;
  keep.reserve(1);
  fs::create_directories(dir + "/model");
  write_tensors(dir + "/model/model.safetensors", {{"lm_head.weight", {4, 8}}}, keep);
  put(dir + "/metrics.jsonl", "{}\n");
  json m = provenance_base(dir + "/model", "recipe: 1\n", {});
  m["method"] = "full";
  m["steps"] = 200;
  m["tokens_seen"] = 1234567;
  m["final_train_loss"] = 1.25;
  m["final_val_loss"] = nullptr;
  m["start_time"] = "2025-01-31T12:00:00Z";
  m["end_time"] = "2025-01-31T12:30:00Z";
  write_manifest(dir, m, a.priv);
  const std::string out = inspect_path(dir);
  for (const std::string& want :
       {std::string("output:     ") + dir, std::string("contains:   model/"),
        std::string("engine:     ftune ") + FTUNE_VERSION + " (commit " + FTUNE_GIT_COMMIT + ")",
        std::string("method:     full"), std::string("steps:      200, 1.23M tokens"),
        std::string("loss:       train 1.2500, val n/a"),
        std::string("time:       2025-01-31T12:00:00Z to 2025-01-31T12:30:00Z"),
        std::string("outputs:    2 files"),
        "signed:     yes (ftune-manifest.sig, public key sha256 " +
            public_key_sha256(a.pub).substr(0, 16)})
    EXPECT_NE(out.find(want), std::string::npos) << want << "\n" << out;

  // A model directory with a manifest keeps its tensor table and gains the summary.
  write_manifest(dir + "/model", {{"method", "full"}}, "");
  const std::string model = inspect_path(dir + "/model");
  EXPECT_NE(model.find("lm_head.weight"), std::string::npos) << model;
  EXPECT_NE(model.find("signed:     no"), std::string::npos) << model;
  // Plain directories without weights still fail as before.
  const std::string empty = testing::make_temp_dir("empty");
  expect_error([&] { inspect_path(empty); }, {empty});
}

}  // namespace
}  // namespace ftune
