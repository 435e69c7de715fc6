#include "engine/sample_cache.h"

#include <cstring>

#include "engine/byte_source.h"
#include "engine/error.h"
#include "engine/fs_util.h"

namespace ftune {
namespace {

constexpr char kMagic[8] = {'F', 'T', 'S', 'A', 'M', 'P', 'L', '1'};

size_t pad64(size_t n) {
  return (n + 63) / 64 * 64;
}

}  // namespace

std::string sample_cache_key(const nlohmann::json& settings,
                             const std::vector<std::string>& files) {
  nlohmann::json k = {{"settings", settings}, {"files", nlohmann::json::array()}, {"format", 1}};
  for (const auto& f : files) k["files"].push_back({{"path", f}, {"sha256", sha256_file(f)}});
  return sha256_hex(k.dump());
}

void write_sample_cache(const std::string& path, const std::string& key, const SampleSet& s,
                        const nlohmann::json& meta) {
  nlohmann::json h = {
      {"key", key}, {"samples", s.size()}, {"tokens", s.tokens.size()}, {"meta", meta}};
  const std::string header = h.dump();
  const size_t prefix = pad64(8 + 8 + header.size());
  write_file_atomic_with(path, [&](int fd) {
    std::string head(prefix, '\0');
    std::memcpy(head.data(), kMagic, 8);
    const uint64_t len = header.size();
    for (int i = 0; i < 8; ++i) head[size_t(8 + i)] = char((len >> (8 * i)) & 0xff);
    std::memcpy(head.data() + 16, header.data(), header.size());
    write_all(fd, head.data(), head.size(), path);
    write_all(fd, s.offsets.data(), s.offsets.size() * sizeof(int64_t), path);
    write_all(fd, s.tokens.data(), s.tokens.size() * sizeof(int32_t), path);
    write_all(fd, s.trainable.data(), s.trainable.size(), path);
  });
}

std::optional<SampleSet> read_sample_cache(const std::string& path, const std::string& key,
                                           nlohmann::json* meta) {
  if (!path_exists(path)) return std::nullopt;
  try {
    auto src = open_mapped_file(path);
    if (src->size() < 16) return std::nullopt;
    char magic[8];
    src->read(0, magic, 8);
    if (std::memcmp(magic, kMagic, 8) != 0) return std::nullopt;
    uint8_t lenb[8];
    src->read(8, lenb, 8);
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= uint64_t(lenb[i]) << (8 * i);
    if (len > src->size() - 16) return std::nullopt;
    std::string header(len, '\0');
    src->read(16, header.data(), len);
    auto h = nlohmann::json::parse(header);
    if (h.at("key").get<std::string>() != key) return std::nullopt;
    const size_t n = h.at("samples").get<size_t>(), t = h.at("tokens").get<size_t>();
    const size_t base = pad64(16 + len);
    if (src->size() != base + (n + 1) * 8 + t * 4 + t) return std::nullopt;
    SampleSet s;
    s.offsets.resize(n + 1);
    s.tokens.resize(t);
    s.trainable.resize(t);
    src->read(base, s.offsets.data(), (n + 1) * 8);
    src->read(base + (n + 1) * 8, s.tokens.data(), t * 4);
    src->read(base + (n + 1) * 8 + t * 4, s.trainable.data(), t);
    // Structural check: a cache that does not describe itself consistently is rebuilt.
    if (s.offsets.front() != 0 || s.offsets.back() != int64_t(t)) return std::nullopt;
    for (size_t i = 0; i < n; ++i)
      if (s.offsets[i] > s.offsets[i + 1]) return std::nullopt;
    if (meta) *meta = h.value("meta", nlohmann::json::object());
    return s;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  } catch (const Error&) {
    return std::nullopt;
  }
}

}  // namespace ftune
