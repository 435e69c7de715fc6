// Provenance manifest: every output directory carries ftune-manifest.json saying what went in
// (base model, tokenizer, recipe, data, engine) and the SHA-256 of every file that came out,
// optionally signed with Ed25519 (ftune-manifest.sig). `ftune verify` checks both.
//
// Manifest shape (format "ftune-manifest/1"; keys sorted, 2-space indent, trailing newline):
//   {"format": "ftune-manifest/1",
//    "engine": {"name": "ftune", "version": "...", "commit": "..."},
//    "base_model": {"path": "...", "files": [{"path", "size", "sha256"}, ...]},
//    "tokenizer": {"file": "tokenizer.json", "sha256": "..." | null},
//    "recipe": {"text": "<resolved YAML>", "sha256": "..."},
//    "data": [{"path", "size", "sha256"}, ...],
//    "outputs": {"<relative/path>": {"size": N, "sha256": "..."}, ...},
//    ... plus what the trainer adds; `ftune inspect` shows these when present:
//    "method": "full" | "lora" | ..., "steps": N, "tokens_seen": N,
//    "final_train_loss": x | null, "final_val_loss": x | null,
//    "start_time": "2025-01-31T12:00:00Z", "end_time": "..."}
//
// Signature file (JSON): {"algorithm": "ed25519", "signature": "<base64 of 64 bytes>",
//   "public_key_sha256": "<hex>", "manifest_sha256": "<hex>"}. The signature covers the exact
// bytes of ftune-manifest.json; the two hashes are hints for error messages only.
#pragma once
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ftune {

constexpr const char* kManifestName = "ftune-manifest.json";
constexpr const char* kSignatureName = "ftune-manifest.sig";
constexpr const char* kManifestFormat = "ftune-manifest/1";

// [{path, size, sha256}] for each path as given, in the given order. Throws naming a path that
// is missing or not a regular file.
nlohmann::json file_entries(const std::vector<std::string>& paths);

// {relative_path: {size, sha256}} for every regular file under dir, recursively ('/'-separated
// paths, sorted), except the manifest and signature at the top. Links to files are hashed by
// content, as a reader of the output would see them; links to directories are not followed.
nlohmann::json hash_output_dir(const std::string& dir);

// The run-independent part of the provenance: engine, base model (every regular file directly in
// model_dir), tokenizer (model_dir/tokenizer.json), recipe text and hash, data files.
nlohmann::json provenance_base(const std::string& model_dir, const std::string& recipe_text,
                               const std::vector<std::string>& data_files);

// Sets "format" and "outputs" (= hash_output_dir(out_dir)) on `manifest` (a JSON object) and
// writes out_dir/ftune-manifest.json atomically. With sign_key_pem (an Ed25519 private key PEM)
// it then signs the manifest's exact bytes and writes ftune-manifest.sig atomically; without,
// any stale signature from an earlier run is removed. Returns the manifest as written.
nlohmann::json write_manifest(const std::string& out_dir, nlohmann::json manifest,
                              const std::string& sign_key_pem);

struct VerifyReport {
  bool ok = false;                    // no problems
  std::vector<std::string> problems;  // one line each, naming the relative path
  bool signed_ = false;               // ftune-manifest.sig is present
  bool signature_ok = false;          // checked against the given public key and valid
  int files_checked = 0;              // manifest output entries whose hashes were compared
};

// Recomputes every output hash against out_dir's manifest and lists missing, changed and
// unexpected files. With pubkey_pem the signature must be present and valid. Problems with the
// output are reported, not thrown; an unreadable or non-Ed25519 public key throws ftune::Error.
VerifyReport verify_output(const std::string& dir, const std::string& pubkey_pem);

// "2025-01-31T12:00:00Z": the form start_time / end_time take.
std::string utc_timestamp(std::chrono::system_clock::time_point t);

}  // namespace ftune
