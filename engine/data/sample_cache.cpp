#include "engine/data/sample_cache.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/base/little_endian.h"

namespace ftune {
namespace {

constexpr char kMagic[8] = {'F', 'T', 'S', 'A', 'M', 'P', 'L', '1'};

size_t pad64(size_t n) {
  return (n + 63) / 64 * 64;
}

// Magic, header length, header and zero padding: everything before the offsets.
std::string file_head(const std::string& key, int64_t samples, int64_t tokens,
                      const nlohmann::json& meta) {
  nlohmann::json h = {{"key", key}, {"samples", samples}, {"tokens", tokens}, {"meta", meta}};
  const std::string header = h.dump();
  std::string head(pad64(8 + 8 + header.size()), '\0');
  std::memcpy(head.data(), kMagic, 8);
  store_le64(header.size(), reinterpret_cast<uint8_t*>(head.data() + 8));
  std::memcpy(head.data() + 16, header.data(), header.size());
  return head;
}

// Appends the contents of a spill file to fd.
void copy_into(int fd, std::FILE* from, const std::string& from_name, const std::string& to) {
  if (std::fflush(from) != 0 || std::fseek(from, 0, SEEK_SET) != 0)
    throw Error("cannot read back '" + from_name + "': " + std::strerror(errno));
  std::vector<char> buf(size_t(1) << 20);
  for (;;) {
    const size_t got = std::fread(buf.data(), 1, buf.size(), from);
    if (got > 0) write_all(fd, buf.data(), got, to);
    if (got < buf.size()) {
      if (std::ferror(from)) throw Error("cannot read back '" + from_name + "'");
      break;
    }
  }
}

}  // namespace

std::string sample_cache_key(const nlohmann::json& settings,
                             const std::vector<std::string>& files) {
  nlohmann::json k = {{"settings", settings}, {"files", nlohmann::json::array()}, {"format", 1}};
  for (const auto& f : files) k["files"].push_back({{"path", f}, {"sha256", sha256_file(f)}});
  return sha256_hex(k.dump());
}

std::shared_ptr<const MappedSamples> open_sample_cache(const std::string& path,
                                                       const std::string& key) {
  if (!path_exists(path)) return nullptr;
  try {
    auto m = std::shared_ptr<MappedSamples>(new MappedSamples());
    m->src_ = open_mapped_file(path);
    const uint8_t* p = m->src_->data();
    const size_t size = m->src_->size();
    if (!p || size < 16 || std::memcmp(p, kMagic, 8) != 0) return nullptr;
    const uint64_t len = load_le64(p + 8);
    if (len > size - 16) return nullptr;
    auto h = parse_json_bounded(std::string(reinterpret_cast<const char*>(p) + 16, len), path);
    if (h.at("key").get<std::string>() != key) return nullptr;
    const size_t n = h.at("samples").get<size_t>(), t = h.at("tokens").get<size_t>();
    const size_t base = pad64(16 + len);
    if (n > size || t > size || size != base + (n + 1) * 8 + t * 4 + t) return nullptr;
    m->n_ = int64_t(n);
    m->offsets_ = reinterpret_cast<const int64_t*>(p + base);
    m->tokens_ = reinterpret_cast<const int32_t*>(p + base + (n + 1) * 8);
    m->trainable_ = p + base + (n + 1) * 8 + t * 4;
    // Structural check: a cache that does not describe itself consistently is rebuilt. This
    // reads only the offsets (8 bytes a sample), never the tokens.
    if (m->offsets_[0] != 0 || m->offsets_[n] != int64_t(t)) return nullptr;
    for (size_t i = 0; i < n; ++i)
      if (m->offsets_[i] > m->offsets_[i + 1]) return nullptr;
    m->meta_ = h.value("meta", nlohmann::json::object());
    return m;
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  } catch (const Error&) {
    return nullptr;
  }
}

SampleCacheWriter::SampleCacheWriter(std::string path) : path_(std::move(path)) {
  const std::string pid = std::to_string(::getpid());
  tokens_tmp_ = path_ + ".tokens.tmp." + pid;
  mask_tmp_ = path_ + ".mask.tmp." + pid;
  tokens_ = std::fopen(tokens_tmp_.c_str(), "w+b");
  mask_ = tokens_ ? std::fopen(mask_tmp_.c_str(), "w+b") : nullptr;
  if (!tokens_ || !mask_) {
    const int err = errno;
    discard();
    throw Error("cannot write the data cache '" + path_ + "': cannot create a temp file: " +
                std::strerror(err) + " (set data.cache_dir to a writable directory)");
  }
}

SampleCacheWriter::~SampleCacheWriter() {
  discard();
}

void SampleCacheWriter::discard() {
  if (tokens_) std::fclose(tokens_);
  if (mask_) std::fclose(mask_);
  tokens_ = mask_ = nullptr;
  ::unlink(tokens_tmp_.c_str());
  ::unlink(mask_tmp_.c_str());
}

void SampleCacheWriter::put(std::FILE* f, const std::string& name, const void* p, size_t n) {
  if (n > 0 && std::fwrite(p, 1, n, f) != n)
    throw Error("cannot write '" + name + "': " + std::strerror(errno) +
                " (is the disk full? set data.cache_dir to a roomier directory)");
}

void SampleCacheWriter::add(const std::vector<int32_t>& ids, const std::vector<uint8_t>& train) {
  FTUNE_CHECK(ids.size() == train.size(), "sample tokens and mask differ in length");
  FTUNE_CHECK(tokens_ != nullptr, "sample cache writer already finished");
  put(tokens_, tokens_tmp_, ids.data(), ids.size() * sizeof(int32_t));
  put(mask_, mask_tmp_, train.data(), train.size());
  offsets_.push_back(offsets_.back() + int64_t(ids.size()));
}

void SampleCacheWriter::finish(const std::string& key, const nlohmann::json& meta) {
  FTUNE_CHECK(tokens_ != nullptr, "sample cache writer already finished");
  const std::string head = file_head(key, int64_t(offsets_.size()) - 1, offsets_.back(), meta);
  write_file_atomic_with(path_, [&](int fd) {
    write_all(fd, head.data(), head.size(), path_);
    write_all(fd, offsets_.data(), offsets_.size() * sizeof(int64_t), path_);
    copy_into(fd, tokens_, tokens_tmp_, path_);
    copy_into(fd, mask_, mask_tmp_, path_);
  });
  discard();
  offsets_ = {0};
}

void write_sample_cache(const std::string& path, const std::string& key, const Samples& s,
                        const nlohmann::json& meta) {
  SampleCacheWriter w(path);
  for (int64_t i = 0; i < s.size(); ++i) {
    const int64_t n = s.length(i);
    w.add(std::vector<int32_t>(s.tokens_of(i), s.tokens_of(i) + n),
          std::vector<uint8_t>(s.trainable_of(i), s.trainable_of(i) + n));
  }
  w.finish(key, meta);
}

}  // namespace ftune
