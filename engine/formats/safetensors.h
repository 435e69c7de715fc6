// The one reader and one writer of weight bytes (HF safetensors format): base models,
// checkpoints and exports all go through here.
// Format: u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets:[b,e]},
// "__metadata__": {str: str}}, then the data block. Offsets are relative to the data block.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/byte_source.h"
#include "engine/base/dtype.h"

namespace ftune {

struct WeightKey;  // engine/trust/encryption.h

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte offsets inside the data block
  int64_t numel() const;
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[4096, 11008]"

class SafetensorsReader {
 public:
  // Validates the whole header (sizes, offsets in range, no overlap, dtype*numel == bytes);
  // malformed input is an ftune::Error naming the file and what is wrong, never a crash.
  explicit SafetensorsReader(std::unique_ptr<ByteSource> src);
  // An encrypted file (engine/trust/encryption.h) is decrypted and authenticated in memory when
  // `key` is given and refused with a message asking for the key when not; a plain file is read as
  // is either way (a plain base model with encrypted outputs is the usual case).
  static SafetensorsReader open(const std::string& path, const WeightKey* key = nullptr);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return src_->label(); }

  void read_raw(const TensorInfo& t, void* dst) const;  // the stored bytes
  // Converts to dst_t (float types); dst holds numel elements.
  void read_as(const TensorInfo& t, DType dst_t, void* dst) const;

 private:
  std::unique_ptr<ByteSource> src_;
  size_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors, then writes one file atomically. The source data must stay alive until
// write() returns. Tensors are written in the order added (so layer-by-layer buffers stream).
class SafetensorsWriter {
 public:
  void add(const std::string& name, const std::vector<int64_t>& shape, const void* src, DType src_t,
           DType stored_t);
  // The same with the data asked for only when the tensor is written: `fetch` returns it, valid
  // until the next fetch. Tensors are fetched once each, in the order added, so a caller can
  // stream a model that no process holds whole (ZeRO-3 export, unit by unit).
  void add_deferred(const std::string& name, const std::vector<int64_t>& shape,
                    std::function<const void*()> fetch, DType src_t, DType stored_t);
  void set_metadata(const std::string& key, const std::string& value);
  // With a key the whole file (header and data) is written AES-256-GCM encrypted, streamed, so
  // its plaintext never reaches the disk; the file name is the caller's, unchanged.
  void write(const std::string& path, const WeightKey* key = nullptr) const;
  size_t data_bytes() const;  // bytes the data block will take

 private:
  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    const void* src;
    DType src_t, stored_t;
    std::function<const void*()> fetch;  // set: src is asked for at write time
  };
  // Checks the name, dtypes and shape of either kind of tensor, then keeps it.
  void add_entry(Entry entry);
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  friend void write_sharded_model(const SafetensorsWriter&, const std::string&, size_t,
                                  const WeightKey*);
};

// A model directory's weights: "model.safetensors", or shards listed in
// "model.safetensors.index.json" (weight_map: tensor name -> file). Errors name the directory.
class WeightStore {
 public:
  // `key` as for SafetensorsReader::open, for every weight file of the directory.
  static WeightStore open_dir(const std::string& dir, const WeightKey* key = nullptr);
  const TensorInfo* find(const std::string& name) const;
  std::vector<std::string> names() const;
  // Reads tensor `name` converted to dst_t; throws naming the tensor if absent.
  void read_as(const std::string& name, DType dst_t, void* dst) const;
  const SafetensorsReader& reader_of(const std::string& name) const;
  const std::vector<SafetensorsReader>& files() const { return files_; }

 private:
  std::vector<SafetensorsReader> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
  std::string dir_;
};

// Writes dir/model.safetensors when the data fits in max_shard_bytes (0 = never shard),
// otherwise dir/model-0000i-of-0000n.safetensors plus model.safetensors.index.json
// (metadata.total_size and weight_map), each file atomically. With a key every .safetensors file
// is written encrypted under the same names; the index stays plaintext (it holds no weights).
void write_sharded_model(const SafetensorsWriter& w, const std::string& dir, size_t max_shard_bytes,
                         const WeightKey* key = nullptr);

}  // namespace ftune
