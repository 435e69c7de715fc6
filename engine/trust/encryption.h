// Encryption at rest for weight files: AES-256-GCM through OpenSSL EVP, so that fine-tuned
// weights can live on shared storage without their plaintext ever touching the disk.
//
// File format ("FTENC001"):
//   8 bytes   magic "FTENC001"
//   8 bytes   u64 little-endian length H of the header
//   H bytes   JSON header, plaintext: {"cipher": "AES-256-GCM", "nonce": 24 hex chars (a fresh
//             random 96-bit nonce per file), "key_id": 16 hex chars, "plaintext_bytes": N,
//             plus what the writer adds; safetensors adds "format": "safetensors" and
//             "tensors": [{"name", "dtype", "shape"}...], so a file can be listed without its key}
//   N bytes   ciphertext of the whole plain file (for safetensors: its header and data block)
//   16 bytes  GCM tag
// Everything before the ciphertext (magic, length and header) is GCM additional data, so the
// header is authenticated too: changing any byte of the file fails the tag check.
// key_id is a one-way fingerprint of the key (SHA-256 with a label, 64 bits); it only tells a wrong
// key from a damaged file in error messages and never reveals the key.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/byte_source.h"

namespace ftune {

struct WeightKey {
  std::array<uint8_t, 32> bytes{};
  std::string origin;  // where it came from, for messages: "key file 'x.key'", "$FTUNE_KEY"
  ~WeightKey();        // wipes the key bytes
};

// Key text is 64 hex characters (256 bits), surrounding whitespace allowed. Errors name the file
// or variable and what is wrong with it, never any of its characters.
WeightKey load_key_file(const std::string& path);
WeightKey load_key_env(const std::string& var);
// The key given by the usual pair of options (--key-file / --key-env, or export.encrypt's
// key_file / key_env): nullopt when both are empty, an error when both are set.
std::optional<WeightKey> load_key_option(const std::string& key_file, const std::string& key_env);
// 32 random bytes (OpenSSL RAND_bytes) as 64 lowercase hex characters, for `ftune keygen`.
std::string new_key_hex();
// One-way fingerprint of a key, 16 hex characters; safe to print and to record in manifests.
std::string key_id(const WeightKey& key);

// True when the file starts with the "FTENC001" magic; false for short, missing or unreadable
// files (opening those reports the real problem).
bool is_encrypted_file(const std::string& path);
// The header of an encrypted file, read without the key: NOT authenticated, for display only
// (`ftune inspect`). Throws naming the file when it is not an encrypted file or is damaged.
nlohmann::json read_encrypted_header(const std::string& path);

// Reads and decrypts the whole file into memory and checks the GCM tag before anything is
// returned; the result is a memory ByteSource labelled with the path that holds the plain file.
// A wrong key, any changed byte or a truncated file is an ftune::Error ("authentication failed"
// or "truncated") naming the file; no unauthenticated byte is ever handed out.
std::unique_ptr<ByteSource> open_encrypted_file(const std::string& path, const WeightKey& key);

// Streams an encrypted file into fd (use inside write_file_atomic_with): the constructor writes
// magic and header, write() encrypts in chunks, finish() writes the tag. Exactly
// plaintext_bytes must be written before finish() (the size is in the header so readers detect
// truncation before decrypting). header_extra's keys join the header; it must not use the
// reserved ones (cipher, nonce, key_id, plaintext_bytes). Errors name `path`.
class EncryptingWriter {
 public:
  EncryptingWriter(int fd, const WeightKey& key, const std::string& path, uint64_t plaintext_bytes,
                   const nlohmann::json& header_extra);
  ~EncryptingWriter();
  EncryptingWriter(const EncryptingWriter&) = delete;
  EncryptingWriter& operator=(const EncryptingWriter&) = delete;

  void write(const void* data, size_t n);
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// AES-GCM with one nonce is safe up to 2^39 - 256 bits; files bigger than this must be sharded.
constexpr uint64_t kMaxEncryptedBytes = (uint64_t(1) << 36) - 32;

}  // namespace ftune
