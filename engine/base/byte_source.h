// Where weight bytes come from. Every reader of weights (base model, checkpoint, export check)
// goes through a ByteSource so a later encrypted source slots in without touching the readers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ftune {

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual size_t size() const = 0;
  // Copies [offset, offset+n) into dst; throws ftune::Error naming the file if out of range.
  virtual void read(size_t offset, void* dst, size_t n) const = 0;
  // Whole contents in memory (mapped), or nullptr when the source cannot offer that.
  virtual const uint8_t* data() const { return nullptr; }
  virtual const std::string& label() const = 0;  // file path, for messages
};

// Memory-mapped file (read-only). Throws ftune::Error naming the path on failure.
std::unique_ptr<ByteSource> open_mapped_file(const std::string& path);
// Plain pread()-based file, for filesystems where mmap is undesirable.
std::unique_ptr<ByteSource> open_plain_file(const std::string& path);
// Bytes already in memory (tests, decrypted buffers).
std::unique_ptr<ByteSource> open_memory(std::string bytes, std::string label);

}  // namespace ftune
