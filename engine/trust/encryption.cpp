#include "engine/trust/encryption.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/base/little_endian.h"

namespace ftune {

namespace {

using json = nlohmann::json;

constexpr char kMagic[8] = {'F', 'T', 'E', 'N', 'C', '0', '0', '1'};
constexpr size_t kPrefixBytes = 16;  // magic + u64 header length
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr const char* kCipher = "AES-256-GCM";
// A real header is kilobytes (one entry per tensor); the cap keeps a damaged length field from
// asking for gigabytes before anything is checked.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
// EVP takes int lengths; chunks also bound the writer's staging buffer.
constexpr size_t kChunkBytes = 4u << 20;
constexpr const char* kKeyHint =
    "a key is 64 hex characters (256 bits); make one with `ftune keygen`";

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string to_hex(const uint8_t* p, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 0xf]);
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// False on any non-hex character or wrong length; out must hold text.size()/2 bytes.
bool from_hex(const std::string& text, uint8_t* out, size_t n) {
  if (text.size() != 2 * n) return false;
  for (size_t i = 0; i < n; ++i) {
    const int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = uint8_t(hi << 4 | lo);
  }
  return true;
}

// Wipes a string that held key text before it is freed.
void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// True for 64 hex characters (whitespace around allowed): what a key looks like. A key pasted
// where a file path or variable name belongs must not be echoed back in a message.
bool looks_like_key(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  const size_t e = s.find_last_not_of(" \t\r\n");
  if (b == std::string::npos || e - b + 1 != 64) return false;
  for (size_t i = b; i <= e; ++i)
    if (hex_value(s[i]) < 0) return false;
  return true;
}

constexpr const char* kLooksLikeKey =
    "is itself 64 hex characters, which looks like the key rather than where to find it "
    "(not shown); put the key in a file and give its path, or in an environment variable and "
    "give its name";

// Parses key text; messages say what is wrong but quote none of its characters.
WeightKey parse_key_text(std::string text, const std::string& origin) {
  const char* ws = " \t\r\n";
  const size_t b = text.find_first_not_of(ws);
  const size_t e = text.find_last_not_of(ws);
  const size_t len = b == std::string::npos ? 0 : e - b + 1;
  std::string reason;
  if (len == 0) {
    reason = "is empty";
  } else if (len != 64) {
    reason = "holds " + std::to_string(len) + " characters, not 64";
  } else {
    for (size_t i = 0; i < len; ++i) {
      if (hex_value(text[b + i]) < 0) {
        reason = "has a character that is not a hex digit (position " + std::to_string(i + 1) + ")";
        break;
      }
    }
  }
  if (!reason.empty()) {
    wipe(text);
    throw Error(origin + " " + reason + "; " + kKeyHint);
  }
  WeightKey key;
  key.origin = origin;
  std::string trimmed = text.substr(b, len);
  const bool ok = from_hex(trimmed, key.bytes.data(), key.bytes.size());
  wipe(trimmed);
  wipe(text);
  FTUNE_CHECK(ok, "validated key text failed to decode");
  return key;
}

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// A GCM context with key and nonce set; `encrypt` picks the direction.
CipherCtx gcm_begin(bool encrypt, const WeightKey& key, const uint8_t* nonce,
                    const std::string& path) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  const auto init = encrypt ? EVP_EncryptInit_ex : EVP_DecryptInit_ex;
  if (!ctx || init(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, int(kNonceBytes), nullptr) != 1 ||
      init(ctx.get(), nullptr, nullptr, key.bytes.data(), nonce) != 1)
    throw Error("'" + path + "': cannot set up AES-256-GCM (OpenSSL failure)");
  return ctx;
}

// Owns a file descriptor for reading; closes on every exit path.
class ReadFd {
 public:
  explicit ReadFd(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error("cannot open '" + path + "': " + errno_text(errno));
    struct stat st;
    const bool stat_ok = ::fstat(fd_, &st) == 0;
    const int err = errno;
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw Error(stat_ok ? "'" + path + "' is not a regular file"
                          : "cannot stat '" + path + "': " + errno_text(err));
    }
    size_ = size_t(st.st_size);
  }
  ~ReadFd() { ::close(fd_); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
  size_t size() const { return size_; }
  // Reads exactly n bytes at offset (within the size seen at open).
  void read(size_t offset, void* dst, size_t n) const {
    auto* out = static_cast<uint8_t*>(dst);
    while (n > 0) {
      ssize_t got = ::pread(fd_, out, n, off_t(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw Error("cannot read '" + path_ + "': " + errno_text(errno));
      }
      if (got == 0)
        throw Error("'" + path_ + "' ended early at offset " + std::to_string(offset) +
                    " (was it truncated while ftune was reading it?)");
      out += got;
      offset += size_t(got);
      n -= size_t(got);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  size_t size_ = 0;
};

std::string auth_failed(const std::string& path, const std::string& why) {
  return "'" + path + "': authentication failed: " + why + "; no weights were read";
}

std::string truncated(const std::string& path, const std::string& detail) {
  return "'" + path + "' is truncated (" + detail +
         "): authentication failed, no weights were read; copy the file again";
}

// What the plaintext header says, checked for shape (not yet authenticated).
struct Header {
  json j;
  uint64_t header_len = 0;
  uint8_t nonce[kNonceBytes] = {};
  std::string key_id;
  uint64_t plaintext_bytes = 0;
  uint64_t file_bytes() const { return kPrefixBytes + header_len + plaintext_bytes + kTagBytes; }
};

// Reads and checks magic, length, header and the file size the header implies.
Header read_header(const ReadFd& f, const std::string& path) {
  const size_t size = f.size();
  uint8_t prefix[kPrefixBytes] = {};
  f.read(0, prefix, std::min(size, kPrefixBytes));
  if (std::memcmp(prefix, kMagic, std::min(size, sizeof kMagic)) != 0 || size == 0)
    throw Error("'" + path + "' is not an ftune-encrypted weight file (it does not start with " +
                "\"FTENC001\")");
  if (size < kPrefixBytes + kTagBytes)
    throw Error(
        truncated(path, std::to_string(size) + " bytes, too short for an encrypted weight file"));
  Header h;
  h.header_len = load_le64(prefix + 8);
  if (h.header_len > kMaxHeaderBytes)
    throw Error(auth_failed(
        path, "the header length field (" + std::to_string(h.header_len) + " bytes) is damaged"));
  if (h.header_len > size - kPrefixBytes - kTagBytes)
    throw Error(truncated(path, "its header length, " + std::to_string(h.header_len) +
                                    " bytes, runs past the end of the file at " +
                                    std::to_string(size) + " bytes; or the length is damaged"));
  std::string text(h.header_len, '\0');
  f.read(kPrefixBytes, text.data(), text.size());
  auto damaged = [&](const std::string& what) {
    throw Error(auth_failed(path, "the encryption header is damaged (" + what +
                                      "); the file was modified or corrupted"));
  };
  if (json_nesting_depth(text) > kMaxJsonDepth)
    damaged("JSON nested more than " + std::to_string(kMaxJsonDepth) + " levels deep");
  try {
    h.j = json::parse(text);
  } catch (const json::exception&) {
    damaged("not valid JSON");
  }
  if (!h.j.is_object()) damaged("not a JSON object");
  const json& jc = h.j.value("cipher", json());
  if (!jc.is_string() || jc.get<std::string>() != kCipher)
    damaged(std::string("'cipher' must be \"") + kCipher + "\", the only cipher ftune uses");
  const json& jn = h.j.value("nonce", json());
  if (!jn.is_string() || !from_hex(jn.get<std::string>(), h.nonce, kNonceBytes))
    damaged("'nonce' must be 24 hex characters");
  const json& jk = h.j.value("key_id", json());
  // Hex only: key_id is echoed in wrong-key messages, so it must not carry terminal controls.
  uint8_t id_bytes[8];
  if (!jk.is_string() || !from_hex(jk.get<std::string>(), id_bytes, sizeof id_bytes))
    damaged("'key_id' must be 16 hex characters");
  h.key_id = jk.get<std::string>();
  const json& jp = h.j.value("plaintext_bytes", json());
  if (!jp.is_number_unsigned() || jp.get<uint64_t>() > kMaxEncryptedBytes)
    damaged("'plaintext_bytes' must be a size");
  h.plaintext_bytes = jp.get<uint64_t>();
  const uint64_t want = h.file_bytes();
  if (size < want)
    throw Error(truncated(
        path, std::to_string(size) + " bytes where its header describes " + std::to_string(want)));
  if (size > want)
    throw Error(auth_failed(path, std::to_string(size - want) +
                                      " unexpected bytes follow the end of the encrypted data; " +
                                      "the file was modified or corrupted"));
  return h;
}

// Plain bytes of a decrypted file, kept where they were decrypted (in place, after the header)
// so a multi-gigabyte file needs one buffer and no copy.
class DecryptedSource final : public ByteSource {
 public:
  DecryptedSource(std::unique_ptr<uint8_t[]> buf, size_t offset, size_t size, std::string label)
      : buf_(std::move(buf)), offset_(offset), size_(size), label_(std::move(label)) {}
  size_t size() const override { return size_; }
  void read(size_t offset, void* dst, size_t n) const override {
    if (offset > size_ || n > size_ - offset)
      throw Error(label_ + ": read of " + std::to_string(n) + " bytes at offset " +
                  std::to_string(offset) + " is past the end of the decrypted data (" +
                  std::to_string(size_) + " bytes); the file is corrupt");
    if (n) std::memcpy(dst, buf_.get() + offset_ + offset, n);
  }
  const uint8_t* data() const override { return buf_.get() + offset_; }
  const std::string& label() const override { return label_; }

 private:
  std::unique_ptr<uint8_t[]> buf_;
  size_t offset_, size_;
  std::string label_;
};

}  // namespace

WeightKey::~WeightKey() {
  OPENSSL_cleanse(bytes.data(), bytes.size());
}

WeightKey load_key_file(const std::string& path) {
  const bool keylike = looks_like_key(path);
  const std::string origin = keylike ? "key file (name not shown)" : "key file '" + path + "'";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (keylike) throw Error(std::string("the key file path given ") + kLooksLikeKey);
    throw Error("cannot read " + origin + ": " + errno_text(errno));
  }
  if (!S_ISREG(st.st_mode)) throw Error(origin + " is not a regular file");
  // A weights file given by mistake would otherwise be read whole just to be refused.
  if (st.st_size > 4096)
    throw Error(origin + " is " + std::to_string(st.st_size) + " bytes, too big for a key; " +
                kKeyHint);
  std::string text;
  try {
    text = read_file(path);
  } catch (const Error& e) {
    throw Error("cannot read " + origin + ": " + e.what());
  }
  return parse_key_text(std::move(text), origin);
}

WeightKey load_key_env(const std::string& var) {
  if (var.empty()) throw Error("no environment variable named for the key");
  if (looks_like_key(var))
    throw Error(std::string("the key environment variable name given ") + kLooksLikeKey);
  const std::string origin = "$" + var;
  const char* v = std::getenv(var.c_str());
  if (!v)
    throw Error("environment variable " + var + " is not set; it should hold the key (" + kKeyHint +
                ")");
  return parse_key_text(v, origin);
}

std::optional<WeightKey> load_key_option(const std::string& key_file, const std::string& key_env) {
  if (!key_file.empty() && !key_env.empty())
    throw Error("give the key once: either a key file or an environment variable, not both");
  if (!key_file.empty()) return load_key_file(key_file);
  if (!key_env.empty()) return load_key_env(key_env);
  return std::nullopt;
}

std::string new_key_hex() {
  uint8_t bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1)
    throw Error("cannot make a key: the OpenSSL random generator failed");
  std::string hex = to_hex(bytes, sizeof bytes);
  OPENSSL_cleanse(bytes, sizeof bytes);
  return hex;
}

std::string key_id(const WeightKey& key) {
  // Labelled so the fingerprint is of no use for anything but telling keys apart.
  static const char kLabel[] = "ftune weight key id v1";
  uint8_t in[sizeof kLabel + 32];
  std::memcpy(in, kLabel, sizeof kLabel);
  std::memcpy(in + sizeof kLabel, key.bytes.data(), 32);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const bool ok = EVP_Digest(in, sizeof in, digest, &len, EVP_sha256(), nullptr) == 1;
  OPENSSL_cleanse(in, sizeof in);
  if (!ok) throw Error("cannot fingerprint the key (OpenSSL failure)");
  return to_hex(digest, 8);
}

bool is_encrypted_file(const std::string& path) {
  // Non-blocking so a FIFO given by mistake cannot hang the check; only regular files count.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return false;
  }
  char head[sizeof kMagic];
  size_t have = 0;
  while (have < sizeof head) {
    ssize_t got = ::read(fd, head + have, sizeof head - have);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    have += size_t(got);
  }
  ::close(fd);
  return have == sizeof head && std::memcmp(head, kMagic, sizeof kMagic) == 0;
}

json read_encrypted_header(const std::string& path) {
  ReadFd f(path);
  return read_header(f, path).j;
}

std::unique_ptr<ByteSource> open_encrypted_file(const std::string& path, const WeightKey& key) {
  ReadFd f(path);
  const Header h = read_header(f, path);
  const size_t body = kPrefixBytes + size_t(h.header_len);
  const size_t n = size_t(h.plaintext_bytes);
  // One buffer holds the whole file; the ciphertext is decrypted where it lies.
  std::unique_ptr<uint8_t[]> buf(new uint8_t[body + n + kTagBytes]);
  f.read(0, buf.get(), body + n + kTagBytes);

  CipherCtx ctx = gcm_begin(false, key, h.nonce, path);
  int outl = 0;
  if (EVP_DecryptUpdate(ctx.get(), nullptr, &outl, buf.get(), int(body)) != 1)
    throw Error("'" + path + "': cannot decrypt (OpenSSL failure)");
  for (size_t off = 0; off < n; off += kChunkBytes) {
    uint8_t* p = buf.get() + body + off;
    const int len = int(std::min(kChunkBytes, n - off));
    if (EVP_DecryptUpdate(ctx.get(), p, &outl, p, len) != 1 || outl != len)
      throw Error("'" + path + "': cannot decrypt (OpenSSL failure)");
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, int(kTagBytes), buf.get() + body + n) !=
      1)
    throw Error("'" + path + "': cannot decrypt (OpenSSL failure)");
  uint8_t final_block[16];
  if (EVP_DecryptFinal_ex(ctx.get(), final_block, &outl) != 1) {
    // The bytes decrypted so far are unauthenticated: they must not outlive this function.
    OPENSSL_cleanse(buf.get() + body, n);
    const std::string id = key_id(key);
    if (id == h.key_id)
      throw Error(auth_failed(path, "the file was modified or corrupted after it was written (" +
                                        key.origin + " is the key it was encrypted with); " +
                                        "restore it from a good copy"));
    throw Error(auth_failed(path, "wrong key or damaged file: " + key.origin + " (key id " + id +
                                      ") is not the key this file was encrypted with (key id " +
                                      h.key_id + "); check the key"));
  }
  return std::make_unique<DecryptedSource>(std::move(buf), body, n, path);
}

// ---------------------------------------------------------------- writer

struct EncryptingWriter::Impl {
  int fd;
  std::string path;
  uint64_t expected = 0, written = 0;
  CipherCtx ctx;
  std::vector<uint8_t> out;
  bool finished = false;
};

EncryptingWriter::EncryptingWriter(int fd, const WeightKey& key, const std::string& path,
                                   uint64_t plaintext_bytes, const json& header_extra)
    : impl_(std::make_unique<Impl>()) {
  impl_->fd = fd;
  impl_->path = path;
  impl_->expected = plaintext_bytes;
  if (plaintext_bytes > kMaxEncryptedBytes)
    throw Error("cannot encrypt '" + path + "': " + std::to_string(plaintext_bytes) +
                " bytes is more than one AES-GCM file may safely hold (" +
                std::to_string(kMaxEncryptedBytes) + "); shard the weights into smaller files");
  FTUNE_CHECK(header_extra.is_null() || header_extra.is_object(),
              "encryption header_extra must be a JSON object");
  json header = header_extra.is_null() ? json::object() : header_extra;
  for (const char* reserved : {"cipher", "nonce", "key_id", "plaintext_bytes"})
    FTUNE_CHECK(!header.contains(reserved),
                std::string("encryption header_extra uses reserved key '") + reserved + "'");
  uint8_t nonce[kNonceBytes];
  // A fresh random nonce per file: GCM is broken if a (key, nonce) pair is ever reused.
  if (RAND_bytes(nonce, sizeof nonce) != 1)
    throw Error("cannot encrypt '" + path + "': the OpenSSL random generator failed");
  header["cipher"] = kCipher;
  header["nonce"] = to_hex(nonce, sizeof nonce);
  header["key_id"] = key_id(key);
  header["plaintext_bytes"] = plaintext_bytes;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception&) {
    throw Error("cannot encrypt '" + path +
                "': the header is not valid UTF-8 (tensor names must be UTF-8)");
  }
  // Padding keeps the plaintext 8-byte aligned after the header when a reader decrypts in place.
  text.append((8 - (kPrefixBytes + text.size()) % 8) % 8, ' ');

  std::string prefix(kMagic, sizeof kMagic);
  prefix.resize(kPrefixBytes);
  store_le64(text.size(), reinterpret_cast<uint8_t*>(prefix.data() + 8));
  prefix += text;
  impl_->ctx = gcm_begin(true, key, nonce, path);
  int outl = 0;
  // Magic, length and header are authenticated (GCM additional data), not encrypted.
  if (EVP_EncryptUpdate(impl_->ctx.get(), nullptr, &outl,
                        reinterpret_cast<const uint8_t*>(prefix.data()), int(prefix.size())) != 1)
    throw Error("cannot encrypt '" + path + "' (OpenSSL failure)");
  write_all(fd, prefix.data(), prefix.size(), path);
}

EncryptingWriter::~EncryptingWriter() = default;

void EncryptingWriter::write(const void* data, size_t n) {
  Impl& m = *impl_;
  FTUNE_CHECK(!m.finished, "EncryptingWriter::write after finish");
  FTUNE_CHECK(n <= m.expected - m.written,
              "encrypted file '" + m.path + "' given more bytes than its header declares");
  const auto* in = static_cast<const uint8_t*>(data);
  if (m.out.empty() && n > 0) m.out.resize(std::min<size_t>(kChunkBytes, m.expected));
  while (n > 0) {
    const int len = int(std::min(n, m.out.size()));
    int outl = 0;
    if (EVP_EncryptUpdate(m.ctx.get(), m.out.data(), &outl, in, len) != 1 || outl != len)
      throw Error("cannot encrypt '" + m.path + "' (OpenSSL failure)");
    write_all(m.fd, m.out.data(), size_t(outl), m.path);
    in += len;
    n -= size_t(len);
    m.written += uint64_t(len);
  }
}

void EncryptingWriter::finish() {
  Impl& m = *impl_;
  FTUNE_CHECK(!m.finished, "EncryptingWriter::finish called twice");
  FTUNE_CHECK(m.written == m.expected, "encrypted file '" + m.path + "' got " +
                                           std::to_string(m.written) + " bytes, header declares " +
                                           std::to_string(m.expected));
  uint8_t tail[16];
  int outl = 0;
  uint8_t tag[kTagBytes];
  if (EVP_EncryptFinal_ex(m.ctx.get(), tail, &outl) != 1 || outl != 0 ||
      EVP_CIPHER_CTX_ctrl(m.ctx.get(), EVP_CTRL_GCM_GET_TAG, int(kTagBytes), tag) != 1)
    throw Error("cannot encrypt '" + m.path + "' (OpenSSL failure)");
  write_all(m.fd, tag, sizeof tag, m.path);
  m.finished = true;
}

}  // namespace ftune
