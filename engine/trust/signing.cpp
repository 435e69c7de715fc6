#include "engine/trust/signing.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"

namespace ftune {

namespace {

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BioDeleter {
  void operator()(BIO* p) const { BIO_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;
using Bio = std::unique_ptr<BIO, BioDeleter>;

// Wipes a string that held key material once it goes out of scope.
struct Wipe {
  std::string& s;
  ~Wipe() { OPENSSL_cleanse(s.data(), s.size()); }
};

// OpenSSL keeps a per-thread error queue; stale entries would confuse later, unrelated calls.
void openssl_fail(const std::string& msg) {
  ERR_clear_error();
  throw Error(msg + " (OpenSSL failure)");
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool exists_no_follow(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

Error already_exists(const std::string& path) {
  return Error("'" + path + "' already exists; ftune never overwrites a key file " +
               "(move it away or pick another name)");
}

void refuse_existing(const std::string& path) {
  if (exists_no_follow(path)) throw already_exists(path);
}

// Writes bytes to a new file `path` with `mode`, durably and never replacing an existing file.
// The temp file is born 0600 (mkstemp), so key bytes are never readable by others even
// briefly, and link(2) publishes it only if `path` is still free (rename would clobber).
void write_new_file(const std::string& path, std::string_view bytes, mode_t mode) {
  refuse_existing(path);
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    const int err = errno;
    throw Error(
        "cannot create '" + path + "': " + std::strerror(err) +
        (err == ENOENT ? " (its directory '" + parent_dir(path) + "' does not exist)" : ""));
  }
  bool published = false;
  try {
    if (::fchmod(fd, mode) != 0)
      throw Error("cannot set the mode of '" + path + "': " + std::strerror(errno));
    write_all(fd, bytes.data(), bytes.size(), path);
    if (::fsync(fd) != 0) throw Error("cannot fsync '" + path + "': " + std::strerror(errno));
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) throw Error("cannot close '" + path + "': " + std::strerror(errno));
    if (::link(tmp.c_str(), path.c_str()) == 0) {
      published = true;
    } else if (errno == EEXIST) {
      throw already_exists(path);
    } else {
      // Filesystems without hard links (some FUSE mounts): check, then rename. Only a race
      // with another writer of the same name could clobber here.
      refuse_existing(path);
      if (::rename(tmp.c_str(), path.c_str()) != 0)
        throw Error("cannot create '" + path + "': " + std::strerror(errno));
      published = true;
      tmp.clear();
    }
  } catch (...) {
    if (fd >= 0) ::close(fd);
    if (!tmp.empty()) ::unlink(tmp.c_str());
    throw;
  }
  FTUNE_CHECK(published, "key file not published");
  if (!tmp.empty()) ::unlink(tmp.c_str());
  fsync_dir(parent_dir(path));
}

// Refuses passphrase-protected keys instead of letting OpenSSL prompt on the terminal.
int no_passphrase(char*, int, int, void*) {
  return -1;
}

enum class KeyKind { Private, Public, Either };

bool contains(const std::string& s, const char* needle) {
  return s.find(needle) != std::string::npos;
}

// Loads an Ed25519 key from a PEM file; every failure names the file and how to fix it.
Pkey load_key(const std::string& path, KeyKind kind) {
  std::string pem = read_file(path);
  Wipe wipe{pem};
  const bool has_private = contains(pem, "PRIVATE KEY-----");
  const bool has_public = contains(pem, "BEGIN PUBLIC KEY-----");
  if (kind == KeyKind::Either) kind = has_private ? KeyKind::Private : KeyKind::Public;
  if (kind == KeyKind::Private && !has_private && has_public)
    throw Error("'" + path +
                "' is a public key; signing needs the private key (the PREFIX.pem "
                "that 'ftune keygen --sign PREFIX' wrote, not PREFIX.pub.pem)");
  if (kind == KeyKind::Public && has_private && !has_public)
    throw Error("'" + path +
                "' is a private key; verifying needs the public key (the "
                "PREFIX.pub.pem that 'ftune keygen --sign PREFIX' wrote)");
  if (contains(pem, "ENCRYPTED"))
    throw Error("'" + path +
                "' is passphrase-protected; ftune needs an unencrypted key "
                "(openssl pkey -in KEY -out PLAIN.pem)");
  Bio bio(BIO_new_mem_buf(pem.data(), int(pem.size())));
  if (!bio) openssl_fail("cannot read key '" + path + "'");
  EVP_PKEY* raw = kind == KeyKind::Private
                      ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr)
                      : PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr);
  ERR_clear_error();
  Pkey key(raw);
  if (!key)
    throw Error("'" + path + "' is not a PEM " + (kind == KeyKind::Private ? "private" : "public") +
                " key; make an Ed25519 pair with 'ftune keygen --sign PREFIX'");
  if (EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_ED25519) {
    const char* type = EVP_PKEY_get0_type_name(key.get());
    throw Error("'" + path + "' holds " + (type ? std::string(type) : "a non-Ed25519") +
                " key; ftune signs with Ed25519 only (make a pair with 'ftune keygen --sign "
                "PREFIX')");
  }
  return key;
}

// PEM text of a key through a memory BIO (secure heap for the private half).
std::string pem_of(EVP_PKEY* key, bool private_half) {
  Bio bio(BIO_new(private_half ? BIO_s_secmem() : BIO_s_mem()));
  if (!bio) openssl_fail("cannot encode a key");
  int ok = private_half
               ? PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)
               : PEM_write_bio_PUBKEY(bio.get(), key);
  if (ok != 1) openssl_fail("cannot encode a key as PEM");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  if (n <= 0 || !data) openssl_fail("cannot encode a key as PEM");
  return std::string(data, size_t(n));
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

void generate_signing_keypair(const std::string& private_pem, const std::string& public_pem) {
  if (private_pem == public_pem)
    throw Error("private and public key paths are both '" + private_pem + "'; give two names");
  // Check both before writing either, so a refusal leaves nothing behind.
  refuse_existing(private_pem);
  refuse_existing(public_pem);
  PkeyCtx ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1)
    openssl_fail("cannot generate an Ed25519 key");
  Pkey key(raw);
  std::string priv = pem_of(key.get(), true);
  Wipe wipe{priv};
  const std::string pub = pem_of(key.get(), false);
  write_new_file(private_pem, priv, 0600);
  try {
    write_new_file(public_pem, pub, 0644);
  } catch (...) {
    // Half a pair is useless and a private key without its public half easily forgotten.
    ::unlink(private_pem.c_str());
    throw;
  }
}

std::string sign_bytes(const std::string& private_pem_path, std::string_view msg) {
  Pkey key = load_key(private_pem_path, KeyKind::Private);
  MdCtx ctx(EVP_MD_CTX_new());
  // Ed25519 hashes internally (PureEdDSA), hence no digest and one-shot EVP_DigestSign.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1)
    openssl_fail("cannot sign with '" + private_pem_path + "'");
  size_t len = 0;
  const auto* m = reinterpret_cast<const unsigned char*>(msg.data());
  if (EVP_DigestSign(ctx.get(), nullptr, &len, m, msg.size()) != 1)
    openssl_fail("cannot sign with '" + private_pem_path + "'");
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, m,
                     msg.size()) != 1)
    openssl_fail("cannot sign with '" + private_pem_path + "'");
  sig.resize(len);
  FTUNE_CHECK(sig.size() == 64, "Ed25519 signature is not 64 bytes");
  return sig;
}

bool verify_signature(const std::string& public_pem_path, std::string_view msg,
                      const std::string& sig) {
  Pkey key = load_key(public_pem_path, KeyKind::Public);
  if (sig.size() != 64) return false;
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1)
    openssl_fail("cannot verify with '" + public_pem_path + "'");
  int rc =
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(msg.data()), msg.size());
  ERR_clear_error();  // a mismatch leaves an entry in the queue
  return rc == 1;
}

std::string public_key_sha256(const std::string& pem_path) {
  Pkey key = load_key(pem_path, KeyKind::Either);
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key.get(), &der);
  if (n <= 0 || !der) openssl_fail("cannot encode the public key of '" + pem_path + "'");
  std::string hex = sha256_hex(std::string_view(reinterpret_cast<const char*>(der), size_t(n)));
  OPENSSL_free(der);
  return hex;
}

void generate_aes_key_file(const std::string& path) {
  refuse_existing(path);
  unsigned char key[32];
  if (RAND_bytes(key, sizeof key) != 1) openssl_fail("cannot draw random bytes for a key");
  static const char kHex[] = "0123456789abcdef";
  std::string text;
  Wipe wipe{text};
  text.reserve(65);
  for (unsigned char b : key) {
    text.push_back(kHex[b >> 4]);
    text.push_back(kHex[b & 0xf]);
  }
  text.push_back('\n');
  OPENSSL_cleanse(key, sizeof key);
  write_new_file(path, text, 0600);
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16 | uint32_t(uint8_t(bytes[i + 1])) << 8 |
                 uint32_t(uint8_t(bytes[i + 2]));
    for (int s = 18; s >= 0; s -= 6) out.push_back(kB64[(v >> s) & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (rest == 2) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out.push_back(kB64[(v >> 18) & 63]);
    out.push_back(kB64[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kB64[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  const char* ws = " \t\r\n";
  size_t b = text.find_first_not_of(ws), e = text.find_last_not_of(ws);
  text = b == std::string_view::npos ? std::string_view() : text.substr(b, e - b + 1);
  if (text.size() % 4 != 0) throw Error("not base64: length is not a multiple of 4");
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t v = 0;
    int pad = 0;
    for (size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      const bool last_quad = i + 4 == text.size();
      if (c == '=' && last_quad && j >= 2 && (j == 3 || text[i + 3] == '=')) {
        ++pad;
        v <<= 6;
        continue;
      }
      const char* p = c ? std::strchr(kB64, c) : nullptr;
      if (!p || pad > 0) throw Error("not base64: unexpected character");
      v = v << 6 | uint32_t(p - kB64);
    }
    out.push_back(char(v >> 16));
    if (pad < 2) out.push_back(char((v >> 8) & 0xff));
    if (pad < 1) out.push_back(char(v & 0xff));
  }
  return out;
}

}  // namespace ftune
