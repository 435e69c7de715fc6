#include "engine/base/byte_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "engine/base/error.h"

namespace ftune {

namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

// Shared by every source: offset+n must not wrap, so compare against the remainder instead.
void check_range(const std::string& label, size_t size, size_t offset, size_t n) {
  if (offset > size || n > size - offset)
    throw Error(label + ": read of " + std::to_string(n) + " bytes at offset " +
                std::to_string(offset) + " is past the end of the file (" + std::to_string(size) +
                " bytes); the file is truncated or corrupt");
}

// Opens read-only and returns the fd plus its size; rejects directories up front because
// open(2) succeeds on them and the failure would otherwise surface as a confusing read error.
int open_regular(const std::string& path, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open '" + path + "': " + errno_text(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("cannot stat '" + path + "': " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("'" + path + "' is not a regular file");
  }
  *size = size_t(st.st_size);
  return fd;
}

class MappedFile final : public ByteSource {
 public:
  explicit MappedFile(const std::string& path) : label_(path) {
    int fd = open_regular(path, &size_);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      int err = errno;
      ::close(fd);  // the mapping keeps the file alive
      if (p == MAP_FAILED) throw Error("cannot mmap '" + path + "': " + errno_text(err));
      base_ = static_cast<const uint8_t*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() override {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  size_t size() const override { return size_; }
  void read(size_t offset, void* dst, size_t n) const override {
    check_range(label_, size_, offset, n);
    if (n) std::memcpy(dst, base_ + offset, n);
  }
  // An empty file has no mapping; hand out a valid pointer anyway so callers need no special case.
  const uint8_t* data() const override { return base_ ? base_ : &kEmpty; }
  const std::string& label() const override { return label_; }

 private:
  static constexpr uint8_t kEmpty = 0;
  std::string label_;
  size_t size_ = 0;
  const uint8_t* base_ = nullptr;
};

class PlainFile final : public ByteSource {
 public:
  explicit PlainFile(const std::string& path) : label_(path) { fd_ = open_regular(path, &size_); }
  ~PlainFile() override { ::close(fd_); }
  PlainFile(const PlainFile&) = delete;
  PlainFile& operator=(const PlainFile&) = delete;

  size_t size() const override { return size_; }
  void read(size_t offset, void* dst, size_t n) const override {
    check_range(label_, size_, offset, n);
    auto* out = static_cast<uint8_t*>(dst);
    while (n > 0) {
      ssize_t got = ::pread(fd_, out, n, off_t(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw Error("cannot read '" + label_ + "' at offset " + std::to_string(offset) + ": " +
                    errno_text(errno));
      }
      // The size came from fstat at open; a zero read means the file shrank underneath us.
      if (got == 0)
        throw Error("'" + label_ + "' ended early at offset " + std::to_string(offset) +
                    " (was it truncated while ftune was reading it?)");
      out += got;
      offset += size_t(got);
      n -= size_t(got);
    }
  }
  const std::string& label() const override { return label_; }

 private:
  std::string label_;
  int fd_ = -1;
  size_t size_ = 0;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(std::string bytes, std::string label)
      : bytes_(std::move(bytes)), label_(std::move(label)) {}
  size_t size() const override { return bytes_.size(); }
  void read(size_t offset, void* dst, size_t n) const override {
    check_range(label_, bytes_.size(), offset, n);
    if (n) std::memcpy(dst, bytes_.data() + offset, n);
  }
  const uint8_t* data() const override { return reinterpret_cast<const uint8_t*>(bytes_.data()); }
  const std::string& label() const override { return label_; }

 private:
  std::string bytes_;
  std::string label_;
};

}  // namespace

std::unique_ptr<ByteSource> open_mapped_file(const std::string& path) {
  return std::make_unique<MappedFile>(path);
}

std::unique_ptr<ByteSource> open_plain_file(const std::string& path) {
  return std::make_unique<PlainFile>(path);
}

std::unique_ptr<ByteSource> open_memory(std::string bytes, std::string label) {
  return std::make_unique<MemorySource>(std::move(bytes), std::move(label));
}

}  // namespace ftune
