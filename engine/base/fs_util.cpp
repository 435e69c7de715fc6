#include "engine/base/fs_util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/base/error.h"

namespace ftune {

namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Closes the fd and removes the temp file unless the write was committed; runs on every exit
// path so a failed or interrupted write never leaves "<path>.tmp.<pid>" behind.
class TempFile {
 public:
  TempFile(std::string tmp, int fd) : tmp_(std::move(tmp)), fd_(fd) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_; }
  // close(2) can report deferred write errors (NFS, quota), so its result matters.
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }
  void commit() { committed_ = true; }

 private:
  std::string tmp_;
  int fd_;
  bool committed_ = false;
};

struct EvpCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using EvpCtx = std::unique_ptr<EVP_MD_CTX, EvpCtxDeleter>;

EvpCtx sha256_begin(const std::string& what) {
  EvpCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw Error("cannot start SHA-256 for " + what + " (OpenSSL failure)");
  return ctx;
}

std::string sha256_finish(EVP_MD_CTX* ctx, const std::string& what) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx, digest, &len) != 1)
    throw Error("cannot finish SHA-256 for " + what + " (OpenSSL failure)");
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

int open_for_read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open '" + path + "': " + errno_text(errno));
  return fd;
}

// read(2) that retries EINTR; returns 0 at EOF.
size_t read_some(int fd, void* buf, size_t n, const std::string& path) {
  for (;;) {
    ssize_t got = ::read(fd, buf, n);
    if (got >= 0) return size_t(got);
    if (errno == EINTR) continue;
    int err = errno;
    ::close(fd);
    throw Error("cannot read '" + path + "': " + errno_text(err));
  }
}

}  // namespace

void write_all(int fd, const void* data, size_t n, const std::string& what) {
  auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t put = ::write(fd, p, n);
    if (put < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err == ENOSPC)
        throw Error("cannot write '" + what + "': disk full (" + errno_text(err) +
                    "); free some space and retry");
      if (err == EDQUOT)
        throw Error("cannot write '" + what + "': disk quota exceeded (" + errno_text(err) + ")");
      // Only seen when SIGXFSZ is ignored (the trainer does), else the signal ends the process.
      if (err == EFBIG)
        throw Error("cannot write '" + what + "': over the process's file-size limit (" +
                    errno_text(err) + "); raise `ulimit -f` (RLIMIT_FSIZE)");
      throw Error("cannot write '" + what + "': " + errno_text(err));
    }
    p += put;
    n -= size_t(put);
  }
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open directory '" + dir + "': " + errno_text(errno));
  // Some filesystems cannot sync a directory and say EINVAL; there is nothing more to do there.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    ::close(fd);
    throw Error("cannot fsync directory '" + dir + "': " + errno_text(err));
  }
  ::close(fd);
}

void write_file_atomic_with(const std::string& path, const std::function<void(int fd)>& fill) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error("cannot write '" + path + "': cannot create temp file '" + tmp +
                "': " + errno_text(errno));
  TempFile guard(tmp, fd);
  fill(fd);
  if (::fsync(fd) != 0) throw Error("cannot fsync '" + tmp + "': " + errno_text(errno));
  if (guard.close() != 0) throw Error("cannot close '" + tmp + "': " + errno_text(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw Error("cannot rename '" + tmp + "' to '" + path + "': " + errno_text(errno));
  guard.commit();
  // The rename is only durable once the directory entry itself reaches the disk.
  fsync_dir(parent_dir(path));
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic_with(path, [&](int fd) { write_all(fd, bytes.data(), bytes.size(), path); });
}

std::string read_file(const std::string& path) {
  int fd = open_for_read(path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("cannot stat '" + path + "': " + errno_text(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error("cannot read '" + path + "': it is a directory, expected a file");
  }
  std::string out;
  // st_size is a hint only (pipes and /proc report 0), so read until EOF regardless.
  out.resize(S_ISREG(st.st_mode) ? size_t(st.st_size) : 0);
  size_t have = 0;
  for (;;) {
    if (have == out.size()) out.resize(out.size() < 4096 ? 4096 : out.size() * 2);
    size_t got = read_some(fd, out.data() + have, out.size() - have, path);
    if (got == 0) break;
    have += got;
  }
  ::close(fd);
  out.resize(have);
  return out;
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string sha256_file(const std::string& path) {
  int fd = open_for_read(path);
  EvpCtx ctx;
  try {
    ctx = sha256_begin("'" + path + "'");
  } catch (...) {
    ::close(fd);
    throw;
  }
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    size_t got = read_some(fd, buf.data(), buf.size(), path);
    if (got == 0) break;
    if (EVP_DigestUpdate(ctx.get(), buf.data(), got) != 1) {
      ::close(fd);
      throw Error("cannot hash '" + path + "' (OpenSSL failure)");
    }
  }
  ::close(fd);
  return sha256_finish(ctx.get(), "'" + path + "'");
}

std::string sha256_hex(std::string_view bytes) {
  EvpCtx ctx = sha256_begin("in-memory bytes");
  if (EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size()) != 1)
    throw Error("cannot hash in-memory bytes (OpenSSL failure)");
  return sha256_finish(ctx.get(), "in-memory bytes");
}

}  // namespace ftune
