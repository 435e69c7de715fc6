// Encryption at rest (issue #4): AES-256-GCM weight files round-trip, keep no plaintext on disk,
// and fail clearly (never with garbage weights) on a wrong key, a changed byte or truncation.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/byte_source.h"
#include "engine/base/dtype.h"
#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/trust/encryption.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::expect_error;

const std::string kKeyHex = "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978";
const std::string kOtherKeyHex = "ffeeddccbbaa99887766554433221100fedcba98765432100123456789abcdef";

// Arbitrary bytes as a string (files, needles).
std::string bytes_of(const void* p, size_t n) {
  return std::string(static_cast<const char*>(p), n);
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// Writes bytes without fsync: the flip and truncation tests write hundreds of files.
void put_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// Magic, length and header of an encrypted file's bytes.
size_t prefix_len(const std::string& file) {
  uint64_t h = 0;
  for (int i = 15; i >= 8; --i) h = (h << 8) | uint8_t(file[size_t(i)]);
  return 16 + size_t(h);
}

// Message of the ftune::Error f throws ("" and a test failure when it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected ftune::Error";
  return "";
}

class Encryption : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("encryption");
    key_ = key_from(kKeyHex, "key-a");
    other_ = key_from(kOtherKeyHex, "key-b");
    // Distinctive values: their bytes cannot turn up in a ciphertext by chance.
    f32_.resize(96);
    for (size_t i = 0; i < f32_.size(); ++i) f32_[i] = 1234.5678f + float(i) * 0.25f;
    bf16_src_ = testing::random_vec(40, 7);
    ids_ = {7, -3, 1 << 20, 42};
  }
  void TearDown() override { fs::remove_all(dir_); }

  WeightKey key_from(const std::string& hex, const std::string& name) {
    const std::string path = dir_ + "/" + name + ".key";
    write_file_atomic(path, hex + "\n");
    return load_key_file(path);
  }
  // f32 stored as is, f32 converted to bf16 on the way out, i32 raw, plus metadata.
  SafetensorsWriter writer() const {
    SafetensorsWriter w;
    w.add("model.embed.weight", {8, 12}, f32_.data(), DType::F32, DType::F32);
    w.add("model.layers.0.mlp.weight", {5, 8}, bf16_src_.data(), DType::F32, DType::BF16);
    w.add("ids", {4}, ids_.data(), DType::I32, DType::I32);
    w.set_metadata("format", "pt");
    return w;
  }
  // An encrypted file and the plain file the same writer gives.
  std::string write_pair(const std::string& name) const {
    const std::string enc = dir_ + "/" + name + ".safetensors";
    writer().write(enc, &key_);
    writer().write(dir_ + "/" + name + ".plain.safetensors");
    return enc;
  }
  void expect_tensors(const SafetensorsReader& r) const {
    ASSERT_EQ(r.tensors().size(), 3u);
    EXPECT_EQ(r.metadata().at("format"), "pt");
    std::vector<float> got(f32_.size());
    r.read_as(*r.find("model.embed.weight"), DType::F32, got.data());
    EXPECT_TRUE(testing::bitwise_equal(got, f32_));
    const TensorInfo* b = r.find("model.layers.0.mlp.weight");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->dtype, DType::BF16);
    EXPECT_EQ(b->shape, (std::vector<int64_t>{5, 8}));
    std::vector<uint16_t> raw(bf16_src_.size());
    r.read_raw(*b, raw.data());
    for (size_t i = 0; i < raw.size(); ++i) EXPECT_EQ(raw[i], f32_to_bf16(bf16_src_[i])) << i;
    std::vector<int32_t> ids(4);
    r.read_raw(*r.find("ids"), ids.data());
    EXPECT_EQ(ids, ids_);
  }

  std::string dir_;
  WeightKey key_, other_;
  std::vector<float> f32_, bf16_src_;
  std::vector<int32_t> ids_;
};

// ---------------------------------------------------------------- round trip

TEST_F(Encryption, RoundTripGivesTheSameFileAndTensors) {
  const std::string enc = write_pair("m");
  EXPECT_TRUE(is_encrypted_file(enc));
  EXPECT_FALSE(is_encrypted_file(dir_ + "/m.plain.safetensors"));
  EXPECT_FALSE(is_encrypted_file(dir_ + "/missing"));

  // Decrypted, the file is byte for byte what the plain writer produces.
  auto src = open_encrypted_file(enc, key_);
  EXPECT_EQ(src->label(), enc);
  ASSERT_NE(src->data(), nullptr);
  EXPECT_EQ(bytes_of(src->data(), src->size()), read_file(dir_ + "/m.plain.safetensors"));
  // Decrypted in place after the header, the data stays aligned for typed loads.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(src->data()) % 8, 0u);

  const SafetensorsReader r = SafetensorsReader::open(enc, &key_);
  EXPECT_EQ(r.path(), enc);
  expect_tensors(r);
  // A plain file opens the same with or without a key (plain base model, encrypted output).
  expect_tensors(SafetensorsReader::open(dir_ + "/m.plain.safetensors", &key_));
  expect_tensors(SafetensorsReader::open(dir_ + "/m.plain.safetensors"));
}

TEST_F(Encryption, NoPlaintextReachesTheDisk) {
  const std::string enc = write_pair("m");
  const std::string file = read_file(enc);
  const std::string plain = read_file(dir_ + "/m.plain.safetensors");
  // The plain file holds the tensor bytes; the encrypted one holds none of them.
  const std::string f32_bytes = bytes_of(f32_.data(), 16);
  ASSERT_TRUE(contains(plain, f32_bytes));
  EXPECT_FALSE(contains(file, f32_bytes));
  for (size_t i = 0; i + 8 <= f32_.size() * 4; i += 8)
    EXPECT_FALSE(contains(file, bytes_of(reinterpret_cast<const char*>(f32_.data()) + i, 8))) << i;
  // Nor the safetensors header (offsets, metadata), nor anything of the key.
  EXPECT_FALSE(contains(file, "data_offsets"));
  EXPECT_FALSE(contains(file, "__metadata__"));
  EXPECT_FALSE(contains(file, kKeyHex.substr(0, 16)));
  EXPECT_FALSE(contains(file, bytes_of(key_.bytes.data(), 8)));
  // magic + header + ciphertext of the plain file + tag.
  ASSERT_EQ(file.substr(0, 8), "FTENC001");
  const json h = read_encrypted_header(enc);
  EXPECT_EQ(h["plaintext_bytes"].get<size_t>(), plain.size());
  EXPECT_EQ(file.size(), prefix_len(file) + plain.size() + 16);
  EXPECT_EQ(prefix_len(file) % 8, 0u);
}

TEST_F(Encryption, HeaderListsTensorsWithoutTheKey) {
  const std::string enc = write_pair("m");
  const json h = read_encrypted_header(enc);
  EXPECT_EQ(h["cipher"], "AES-256-GCM");
  EXPECT_EQ(h["format"], "safetensors");
  EXPECT_EQ(h["nonce"].get<std::string>().size(), 24u);
  EXPECT_EQ(h["key_id"], key_id(key_));
  ASSERT_EQ(h["tensors"].size(), 3u);
  EXPECT_EQ(h["tensors"][1]["name"], "model.layers.0.mlp.weight");
  EXPECT_EQ(h["tensors"][1]["dtype"], "BF16");
  EXPECT_EQ(h["tensors"][1]["shape"], json::array({5, 8}));
  expect_error([&] { read_encrypted_header(dir_ + "/m.plain.safetensors"); },
               {"m.plain.safetensors", "not an ftune-encrypted weight file"});
}

TEST_F(Encryption, EveryWriteHasAFreshNonce) {
  const std::string a = dir_ + "/a.safetensors", b = dir_ + "/b.safetensors";
  writer().write(a, &key_);
  writer().write(b, &key_);
  const json ha = read_encrypted_header(a), hb = read_encrypted_header(b);
  EXPECT_NE(ha["nonce"], hb["nonce"]);
  const std::string fa = read_file(a), fb = read_file(b);
  ASSERT_EQ(fa.size(), fb.size());
  const size_t body = fa.size() - ha["plaintext_bytes"].get<size_t>() - 16;
  EXPECT_NE(fa.substr(body), fb.substr(body));
  expect_tensors(SafetensorsReader::open(a, &key_));
  expect_tensors(SafetensorsReader::open(b, &key_));
}

// Bigger than the 4 MiB chunks both sides work in, with a conversion on the way out.
TEST_F(Encryption, LargeTensorsStreamInChunks) {
  const std::vector<float> big = testing::random_vec((10u << 20) / 4 + 3, 11);
  SafetensorsWriter w;
  w.add("a", {int64_t(big.size())}, big.data(), DType::F32, DType::F32);
  w.add("b", {int64_t(big.size())}, big.data(), DType::F32, DType::BF16);
  const std::string enc = dir_ + "/big.safetensors", plain = dir_ + "/big.plain.safetensors";
  w.write(enc, &key_);
  w.write(plain);
  auto src = open_encrypted_file(enc, key_);
  EXPECT_TRUE(bytes_of(src->data(), src->size()) == read_file(plain));
  const SafetensorsReader r = SafetensorsReader::open(enc, &key_);
  std::vector<float> got(big.size());
  r.read_as(*r.find("a"), DType::F32, got.data());
  EXPECT_TRUE(testing::bitwise_equal(got, big));
  r.read_as(*r.find("b"), DType::F32, got.data());
  for (size_t i = 0; i < big.size(); i += 9973) EXPECT_EQ(got[i], bf16_to_f32(f32_to_bf16(big[i])));
}

// ---------------------------------------------------------------- failures

TEST_F(Encryption, WrongKeyFailsAuthentication) {
  const std::string enc = write_pair("m");
  for (bool via_reader : {false, true}) {
    const std::string msg = error_of([&] {
      if (via_reader)
        SafetensorsReader::open(enc, &other_);
      else
        open_encrypted_file(enc, other_);
    });
    EXPECT_TRUE(contains(msg, "authentication failed")) << msg;
    EXPECT_TRUE(contains(msg, enc)) << msg;
    EXPECT_TRUE(contains(msg, "check the key")) << msg;
    EXPECT_TRUE(contains(msg, "key file '" + dir_ + "/key-b.key'")) << msg;
    EXPECT_FALSE(contains(msg, kKeyHex.substr(0, 8))) << msg;
    EXPECT_FALSE(contains(msg, kOtherKeyHex.substr(0, 8))) << msg;
  }
}

TEST_F(Encryption, EncryptedFileWithoutKeyAsksForIt) {
  const std::string enc = write_pair("m");
  expect_error(
      [&] { SafetensorsReader::open(enc); },
      {"'" + enc + "' is encrypted", "--key-file FILE", "--key-env VAR", "export.encrypt"});
}

// Every single changed bit after the magic, header and length included, fails authentication;
// nothing is ever returned.
TEST_F(Encryption, AnyFlippedByteFailsAuthentication) {
  const std::string enc = write_pair("m");
  const std::string good = read_file(enc);
  const std::string bad = dir_ + "/bad.safetensors";
  put_file(bad, good);
  // Changed in place: rewriting the whole file thousands of times is slow on some filesystems.
  std::fstream f(bad, std::ios::binary | std::ios::in | std::ios::out);
  auto poke = [&](size_t pos, char c) {
    f.seekp(std::streamoff(pos));
    f.put(c);
    f.flush();
    ASSERT_TRUE(f.good());
  };
  for (size_t pos = 0; pos < good.size(); ++pos) {
    for (uint8_t mask : {uint8_t(0x01), uint8_t(0x80)}) {
      poke(pos, char(uint8_t(good[pos]) ^ mask));
      const std::string msg = error_of([&] { open_encrypted_file(bad, key_); });
      if (pos < 8) {
        // A damaged magic is no longer an encrypted file; the plain reader refuses it too.
        EXPECT_TRUE(contains(msg, "not an ftune-encrypted weight file")) << pos << ": " << msg;
        error_of([&] { SafetensorsReader::open(bad, &key_); });
      } else {
        EXPECT_TRUE(contains(msg, "authentication failed")) << "byte " << pos << ": " << msg;
        EXPECT_TRUE(contains(msg, bad)) << msg;
      }
      poke(pos, good[pos]);
      if (HasFailure()) return;  // one report is enough, not thousands
    }
  }
  f.close();
  // The same through the safetensors reader for a byte in the header, the body and the tag.
  const size_t hlen = prefix_len(good);
  for (size_t pos : {size_t(20), hlen / 2, hlen + 3, (hlen + good.size()) / 2, good.size() - 17,
                     good.size() - 1}) {
    std::string bytes = good;
    bytes[pos] ^= 0x10;
    put_file(bad, bytes);
    expect_error([&] { SafetensorsReader::open(bad, &key_); }, {"authentication failed", bad});
  }
  // With the right key on a damaged body, the message says the file changed, not the key.
  std::string bytes = good;
  bytes[good.size() - 40] ^= 0x04;
  put_file(bad, bytes);
  expect_error([&] { open_encrypted_file(bad, key_); },
               {"authentication failed", "modified or corrupted"});
}

TEST_F(Encryption, TruncatedOrExtendedFileIsRefused) {
  const std::string enc = write_pair("m");
  const std::string good = read_file(enc);
  const std::string cut = dir_ + "/cut.safetensors";
  const size_t hlen = prefix_len(good);
  for (size_t n : {size_t(1), size_t(4), size_t(8), size_t(15), size_t(16), size_t(31), size_t(40),
                   hlen / 2, hlen - 1, hlen, hlen + 1, good.size() / 2, good.size() - 17,
                   good.size() - 16, good.size() - 1}) {
    SCOPED_TRACE(n);
    ASSERT_LT(n, good.size());
    put_file(cut, good.substr(0, n));
    expect_error([&] { open_encrypted_file(cut, key_); }, {"truncated", cut});
    // From 8 bytes on the magic says "encrypted", so the reader reports the truncation too.
    if (n >= 8) expect_error([&] { SafetensorsReader::open(cut, &key_); }, {"truncated", cut});
  }
  put_file(cut, "");
  expect_error([&] { open_encrypted_file(cut, key_); }, {"not an ftune-encrypted weight file"});
  expect_error([&] { SafetensorsReader::open(cut, &key_); }, {"too short"});
  put_file(cut, good + "x");
  expect_error([&] { open_encrypted_file(cut, key_); }, {"authentication failed", "1 unexpected"});
}

TEST_F(Encryption, WriterChecksItsInput) {
  const std::string path = dir_ + "/w.bin";
  // Over the GCM limit for one nonce: refused before anything is written.
  expect_error(
      [&] {
        write_file_atomic_with(path, [&](int fd) {
          EncryptingWriter w(fd, key_, path, kMaxEncryptedBytes + 1, json::object());
        });
      },
      {"w.bin", "shard"});
  EXPECT_FALSE(path_exists(path));
  // Fewer bytes than declared is a bug in the caller, caught before a file is committed.
  expect_error(
      [&] {
        write_file_atomic_with(path, [&](int fd) {
          EncryptingWriter w(fd, key_, path, 10, json::object());
          w.write("abc", 3);
          w.finish();
        });
      },
      {"internal error"});
  EXPECT_FALSE(path_exists(path));
  // A raw payload round-trips and its extra header keys are kept.
  write_file_atomic_with(path, [&](int fd) {
    EncryptingWriter w(fd, key_, path, 11, json{{"format", "raw"}});
    w.write("hello ", 6);
    w.write("world", 5);
    w.finish();
  });
  auto src = open_encrypted_file(path, key_);
  EXPECT_EQ(bytes_of(src->data(), src->size()), "hello world");
  EXPECT_EQ(read_encrypted_header(path)["format"], "raw");
}

// ---------------------------------------------------------------- keys

TEST_F(Encryption, KeyFilesAndTheirErrors) {
  // Whitespace around the key and upper case hex are fine.
  write_file_atomic(dir_ + "/ws.key", "  \n" + kKeyHex + "\r\n\n");
  EXPECT_EQ(load_key_file(dir_ + "/ws.key").bytes, key_.bytes);
  std::string upper = kKeyHex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  write_file_atomic(dir_ + "/upper.key", upper);
  EXPECT_EQ(load_key_file(dir_ + "/upper.key").bytes, key_.bytes);
  EXPECT_EQ(key_.origin, "key file '" + dir_ + "/key-a.key'");
  EXPECT_EQ(key_.bytes[0], 0x00);
  EXPECT_EQ(key_.bytes[1], 0x11);
  EXPECT_EQ(key_.bytes[31], 0x78);

  struct Case {
    std::string name, text, needle;
  };
  std::string secretish;
  while (secretish.size() < 64) secretish += "c0ffee0ddba11";
  secretish.resize(64);
  const std::vector<Case> cases = {
      {"short", secretish.substr(0, 40), "holds 40 characters, not 64"},
      {"long", secretish + "00", "holds 66 characters, not 64"},
      {"nonhex", secretish.substr(0, 63) + "g", "not a hex digit (position 64)"},
      {"inner-space", secretish.substr(0, 32) + " " + secretish.substr(0, 31),
       "not a hex digit (position 33)"},
      {"empty", "\n\n", "is empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir_ + "/" + c.name + ".key";
    write_file_atomic(path, c.text);
    const std::string msg = error_of([&] { load_key_file(path); });
    EXPECT_TRUE(contains(msg, "key file '" + path + "'")) << msg;
    EXPECT_TRUE(contains(msg, c.needle)) << msg;
    EXPECT_TRUE(contains(msg, "ftune keygen")) << msg;
    EXPECT_FALSE(contains(msg, "c0ffee")) << msg;
    EXPECT_FALSE(contains(msg, "0ddba")) << msg;
  }
  expect_error([&] { load_key_file(dir_ + "/missing.key"); },
               {"key file '" + dir_ + "/missing.key'", "No such file"});
  expect_error([&] { load_key_file(dir_); }, {"not a regular file"});
  // The key itself pasted where its file's path or variable's name belongs is never echoed.
  for (const std::string& pasted : {kKeyHex, " " + kKeyHex + "\n"}) {
    std::string msg = error_of([&] { load_key_file(pasted); });
    EXPECT_TRUE(contains(msg, "looks like the key")) << msg;
    EXPECT_FALSE(contains(msg, kKeyHex.substr(0, 8))) << msg;
    msg = error_of([&] { load_key_env(pasted); });
    EXPECT_TRUE(contains(msg, "looks like the key")) << msg;
    EXPECT_FALSE(contains(msg, kKeyHex.substr(0, 8))) << msg;
    msg = error_of([&] { load_key_option(pasted, "ALSO_SET"); });
    EXPECT_TRUE(contains(msg, "not both")) << msg;
    EXPECT_FALSE(contains(msg, kKeyHex.substr(0, 8))) << msg;
  }
  // A weights file given as the key is refused without being read whole.
  write_file_atomic(dir_ + "/big.key", std::string(5000, 'a'));
  expect_error([&] { load_key_file(dir_ + "/big.key"); }, {"5000 bytes, too big for a key"});
}

TEST_F(Encryption, KeyFromEnvironment) {
  const char* var = "FTUNE_TEST_ENCRYPTION_KEY";
  ::unsetenv(var);
  expect_error([&] { load_key_env(var); }, {"FTUNE_TEST_ENCRYPTION_KEY", "not set"});
  ::setenv(var, "", 1);
  expect_error([&] { load_key_env(var); }, {"$FTUNE_TEST_ENCRYPTION_KEY", "is empty"});
  ::setenv(var, "deadbeefdeadbeef", 1);
  const std::string msg = error_of([&] { load_key_env(var); });
  EXPECT_TRUE(contains(msg, "holds 16 characters")) << msg;
  EXPECT_FALSE(contains(msg, "deadbeef")) << msg;
  ::setenv(var, (kKeyHex + "\n").c_str(), 1);
  const WeightKey k = load_key_env(var);
  EXPECT_EQ(k.bytes, key_.bytes);
  EXPECT_EQ(k.origin, "$FTUNE_TEST_ENCRYPTION_KEY");

  // The option pair: neither, one, or (an error) both.
  EXPECT_FALSE(load_key_option("", "").has_value());
  EXPECT_EQ(load_key_option("", var)->bytes, key_.bytes);
  EXPECT_EQ(load_key_option(dir_ + "/key-b.key", "")->bytes, other_.bytes);
  expect_error([&] { load_key_option(dir_ + "/key-b.key", var); }, {"not both"});

  // A file encrypted with one origin opens with the same key from another.
  const std::string enc = write_pair("m");
  expect_tensors(SafetensorsReader::open(enc, &k));
  ::unsetenv(var);
}

TEST_F(Encryption, NewKeysAndKeyIds) {
  const std::string a = new_key_hex(), b = new_key_hex();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos) << a;
  write_file_atomic(dir_ + "/new.key", a + "\n");
  const WeightKey k = load_key_file(dir_ + "/new.key");
  writer().write(dir_ + "/n.safetensors", &k);
  expect_tensors(SafetensorsReader::open(dir_ + "/n.safetensors", &k));

  const std::string id = key_id(key_);
  EXPECT_EQ(id.size(), 16u);
  EXPECT_EQ(id, key_id(key_));
  EXPECT_NE(id, key_id(other_));
  EXPECT_NE(id, key_id(k));
  EXPECT_FALSE(contains(kKeyHex, id));
}

// ---------------------------------------------------------------- model directories

TEST_F(Encryption, ShardedDirectoryRoundTrip) {
  const std::string model = dir_ + "/model";
  fs::create_directories(model);
  // 384 + 80 + 16 bytes with 90-byte shards: three shard files.
  write_sharded_model(writer(), model, 90, &key_);
  const json index = json::parse(read_file(model + "/model.safetensors.index.json"));
  ASSERT_EQ(index["weight_map"].size(), 3u);
  size_t shards = 0;
  for (const auto& e : fs::directory_iterator(model)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") {
      EXPECT_TRUE(is_encrypted_file(e.path().string())) << name;
      ++shards;
    }
  }
  EXPECT_EQ(shards, 3u);

  const WeightStore ws = WeightStore::open_dir(model, &key_);
  EXPECT_EQ(ws.names().size(), 3u);
  std::vector<float> got(f32_.size());
  ws.read_as("model.embed.weight", DType::F32, got.data());
  EXPECT_TRUE(testing::bitwise_equal(got, f32_));
  std::vector<float> b(bf16_src_.size());
  ws.read_as("model.layers.0.mlp.weight", DType::F32, b.data());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i], bf16_to_f32(f32_to_bf16(bf16_src_[i])));

  expect_error([&] { WeightStore::open_dir(model); }, {"is encrypted", "--key-file"});
  expect_error([&] { WeightStore::open_dir(model, &other_); }, {"authentication failed"});

  // Rewritten as one file, still encrypted, and the stale shards go.
  write_sharded_model(writer(), model, 0, &key_);
  EXPECT_TRUE(is_encrypted_file(model + "/model.safetensors"));
  EXPECT_FALSE(path_exists(model + "/model.safetensors.index.json"));
  const WeightStore single = WeightStore::open_dir(model, &key_);
  ASSERT_EQ(single.files().size(), 1u);
  expect_tensors(single.files()[0]);
}

// ---------------------------------------------------------------- ftune decrypt

TEST_F(Encryption, DecryptCommand) {
  const std::string enc = write_pair("m");
  const std::string kf = dir_ + "/key-a.key";
  const std::string out = dir_ + "/out.safetensors";

  auto r = testing::ftune("decrypt " + enc + " " + out + " --key-file " + kf);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(out), read_file(dir_ + "/m.plain.safetensors"));
  EXPECT_FALSE(contains(r.out, kKeyHex.substr(0, 8))) << r.out;

  r = testing::ftune("decrypt " + enc + " " + out + " --key-file " + kf);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "already exists")) << r.out;
  EXPECT_TRUE(contains(r.out, "--force")) << r.out;
  r = testing::ftune("decrypt " + enc + " " + out + " --key-file " + kf + " --force");
  EXPECT_EQ(r.code, 0) << r.out;

  // Wrong key: a clear error and no output file.
  const std::string out2 = dir_ + "/out2.safetensors";
  r = testing::ftune("decrypt " + enc + " " + out2 + " --key-file " + dir_ + "/key-b.key");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "authentication failed")) << r.out;
  EXPECT_FALSE(contains(r.out, kOtherKeyHex.substr(0, 8))) << r.out;
  EXPECT_FALSE(path_exists(out2));
  r = testing::ftune("decrypt " + enc + " " + out2);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "needs the key")) << r.out;

  // A model directory, key from the environment: shards decrypted, other files copied.
  const std::string model = dir_ + "/model", plain = dir_ + "/plain";
  fs::create_directories(model);
  write_sharded_model(writer(), model, 90, &key_);
  write_file_atomic(model + "/config.json", "{\"model_type\": \"llama\"}\n");
  ::setenv("FTUNE_TEST_DECRYPT_KEY", kKeyHex.c_str(), 1);
  r = testing::ftune("decrypt " + model + " " + plain + " --key-env FTUNE_TEST_DECRYPT_KEY");
  ::unsetenv("FTUNE_TEST_DECRYPT_KEY");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "decrypted 3 files and copied 2 others")) << r.out;
  EXPECT_EQ(read_file(plain + "/config.json"), read_file(model + "/config.json"));
  const WeightStore ws = WeightStore::open_dir(plain);  // no key needed any more
  for (const SafetensorsReader& f : ws.files()) EXPECT_FALSE(is_encrypted_file(f.path()));
  std::vector<float> got(f32_.size());
  ws.read_as("model.embed.weight", DType::F32, got.data());
  EXPECT_TRUE(testing::bitwise_equal(got, f32_));

  r = testing::ftune("decrypt " + model + " " + model + "/inner --key-file " + kf);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "inside")) << r.out;
}

}  // namespace
}  // namespace ftune
