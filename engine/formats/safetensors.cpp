#include "engine/formats/safetensors.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/base/little_endian.h"
#include "engine/trust/encryption.h"

namespace ftune {

namespace {

using json = nlohmann::json;

constexpr DType kAllDTypes[] = {DType::F32, DType::BF16, DType::F16,
                                DType::F64, DType::I32,  DType::I64};
// The HF reference implementation refuses headers over 100 MB; a real header is kilobytes.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
// A sharded index has one line per tensor: kilobytes for the largest public models.
constexpr uint64_t kMaxIndexBytes = 100u << 20;
// Conversion works through buffers of this size so a 10 GB model never needs a 10 GB copy.
constexpr size_t kChunkBytes = 4u << 20;

bool is_float(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64;
}

// Strict: only the spellings the format defines, unlike dtype_from_name which also takes aliases.
bool parse_stored_dtype(const std::string& s, DType* out) {
  for (DType t : kAllDTypes) {
    if (s == dtype_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

// Product of dims with overflow checks; `fail` receives a reason and must throw.
template <class Fail>
int64_t checked_numel(const std::vector<int64_t>& shape, DType t, Fail fail) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("shape " + shape_str(shape) + " has a negative dimension");
    if (__builtin_mul_overflow(n, d, &n))
      fail("shape " + shape_str(shape) + " overflows the element count");
  }
  size_t bytes;
  if (__builtin_mul_overflow(size_t(n), dtype_size(t), &bytes))
    fail("shape " + shape_str(shape) + " overflows the byte count");
  return n;
}

std::string strip_json_prefix(const std::string& what) {
  // nlohmann prefixes "[json.exception.parse_error.101] "; the user needs only the rest.
  size_t close = what.find("] ");
  return (what.rfind("[json.exception", 0) == 0 && close != std::string::npos)
             ? what.substr(close + 2)
             : what;
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// "model-00001-of-00004.safetensors", the name transformers gives shards.
std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

bool looks_like_shard(const std::string& name) {
  unsigned a = 0, b = 0;
  int used = 0;
  if (std::sscanf(name.c_str(), "model-%u-of-%u.safetensors%n", &a, &b, &used) != 2) return false;
  return size_t(used) == name.size() && name.rfind("model-", 0) == 0;
}

void remove_if_present(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    throw Error("cannot remove stale '" + path + "': " + std::strerror(errno) +
                "; remove it by hand, it would shadow the weights just written");
}

// A directory keeps one layout: after writing one, the other layout's files would be loaded
// instead of (or mixed with) the new weights, so they go.
void remove_stale_weights(const std::string& dir, const std::set<std::string>& keep) {
  static const char* kSingle = "model.safetensors";
  static const char* kIndex = "model.safetensors.index.json";
  if (!keep.count(kSingle)) remove_if_present(join_path(dir, kSingle));
  if (!keep.count(kIndex)) remove_if_present(join_path(dir, kIndex));
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw Error("cannot list '" + dir + "': " + std::strerror(errno));
  std::vector<std::string> stale;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (looks_like_shard(name) && !keep.count(name)) stale.push_back(name);
  }
  ::closedir(d);
  for (const auto& name : stale) remove_if_present(join_path(dir, name));
  fsync_dir(dir);
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// ---------------------------------------------------------------- reader

SafetensorsReader::SafetensorsReader(std::unique_ptr<ByteSource> src) : src_(std::move(src)) {
  FTUNE_CHECK(src_ != nullptr, "SafetensorsReader given no ByteSource");
  const std::string& file = src_->label();
  const size_t size = src_->size();
  if (size < 8)
    throw Error(file + ": file is too short (" + std::to_string(size) +
                " bytes) to be safetensors; it needs an 8-byte header length first");
  uint8_t len_bytes[8];
  src_->read(0, len_bytes, 8);
  const uint64_t header_len = load_le64(len_bytes);
  if (header_len > size - 8)
    throw Error(file + ": header length " + std::to_string(header_len) +
                " runs past the end of the file (" + std::to_string(size) +
                " bytes); the file is truncated or not safetensors");
  if (header_len > kMaxHeaderBytes)
    throw Error(file + ": header length " + std::to_string(header_len) +
                " is over the 100 MB limit; the file is not valid safetensors");
  std::string header(header_len, '\0');
  src_->read(8, header.data(), header_len);
  data_start_ = 8 + header_len;
  const size_t data_size = size - data_start_;

  // nlohmann keeps the last of duplicate keys silently; a duplicated tensor name is corruption.
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key && duplicate.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  if (json_nesting_depth(header) > kMaxJsonDepth)
    throw Error(file + ": header nests JSON more than " + std::to_string(kMaxJsonDepth) +
                " levels deep (a safetensors header needs 3); the file is corrupt or not "
                "safetensors");
  json root;
  try {
    root = json::parse(header, on_event);
  } catch (const json::exception& e) {
    throw Error(file + ": header is not valid JSON (" + strip_json_prefix(e.what()) +
                "); the file is corrupt or not safetensors");
  }
  if (!root.is_object())
    throw Error(file + ": header must be a JSON object mapping tensor names to entries");
  if (!duplicate.empty())
    throw Error(file + ": tensor '" + duplicate + "': name appears twice in the header");

  for (auto& item : root.items()) {
    // Not a structured binding: clang before 16 cannot capture those in the lambda below.
    const std::string& name = item.key();
    json& v = item.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw Error(file + ": '__metadata__' must be an object of string values");
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string())
          throw Error(file + ": '__metadata__' key '" + k + "' must have a string value, got " +
                      json_excerpt(mv));
        metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    auto fail = [&](const std::string& what) {
      throw Error(file + ": tensor '" + name + "': " + what);
    };
    if (!v.is_object()) fail("entry must be an object with dtype, shape and data_offsets");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) fail(std::string("missing '") + key + "'");

    TensorInfo t;
    t.name = name;
    const json& jd = v["dtype"];
    if (!jd.is_string()) fail("'dtype' must be a string, got " + json_excerpt(jd));
    if (!parse_stored_dtype(jd.get<std::string>(), &t.dtype))
      fail("unsupported dtype '" + jd.get<std::string>() +
           "' (ftune reads F32, BF16, F16, F64, I32, I64)");

    const json& js = v["shape"];
    if (!js.is_array())
      fail("'shape' must be a list of non-negative integers, got " + json_excerpt(js));
    for (const json& d : js) {
      if (!d.is_number_integer())
        fail("'shape' must be a list of non-negative integers, got " + json_excerpt(js));
      if (d.is_number_unsigned() && d.get<uint64_t>() > uint64_t(INT64_MAX))
        fail("shape " + json_excerpt(js) + " overflows the element count");
      t.shape.push_back(d.get<int64_t>());
    }
    const int64_t numel = checked_numel(t.shape, t.dtype, fail);

    const json& jo = v["data_offsets"];
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() ||
        !jo[1].is_number_unsigned())
      fail("'data_offsets' must be [begin, end] with non-negative integers, got " +
           json_excerpt(jo));
    const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (begin > end) fail("data_offsets " + json_excerpt(jo) + " end before they begin");
    if (end > data_size)
      fail("data_offsets " + json_excerpt(jo) + " lie outside the data block (" +
           std::to_string(data_size) + " bytes); the file is truncated or corrupt");
    const uint64_t want = uint64_t(numel) * dtype_size(t.dtype);
    if (end - begin != want)
      fail("data_offsets " + json_excerpt(jo) + " hold " + std::to_string(end - begin) +
           " bytes but " + dtype_name(t.dtype) + " " + shape_str(t.shape) + " needs " +
           std::to_string(want) + " bytes");
    t.begin = size_t(begin);
    t.end = size_t(end);
    tensors_.push_back(std::move(t));
  }

  std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // After sorting, a range overlaps an earlier one iff it starts before the furthest end so far.
  // Empty tensors own no bytes, so they can sit anywhere.
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo& t : tensors_) {
    if (t.begin == t.end) continue;
    if (furthest && t.begin < furthest->end)
      throw Error(file + ": tensor '" + t.name + "': data_offsets [" + std::to_string(t.begin) +
                  ", " + std::to_string(t.end) + "] overlap tensor '" + furthest->name + "' [" +
                  std::to_string(furthest->begin) + ", " + std::to_string(furthest->end) + "]");
    if (!furthest || t.end > furthest->end) furthest = &t;
  }
}

SafetensorsReader SafetensorsReader::open(const std::string& path, const WeightKey* key) {
  if (is_encrypted_file(path)) {
    if (!key)
      throw Error("'" + path +
                  "' is encrypted; give its key (--key-file FILE or --key-env VAR, or "
                  "export.encrypt in the recipe)");
    return SafetensorsReader(open_encrypted_file(path, *key));
  }
  return SafetensorsReader(open_mapped_file(path));
}

const TensorInfo* SafetensorsReader::find(const std::string& name) const {
  for (const TensorInfo& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void SafetensorsReader::read_raw(const TensorInfo& t, void* dst) const {
  FTUNE_CHECK(t.begin <= t.end && t.end <= src_->size() - data_start_,
              "tensor '" + t.name + "' does not belong to " + path());
  src_->read(data_start_ + t.begin, dst, t.end - t.begin);
}

void SafetensorsReader::read_as(const TensorInfo& t, DType dst_t, void* dst) const {
  if (t.dtype == dst_t) return read_raw(t, dst);
  if (!is_float(t.dtype) || !is_float(dst_t))
    throw Error(path() + ": tensor '" + t.name + "': cannot convert stored " + dtype_name(t.dtype) +
                " to " + dtype_name(dst_t) + " (only floating types convert)");
  const size_t n = size_t(t.numel());
  const size_t in_size = dtype_size(t.dtype), out_size = dtype_size(dst_t);
  // The conversion reads n elements: a TensorInfo not from this reader must not read past it.
  FTUNE_CHECK(
      t.begin <= t.end && t.end <= src_->size() - data_start_ && t.end - t.begin == n * in_size,
      "tensor '" + t.name + "' does not belong to " + path());
  const size_t offset = data_start_ + t.begin;
  auto* out = static_cast<uint8_t*>(dst);
  const size_t chunk = kChunkBytes / in_size;
  const size_t n_chunks = (n + chunk - 1) / chunk;

  // Mapped and suitably aligned: convert straight from the mapping, no staging copy. Files from
  // other writers may leave tensors unaligned, and typed loads from those would be undefined.
  const uint8_t* base = src_->data();
  if (base && (reinterpret_cast<uintptr_t>(base + offset) % in_size) == 0) {
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (size_t c = 0; c < n_chunks; ++c) {
      const size_t i = c * chunk, cnt = std::min(chunk, n - i);
      convert(base + offset + i * in_size, t.dtype, out + i * out_size, dst_t, cnt);
    }
    return;
  }
  std::vector<uint8_t> buf(std::min(n, chunk) * in_size);
  for (size_t i = 0; i < n; i += chunk) {
    const size_t cnt = std::min(chunk, n - i);
    src_->read(offset + i * in_size, buf.data(), cnt * in_size);
    convert(buf.data(), t.dtype, out + i * out_size, dst_t, cnt);
  }
}

// ---------------------------------------------------------------- writer

void SafetensorsWriter::add(const std::string& name, const std::vector<int64_t>& shape,
                            const void* src, DType src_t, DType stored_t) {
  add_entry(Entry{name, shape, src, src_t, stored_t, {}});
}

void SafetensorsWriter::add_deferred(const std::string& name, const std::vector<int64_t>& shape,
                                     std::function<const void*()> fetch, DType src_t,
                                     DType stored_t) {
  add_entry(Entry{name, shape, nullptr, src_t, stored_t, std::move(fetch)});
}

void SafetensorsWriter::add_entry(Entry entry) {
  const std::string& name = entry.name;
  const DType src_t = entry.src_t, stored_t = entry.stored_t;
  auto fail = [&](const std::string& what) {
    throw Error("safetensors writer: tensor '" + name + "': " + what);
  };
  if (name.empty()) fail("empty tensor name");
  if (name == "__metadata__") fail("'__metadata__' is reserved by the format");
  for (const Entry& e : entries_)
    if (e.name == name) fail("added twice");
  if (src_t != stored_t && (!is_float(src_t) || !is_float(stored_t)))
    fail(std::string("cannot store ") + dtype_name(src_t) + " data as " + dtype_name(stored_t));
  const int64_t numel = checked_numel(entry.shape, stored_t, fail);
  checked_numel(entry.shape, src_t, fail);
  FTUNE_CHECK(numel == 0 || entry.src != nullptr || entry.fetch != nullptr,
              "tensor '" + name + "' added without data");
  entries_.push_back(std::move(entry));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

size_t SafetensorsWriter::data_bytes() const {
  size_t total = 0;
  for (const Entry& e : entries_) {
    TensorInfo t{e.name, e.stored_t, e.shape};
    total += size_t(t.numel()) * dtype_size(e.stored_t);
  }
  return total;
}

void SafetensorsWriter::write(const std::string& path, const WeightKey* key) const {
  // ordered_json keeps tensors in data order and "__metadata__" first, as HF lays it out.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
  }
  std::vector<size_t> bytes;
  size_t offset = 0;
  for (const Entry& e : entries_) {
    TensorInfo t{e.name, e.stored_t, e.shape};
    bytes.push_back(size_t(t.numel()) * dtype_size(e.stored_t));
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(e.stored_t);
    entry["shape"] = e.shape;
    entry["data_offsets"] = {offset, offset + bytes.back()};
    header[e.name] = std::move(entry);
    offset += bytes.back();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    throw Error(path + ": cannot write header (" + strip_json_prefix(e.what()) +
                "); tensor names and metadata must be valid UTF-8");
  }
  // Padding to 8 keeps the data block, and so every tensor, 8-byte aligned for mmap readers.
  text.append((8 - text.size() % 8) % 8, ' ');

  // The file's bytes in order, handed to `put(data, n)`: the fd itself, or the encrypting writer.
  auto emit = [&](auto&& put) {
    uint8_t len_bytes[8];
    store_le64(text.size(), len_bytes);
    put(len_bytes, 8);
    put(text.data(), text.size());
    std::vector<uint8_t> buf;
    for (size_t k = 0; k < entries_.size(); ++k) {
      const Entry& e = entries_[k];
      const void* data = e.fetch ? e.fetch() : e.src;
      FTUNE_CHECK(bytes[k] == 0 || data != nullptr, "tensor '" + e.name + "' has no data");
      if (e.src_t == e.stored_t) {
        put(data, bytes[k]);
        continue;
      }
      const size_t n = bytes[k] / dtype_size(e.stored_t);
      const size_t in_size = dtype_size(e.src_t), out_size = dtype_size(e.stored_t);
      const size_t chunk = kChunkBytes / out_size;
      buf.resize(std::min(n, chunk) * out_size);
      const auto* src = static_cast<const uint8_t*>(data);
      for (size_t i = 0; i < n; i += chunk) {
        const size_t cnt = std::min(chunk, n - i);
        convert(src + i * in_size, e.src_t, buf.data(), e.stored_t, cnt);
        put(buf.data(), cnt * out_size);
      }
    }
  };
  if (!key) {
    write_file_atomic_with(
        path, [&](int fd) { emit([&](const void* p, size_t n) { write_all(fd, p, n, path); }); });
    return;
  }
  // The tensor index goes into the authenticated plaintext header, so an encrypted file can
  // still be listed (names, dtypes, shapes) without its key.
  json index = {{"format", "safetensors"}, {"tensors", json::array()}};
  for (const Entry& e : entries_)
    index["tensors"].push_back(
        {{"name", e.name}, {"dtype", dtype_name(e.stored_t)}, {"shape", e.shape}});
  const uint64_t total = 8 + text.size() + offset;
  write_file_atomic_with(path, [&](int fd) {
    EncryptingWriter enc(fd, *key, path, total, index);
    emit([&](const void* p, size_t n) { enc.write(p, n); });
    enc.finish();
  });
}

// ---------------------------------------------------------------- sharding

void write_sharded_model(const SafetensorsWriter& w, const std::string& dir, size_t max_shard_bytes,
                         const WeightKey* key) {
  if (!is_directory(dir))
    throw Error("cannot write model weights: directory '" + dir + "' does not exist");
  const size_t total = w.data_bytes();
  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    w.write(join_path(dir, "model.safetensors"), key);
    remove_stale_weights(dir, {"model.safetensors"});
    return;
  }

  // Greedy in the order added: a shard closes when the next tensor would push it past the
  // limit; a tensor larger than the limit gets a shard of its own rather than being split.
  std::vector<std::vector<size_t>> groups;
  size_t current = 0;
  for (size_t k = 0; k < w.entries_.size(); ++k) {
    const auto& e = w.entries_[k];
    TensorInfo t{e.name, e.stored_t, e.shape};
    const size_t b = size_t(t.numel()) * dtype_size(e.stored_t);
    if (groups.empty() || (!groups.back().empty() && current + b > max_shard_bytes)) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(k);
    current += b;
  }

  json weight_map = json::object();
  std::set<std::string> keep = {"model.safetensors.index.json"};
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string name = shard_name(g + 1, groups.size());
    SafetensorsWriter shard;
    shard.metadata_ = w.metadata_;
    for (size_t k : groups[g]) {
      shard.entries_.push_back(w.entries_[k]);
      weight_map[w.entries_[k].name] = name;
    }
    shard.write(join_path(dir, name), key);
    keep.insert(name);
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  // The index goes last: until it exists, no reader can find a half-written shard set.
  write_file_atomic(join_path(dir, "model.safetensors.index.json"), index.dump(2) + "\n");
  remove_stale_weights(dir, keep);
}

// ---------------------------------------------------------------- weight store

WeightStore WeightStore::open_dir(const std::string& dir, const WeightKey* key) {
  if (!is_directory(dir))
    throw Error("model directory '" + dir + "' does not exist or is not a directory");
  WeightStore ws;
  ws.dir_ = dir;
  const std::string single = join_path(dir, "model.safetensors");
  const std::string index_path = join_path(dir, "model.safetensors.index.json");
  json weight_map;
  // transformers prefers the single file when both exist; so do we, to load the same weights.
  if (path_exists(single)) {
    ws.files_.push_back(SafetensorsReader::open(single, key));
  } else if (path_exists(index_path)) {
    struct stat st;
    if (::stat(index_path.c_str(), &st) == 0 && uint64_t(st.st_size) > kMaxIndexBytes)
      throw Error(index_path + ": " + std::to_string(st.st_size) +
                  " bytes is over the 100 MB limit for a shard index (real ones are kilobytes); "
                  "the file is not a safetensors index");
    json index;
    try {
      index = parse_json_bounded(read_file(index_path), index_path);
    } catch (const json::exception& e) {
      throw Error(index_path + ": not valid JSON (" + strip_json_prefix(e.what()) + ")");
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      throw Error(index_path + ": missing the 'weight_map' object (tensor name -> shard file)");
    weight_map = index["weight_map"];
    if (weight_map.empty()) throw Error(index_path + ": 'weight_map' lists no tensors");
    std::set<std::string> shard_files;
    std::map<std::string, std::string> example;  // shard -> one tensor it should hold
    for (auto& [tensor, f] : weight_map.items()) {
      if (!f.is_string())
        throw Error(index_path + ": weight_map entry for tensor '" + tensor +
                    "' must be a file name, got " + json_excerpt(f));
      const std::string& fname = f.get_ref<const std::string&>();
      // Shards live in the model directory; anything else is a broken or hostile index.
      // A NUL would cut the name short at open(2), loading a file other than the one named.
      if (fname.empty() || fname[0] == '/' || fname.find("..") != std::string::npos ||
          fname.find('\0') != std::string::npos)
        throw Error(index_path + ": weight_map entry for tensor '" + tensor + "' names " +
                    json_excerpt(f) + ", which is not a file inside the model directory");
      shard_files.insert(fname);
      example.emplace(fname, tensor);
    }
    for (const std::string& fname : shard_files) {
      const std::string p = join_path(dir, fname);
      if (!path_exists(p))
        throw Error(index_path + ": weight_map puts tensor '" + example[fname] + "' in '" + fname +
                    "' but " + p + " does not exist; the download looks incomplete");
      ws.files_.push_back(SafetensorsReader::open(p, key));
    }
  } else {
    throw Error("model directory '" + dir +
                "' has no weights: expected model.safetensors or model.safetensors.index.json");
  }

  for (size_t i = 0; i < ws.files_.size(); ++i) {
    for (const TensorInfo& t : ws.files_[i].tensors()) {
      auto [it, fresh] = ws.where_.emplace(t.name, i);
      if (!fresh)
        throw Error(dir + ": tensor '" + t.name + "' appears in both " +
                    ws.files_[it->second].path() + " and " + ws.files_[i].path() +
                    "; the shards are inconsistent");
    }
  }
  for (auto& [tensor, f] : weight_map.items()) {
    const std::string expected = join_path(dir, f.get<std::string>());
    auto it = ws.where_.find(tensor);
    if (it == ws.where_.end() || ws.files_[it->second].path() != expected)
      throw Error(index_path + ": weight_map puts tensor '" + tensor + "' in '" +
                  f.get<std::string>() + "' but that file does not contain it");
  }
  return ws;
}

const TensorInfo* WeightStore::find(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second].find(name);
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const SafetensorsReader& r : files_)
    for (const TensorInfo& t : r.tensors()) out.push_back(t.name);
  return out;
}

const SafetensorsReader& WeightStore::reader_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw Error(dir_ + ": tensor '" + name + "' not found in the model weights (" +
                std::to_string(where_.size()) + " tensors); is this the right model?");
  return files_[it->second];
}

void WeightStore::read_as(const std::string& name, DType dst_t, void* dst) const {
  const SafetensorsReader& r = reader_of(name);
  r.read_as(*r.find(name), dst_t, dst);
}

}  // namespace ftune
