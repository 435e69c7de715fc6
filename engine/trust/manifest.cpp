#include "engine/trust/manifest.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/trust/signing.h"

namespace ftune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Regular files under dir (links to files followed, as readers of the output would), relative
// '/'-separated, sorted; the manifest and its signature at the top are not outputs.
std::vector<std::string> list_output_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  if (ec) throw Error("cannot list '" + dir + "': " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    std::error_code sec;
    if (!it->is_regular_file(sec)) continue;
    std::string rel = it->path().lexically_relative(dir).generic_string();
    if (rel == kManifestName || rel == kSignatureName) continue;
    out.push_back(std::move(rel));
  }
  if (ec) throw Error("cannot list '" + dir + "': " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t regular_file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw Error("cannot hash '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error("cannot hash '" + path + "': not a regular file");
  return uint64_t(st.st_size);
}

// A manifest path must stay inside the output directory: a crafted manifest must not make
// verify read (and so vouch for) files elsewhere.
bool safe_relative_path(const std::string& rel) {
  if (rel.empty() || rel.front() == '/' || rel.back() == '/') return false;
  size_t start = 0;
  while (start <= rel.size()) {
    size_t slash = rel.find('/', start);
    if (slash == std::string::npos) slash = rel.size();
    const std::string_view seg(rel.data() + start, slash - start);
    if (seg.empty() || seg == "." || seg == "..") return false;
    start = slash + 1;
  }
  return true;
}

bool is_sha256_hex(const json& v) {
  if (!v.is_string()) return false;
  const std::string& s = v.get_ref<const std::string&>();
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

std::string dump_or_throw(const json& j, const std::string& what) {
  try {
    return j.dump(2) + "\n";
  } catch (const json::exception& e) {
    // Only invalid UTF-8 (in a file name, say) makes dump() fail.
    throw Error("cannot write " + what + ": " + e.what());
  }
}

std::string json_text(const json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

std::string short_hash(const std::string& h) {
  return h.substr(0, 12) + "…";
}

// Checks the signature file against the manifest bytes; adds problems naming the signature.
void check_signature(const std::string& sig_path, const std::string& manifest_text,
                     const std::string& pubkey_pem, VerifyReport& r) {
  const std::string name = kSignatureName;
  json sig;
  try {
    sig = parse_json_bounded(read_file(sig_path), name);
  } catch (const std::exception& e) {  // invalid JSON, or nested past kMaxJsonDepth
    r.problems.push_back(name + ": not valid JSON (" + e.what() + ")");
    return;
  }
  if (!sig.is_object() || !sig.contains("signature") || !sig["signature"].is_string()) {
    r.problems.push_back(name + ": malformed, expected {\"algorithm\", \"signature\", ...}");
    return;
  }
  if (sig.value("algorithm", json()) != "ed25519") {
    r.problems.push_back(name + ": unsupported algorithm " + sig.value("algorithm", json()).dump() +
                         " (ftune signs with ed25519)");
    return;
  }
  std::string raw;
  try {
    raw = base64_decode(sig["signature"].get<std::string>());
  } catch (const Error& e) {
    r.problems.push_back(name + ": malformed signature (" + e.what() + ")");
    return;
  }
  if (verify_signature(pubkey_pem, manifest_text, raw)) {
    r.signature_ok = true;
    return;
  }
  // The cryptographic check has decided; the recorded hashes only explain why it failed.
  std::string why;
  if (sig.value("manifest_sha256", json()) != sha256_hex(manifest_text))
    why = "; " + std::string(kManifestName) + " was changed after signing";
  else if (sig.value("public_key_sha256", json()) != public_key_sha256(pubkey_pem))
    why = "; it was signed by a different key (public key sha256 " +
          short_hash(json_text(sig["public_key_sha256"])) + ")";
  r.problems.push_back(name + ": signature invalid for " + kManifestName + " under public key '" +
                       pubkey_pem + "'" + why);
}

}  // namespace

json file_entries(const std::vector<std::string>& paths) {
  json out = json::array();
  for (const std::string& p : paths) {
    const uint64_t size = regular_file_size(p);
    out.push_back({{"path", p}, {"size", size}, {"sha256", sha256_file(p)}});
  }
  return out;
}

json hash_output_dir(const std::string& dir) {
  json out = json::object();
  for (const std::string& rel : list_output_files(dir)) {
    const std::string full = dir + "/" + rel;
    const uint64_t size = regular_file_size(full);
    out[rel] = {{"size", size}, {"sha256", sha256_file(full)}};
  }
  return out;
}

json provenance_base(const std::string& model_dir, const std::string& recipe_text,
                     const std::vector<std::string>& data_files) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec))
    throw Error("base model directory '" + model_dir + "' does not exist or is not a directory");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) {
    std::error_code sec;
    if (e.is_regular_file(sec)) names.push_back(e.path().filename().string());
  }
  if (ec) throw Error("cannot list base model directory '" + model_dir + "': " + ec.message());
  std::sort(names.begin(), names.end());
  json files = json::array();
  for (const std::string& n : names) {
    json entry = file_entries({model_dir + "/" + n})[0];
    entry["path"] = n;  // relative to base_model.path
    files.push_back(std::move(entry));
  }
  const std::string tok = model_dir + "/tokenizer.json";
  json manifest = {
      {"engine", {{"name", "ftune"}, {"version", FTUNE_VERSION}, {"commit", FTUNE_GIT_COMMIT}}},
      {"base_model", {{"path", model_dir}, {"files", std::move(files)}}},
      {"tokenizer",
       {{"file", "tokenizer.json"},
        {"sha256", path_exists(tok) ? json(sha256_file(tok)) : json()}}},
      {"recipe", {{"text", recipe_text}, {"sha256", sha256_hex(recipe_text)}}},
      {"data", file_entries(data_files)},
  };
  return manifest;
}

json write_manifest(const std::string& out_dir, json manifest, const std::string& sign_key_pem) {
  if (manifest.is_null()) manifest = json::object();
  FTUNE_CHECK(manifest.is_object(), "manifest must be a JSON object");
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec))
    throw Error("cannot write the manifest: output directory '" + out_dir + "' does not exist");
  // Check the key before hashing (which can take minutes on big outputs): a bad key fails fast
  // and leaves nothing written. Signing nothing loads it as a private key.
  std::string key_sha;
  if (!sign_key_pem.empty()) {
    sign_bytes(sign_key_pem, {});
    key_sha = public_key_sha256(sign_key_pem);
  }

  // A signature from an earlier run must not sit beside the new manifest; removed first, a
  // crash below leaves an unsigned manifest rather than a mismatched pair.
  const std::string sig_path = out_dir + "/" + kSignatureName;
  if (::unlink(sig_path.c_str()) != 0 && errno != ENOENT)
    throw Error("cannot remove the old signature '" + sig_path + "': " + std::strerror(errno));

  manifest["format"] = kManifestFormat;
  manifest["outputs"] = hash_output_dir(out_dir);
  const std::string text = dump_or_throw(manifest, out_dir + "/" + kManifestName);
  write_file_atomic(out_dir + "/" + kManifestName, text);
  if (!sign_key_pem.empty()) {
    const json sig = {{"algorithm", "ed25519"},
                      {"signature", base64_encode(sign_bytes(sign_key_pem, text))},
                      {"public_key_sha256", key_sha},
                      {"manifest_sha256", sha256_hex(text)}};
    write_file_atomic(sig_path, sig.dump(2) + "\n");
  }
  return manifest;
}

VerifyReport verify_output(const std::string& dir, const std::string& pubkey_pem) {
  VerifyReport r;
  // Loading the key checks it up front, so a wrong --pubkey path is an error even when the
  // output has no signature to check it against.
  if (!pubkey_pem.empty()) verify_signature(pubkey_pem, {}, {});
  auto finish = [&r] {
    r.ok = r.problems.empty();
    return r;
  };
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    r.problems.push_back(dir + ": not a directory");
    return finish();
  }
  const std::string manifest_path = dir + "/" + kManifestName;
  const std::string sig_path = dir + "/" + kSignatureName;
  struct stat st;
  r.signed_ = ::lstat(sig_path.c_str(), &st) == 0;
  if (!path_exists(manifest_path)) {
    r.problems.push_back(std::string(kManifestName) + ": missing (not an ftune output, or " +
                         "written before manifests existed)");
    return finish();
  }
  const std::string text = read_file(manifest_path);
  json m;
  try {
    m = parse_json_bounded(text, kManifestName);
  } catch (const std::exception& e) {  // invalid JSON, or nested past kMaxJsonDepth
    r.problems.push_back(std::string(kManifestName) + ": not valid JSON (" + e.what() + ")");
  }
  if (r.problems.empty() && (!m.is_object() || m.value("format", json()) != kManifestFormat)) {
    r.problems.push_back(std::string(kManifestName) + ": unsupported format " +
                         (m.is_object() ? m.value("format", json()).dump() : "(not an object)") +
                         ", expected \"" + kManifestFormat + "\"");
  }
  if (r.problems.empty() && !(m.contains("outputs") && m["outputs"].is_object()))
    r.problems.push_back(std::string(kManifestName) + ": no \"outputs\" object");
  // The signature covers the bytes, so it is checked even when the content is unusable.
  if (!pubkey_pem.empty()) {
    if (!r.signed_)
      r.problems.push_back(std::string(kSignatureName) +
                           ": missing; a public key was given, so the manifest must be signed");
    else
      check_signature(sig_path, text, pubkey_pem, r);
  }
  if (!r.problems.empty() && !(m.is_object() && m.contains("outputs") && m["outputs"].is_object()))
    return finish();

  const json& outputs = m["outputs"];
  std::set<std::string> listed;
  for (const auto& [rel, entry] : outputs.items()) {
    listed.insert(rel);
    if (!safe_relative_path(rel) || rel == kManifestName || rel == kSignatureName) {
      r.problems.push_back(rel + ": not a path inside the output directory; manifest tampered?");
      continue;
    }
    if (!entry.is_object() || !entry.contains("size") || !entry["size"].is_number_unsigned() ||
        !is_sha256_hex(entry.value("sha256", json()))) {
      r.problems.push_back(rel + ": malformed manifest entry, expected {size, sha256}");
      continue;
    }
    const std::string full = dir + "/" + rel;
    struct stat fst;
    if (::stat(full.c_str(), &fst) != 0) {
      r.problems.push_back(rel + ": missing");
      continue;
    }
    if (!S_ISREG(fst.st_mode)) {
      r.problems.push_back(rel + ": not a regular file");
      continue;
    }
    ++r.files_checked;
    const uint64_t want_size = entry["size"].get<uint64_t>();
    if (uint64_t(fst.st_size) != want_size) {
      r.problems.push_back(rel + ": size mismatch (manifest " + std::to_string(want_size) +
                           " bytes, file " + std::to_string(fst.st_size) + " bytes)");
      continue;
    }
    const std::string want = entry["sha256"].get<std::string>();
    std::string got;
    try {
      got = sha256_file(full);
    } catch (const Error& e) {
      r.problems.push_back(rel + ": unreadable (" + e.what() + ")");
      continue;
    }
    if (got != want)
      r.problems.push_back(rel + ": hash mismatch (manifest sha256 " + short_hash(want) +
                           ", file " + short_hash(got) + ")");
  }
  try {
    for (const std::string& rel : list_output_files(dir))
      if (!listed.count(rel)) r.problems.push_back(rel + ": unexpected file, not in the manifest");
  } catch (const Error& e) {
    r.problems.push_back(e.what());
  }
  return finish();
}

std::string utc_timestamp(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace ftune
