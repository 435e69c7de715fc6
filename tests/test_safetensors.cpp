// Safetensors reading, writing, sharding and inspection. Compatibility is checked against a
// file written by the Hugging Face safetensors library (tests/fixtures/safetensors).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/byte_source.h"
#include "engine/base/dtype.h"
#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/tools/inspect.h"
#include "engine/trust/encryption.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string fixture(const std::string& name) {
  return ftune::testing::fixtures_dir() + "/safetensors/" + name;
}

using testing::expect_error;

// Raw file bytes: u64 LE header length, header text as given (no padding), then data.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}

SafetensorsReader reader_of_bytes(const std::string& bytes, const std::string& label) {
  return SafetensorsReader(open_memory(bytes, label));
}

// Header length, header JSON and data block of a safetensors file on disk.
struct Parts {
  uint64_t header_len = 0;
  std::string header_text;
  std::string data;
};
Parts split_file(const std::string& path) {
  const std::string bytes = read_file(path);
  Parts p;
  for (int i = 7; i >= 0; --i) p.header_len = (p.header_len << 8) | uint8_t(bytes[size_t(i)]);
  p.header_text = bytes.substr(8, p.header_len);
  p.data = bytes.substr(8 + p.header_len);
  return p;
}

float decode_expected(const json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "nan") return NAN;
    return s == "inf" ? INFINITY : -INFINITY;
  }
  return v.get<float>();
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

class SafetensorsDir : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = ftune::testing::make_temp_dir("safetensors"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  std::string dir_;
};

// ---------------------------------------------------------------- Python-written fixture

TEST(SafetensorsFixture, ReadsWhatPythonWrote) {
  const json expected = json::parse(read_file(fixture("small.expected.json")));
  for (bool mapped : {true, false}) {
    SCOPED_TRACE(mapped ? "mmap" : "pread");
    const std::string path = fixture("small.safetensors");
    SafetensorsReader r(mapped ? open_mapped_file(path) : open_plain_file(path));
    EXPECT_EQ(r.path(), path);

    std::map<std::string, std::string> meta = expected["metadata"];
    EXPECT_EQ(r.metadata(), meta);
    ASSERT_EQ(r.tensors().size(), expected["tensors"].size());
    for (size_t i = 1; i < r.tensors().size(); ++i)
      EXPECT_LE(r.tensors()[i - 1].begin, r.tensors()[i].begin) << "tensors not in file order";

    for (const auto& [name, e] : expected["tensors"].items()) {
      SCOPED_TRACE(name);
      const TensorInfo* t = r.find(name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(dtype_name(t->dtype), e["dtype"].get<std::string>());
      EXPECT_EQ(t->shape, e["shape"].get<std::vector<int64_t>>());
      EXPECT_EQ(t->begin, e["data_offsets"][0].get<size_t>());
      EXPECT_EQ(t->end, e["data_offsets"][1].get<size_t>());
      const auto& vals = e["values"];
      ASSERT_EQ(size_t(t->numel()), vals.size());

      std::vector<float> got(vals.size());
      r.read_as(*t, DType::F32, got.data());
      std::vector<double> got64(vals.size());
      r.read_as(*t, DType::F64, got64.data());
      for (size_t i = 0; i < vals.size(); ++i) {
        const float want = decode_expected(vals[i]);
        EXPECT_EQ(bits_of(got[i]), bits_of(want)) << "element " << i << ": " << got[i];
        EXPECT_EQ(bits_of(float(got64[i])), bits_of(want)) << "element " << i;
      }
    }
    EXPECT_EQ(r.find("not.there"), nullptr);
  }
}

TEST_F(SafetensorsDir, RewriteMatchesPythonLayout) {
  // Writing the fixture's tensors back in file order must give the same header (as JSON) and
  // byte-identical data, i.e. ftune's output is what the reference library produces.
  SafetensorsReader r = SafetensorsReader::open(fixture("small.safetensors"));
  std::vector<std::vector<uint8_t>> keep;
  SafetensorsWriter w;
  for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
  for (const TensorInfo& t : r.tensors()) {
    keep.emplace_back(t.end - t.begin);
    r.read_raw(t, keep.back().data());
    w.add(t.name, t.shape, keep.back().data(), t.dtype, t.dtype);
  }
  const std::string out = dir_ + "/copy.safetensors";
  w.write(out);

  const Parts ours = split_file(out), theirs = split_file(fixture("small.safetensors"));
  EXPECT_EQ(ours.header_len % 8, 0u);
  EXPECT_EQ(ours.header_len, theirs.header_len);
  EXPECT_EQ(json::parse(ours.header_text), json::parse(theirs.header_text));
  EXPECT_TRUE(ours.data == theirs.data);
  EXPECT_EQ(w.data_bytes(), theirs.data.size());
  // Padding is spaces after the JSON, as in the reference implementation.
  const size_t last = ours.header_text.find_last_not_of(' ');
  EXPECT_EQ(ours.header_text[last], '}');
  EXPECT_LT(ours.header_text.size() - last - 1, 8u);
}

// ---------------------------------------------------------------- round trips

TEST_F(SafetensorsDir, RoundTripWithConversion) {
  const auto a = ftune::testing::random_vec(6 * 7, 1, -3.f, 3.f);
  const auto b = ftune::testing::random_vec(3 * 1000 * 1000 + 17, 2);      // spans several chunks
  const auto c = ftune::testing::random_vec(5 * 4, 3, -70000.f, 70000.f);  // overflows f16
  std::vector<uint16_t> d_bf16(9);
  for (size_t i = 0; i < d_bf16.size(); ++i) d_bf16[i] = f32_to_bf16(0.37f * float(i) - 1.f);
  const std::vector<double> e = {0.1, -2.5, 1e-3};

  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.add("a.f32", {6, 7}, a.data(), DType::F32, DType::F32);
  w.add("b.bf16", {int64_t(b.size())}, b.data(), DType::F32, DType::BF16);
  w.add("c.f16", {5, 4}, c.data(), DType::F32, DType::F16);
  w.add("d.widened", {3, 3}, d_bf16.data(), DType::BF16, DType::F32);
  w.add("e.f64", {3}, e.data(), DType::F64, DType::F16);
  w.add("empty", {0, 3}, nullptr, DType::F32, DType::BF16);
  EXPECT_EQ(w.data_bytes(), a.size() * 4 + b.size() * 2 + c.size() * 2 + 9 * 4 + 3 * 2);
  const std::string path = dir_ + "/rt.safetensors";
  w.write(path);
  EXPECT_EQ(listing(), std::vector<std::string>{"rt.safetensors"});

  for (bool mapped : {true, false}) {
    SCOPED_TRACE(mapped ? "mmap" : "pread");
    SafetensorsReader r(mapped ? open_mapped_file(path) : open_plain_file(path));
    ASSERT_EQ(r.tensors().size(), 6u);
    // Stored in the order added.
    const char* order[] = {"a.f32", "b.bf16", "c.f16", "d.widened", "e.f64", "empty"};
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(r.tensors()[i].name, order[i]);
    EXPECT_EQ(r.metadata().at("format"), "pt");

    std::vector<float> got(a.size());
    r.read_as(*r.find("a.f32"), DType::F32, got.data());
    EXPECT_EQ(got, a);

    const TensorInfo* tb = r.find("b.bf16");
    EXPECT_EQ(tb->dtype, DType::BF16);
    got.assign(b.size(), 0.f);
    r.read_as(*tb, DType::F32, got.data());
    size_t bad = 0;
    for (size_t i = 0; i < b.size(); ++i) bad += got[i] != bf16_to_f32(f32_to_bf16(b[i]));
    EXPECT_EQ(bad, 0u);
    EXPECT_LT(ftune::testing::rel_error(got, b), 1.0 / 256);
    std::vector<uint16_t> raw(b.size());
    r.read_raw(*tb, raw.data());
    EXPECT_EQ(raw[12345], f32_to_bf16(b[12345]));
    EXPECT_EQ(raw.back(), f32_to_bf16(b.back()));

    const TensorInfo* tc = r.find("c.f16");
    EXPECT_EQ(tc->shape, (std::vector<int64_t>{5, 4}));
    got.assign(c.size(), 0.f);
    r.read_as(*tc, DType::F32, got.data());
    for (size_t i = 0; i < c.size(); ++i) {
      if (std::fabs(c[i]) >= 65520.f)
        EXPECT_TRUE(std::isinf(got[i]) && (got[i] > 0) == (c[i] > 0)) << c[i];
      else
        EXPECT_EQ(got[i], f16_to_f32(f32_to_f16(c[i]))) << c[i];
    }

    got.assign(9, 0.f);
    r.read_as(*r.find("d.widened"), DType::F32, got.data());
    for (size_t i = 0; i < 9; ++i) EXPECT_EQ(got[i], bf16_to_f32(d_bf16[i]));
    // Reading F32 storage as BF16 gives back the original bf16 values exactly.
    std::vector<uint16_t> narrow(9);
    r.read_as(*r.find("d.widened"), DType::BF16, narrow.data());
    EXPECT_EQ(narrow, d_bf16);

    got.assign(3, 0.f);
    r.read_as(*r.find("e.f64"), DType::F32, got.data());
    for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got[i], e[i], std::fabs(e[i]) / 1024);

    const TensorInfo* te = r.find("empty");
    EXPECT_EQ(te->numel(), 0);
    EXPECT_EQ(te->begin, te->end);
    r.read_as(*te, DType::F32, nullptr);
  }
}

TEST(SafetensorsReader, UnalignedTensorsConvert) {
  // A header length that is not a multiple of 8 leaves tensors misaligned in memory; the
  // reader must still convert them correctly (through its staging path).
  const std::vector<float> vals = {1.5f, -2.25f, 0.0009765625f, 65504.f};
  std::string data(vals.size() * 2, '\0');
  for (size_t i = 0; i < vals.size(); ++i) {
    uint16_t h = f32_to_f16(vals[i]);
    std::memcpy(&data[2 * i], &h, 2);
  }
  std::string f32_data(vals.size() * 4, '\0');
  std::memcpy(f32_data.data(), vals.data(), f32_data.size());
  std::string header = R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
                       R"("f":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}})";
  if (header.size() % 2 == 0) header += " ";  // odd length: nothing is even 2-byte aligned
  const SafetensorsReader r = reader_of_bytes(make_file(header, data + f32_data), "odd.st");
  std::vector<float> got(4);
  r.read_as(*r.find("h"), DType::F32, got.data());
  EXPECT_EQ(got, vals);
  std::vector<uint16_t> bf(4);
  r.read_as(*r.find("f"), DType::BF16, bf.data());
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(bf[i], f32_to_bf16(vals[i]));
}

TEST(SafetensorsReader, IntegerTensorsReadRawButDoNotConvert) {
  const std::vector<int32_t> ids = {7, -1, 123456};
  std::string data(12, '\0');
  std::memcpy(data.data(), ids.data(), 12);
  const SafetensorsReader r = reader_of_bytes(
      make_file(R"({"ids":{"dtype":"I32","shape":[3],"data_offsets":[0,12]}})", data), "ints.st");
  std::vector<int32_t> got(3);
  r.read_raw(*r.find("ids"), got.data());
  EXPECT_EQ(got, ids);
  std::fill(got.begin(), got.end(), 0);
  r.read_as(*r.find("ids"), DType::I32, got.data());
  EXPECT_EQ(got, ids);
  std::vector<float> f(3);
  expect_error([&] { r.read_as(*r.find("ids"), DType::F32, f.data()); },
               {"ints.st", "tensor 'ids'", "cannot convert stored I32 to F32"});
}

// ---------------------------------------------------------------- malformed input

TEST(SafetensorsMalformed, EachProblemIsNamed) {
  const std::string four(4, '\0'), twelve(12, '\0');
  struct Case {
    const char* what;
    std::string bytes;
    std::vector<std::string> needles;
  };
  std::string huge_len(8, '\xff');
  huge_len += "{}";
  const std::vector<Case> cases = {
      {"truncated", "abc", {"too short (3 bytes)"}},
      {"header past EOF",
       make_file("{}", "").substr(0, 8) + "{",
       {"header length 2", "past the end"}},
      {"header length huge", huge_len, {"header length 18446744073709551615", "past the end"}},
      {"bad JSON", make_file(R"({"a": {"dtype": )", ""), {"not valid JSON"}},
      {"not an object", make_file("[1, 2]", ""), {"must be a JSON object"}},
      {"offsets out of range",
       make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four),
       {"tensor 'w'", "outside the data block (4 bytes)"}},
      {"overlap",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 twelve),
       {"tensor 'b'", "overlap tensor 'a'"}},
      {"contained overlap",
       make_file(R"({"big":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                 R"("small":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}})",
                 twelve),
       {"tensor 'small'", "overlap tensor 'big'"}},
      {"wrong byte count",
       make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", twelve),
       {"tensor 'w'", "hold 8 bytes", "needs 12 bytes"}},
      {"unknown dtype",
       make_file(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", four),
       {"tensor 'w'", "unsupported dtype 'F8_E4M3'"}},
      {"alias is not a safetensors dtype",
       make_file(R"({"w":{"dtype":"float32","shape":[1],"data_offsets":[0,4]}})", four),
       {"tensor 'w'", "unsupported dtype 'float32'"}},
      {"negative dim",
       make_file(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,4]}})", four),
       {"tensor 'w'", "negative dimension"}},
      {"numel overflow",
       make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
                 four),
       {"tensor 'w'", "overflows"}},
      {"byte count overflow",
       make_file(R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,4]}})",
                 four),
       {"tensor 'w'", "overflows the byte count"}},
      {"missing shape",
       make_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", four),
       {"tensor 'w'", "missing 'shape'"}},
      {"fractional dim",
       make_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", four),
       {"tensor 'w'", "'shape' must be a list of non-negative integers"}},
      {"one offset",
       make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", four),
       {"tensor 'w'", "'data_offsets' must be [begin, end]"}},
      {"negative offset",
       make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", four),
       {"tensor 'w'", "'data_offsets' must be [begin, end]"}},
      {"reversed offsets",
       make_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", four),
       {"tensor 'w'", "end before they begin"}},
      {"entry not an object", make_file(R"({"w": 5})", ""), {"tensor 'w'", "must be an object"}},
      {"metadata value not a string",
       make_file(R"({"__metadata__":{"k":1}})", ""),
       {"'__metadata__' key 'k'", "string value"}},
      {"duplicate name",
       make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                 four),
       {"tensor 'w'", "appears twice"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string label = std::string("case-") + c.what + ".safetensors";
    try {
      reader_of_bytes(c.bytes, label);
      ADD_FAILURE() << "expected ftune::Error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(label + ": ", 0), 0u) << msg;  // every message starts with the file
      for (const auto& n : c.needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
    }
  }
}

TEST_F(SafetensorsDir, TruncatedRealFileIsRejected) {
  const std::string bytes = read_file(fixture("small.safetensors"));
  const std::string path = dir_ + "/cut.safetensors";
  write_file_atomic(path, bytes.substr(0, bytes.size() - 5));
  // The last tensor in the fixture is the F16 lm_head; its bytes are what was cut.
  expect_error([&] { SafetensorsReader::open(path); },
               {path, "tensor 'lm_head.weight'", "outside the data block"});
  write_file_atomic(path, bytes.substr(0, 100));  // cut inside the header
  expect_error([&] { SafetensorsReader::open(path); }, {path, "past the end"});
  expect_error([&] { SafetensorsReader::open(dir_ + "/absent.safetensors"); },
               {dir_ + "/absent.safetensors", "No such file"});
}

// ---------------------------------------------------------------- hostile input (issue #7)
// One test per limit the reader enforces on a file it does not trust.

// Claims to be `size` bytes but holds only the 8-byte length; any other read fails the test, so
// a check that runs after reading the header would be caught.
class LengthOnlySource final : public ByteSource {
 public:
  LengthOnlySource(uint64_t size, uint64_t header_len) : size_(size), len_(header_len) {}
  size_t size() const override { return size_; }
  void read(size_t offset, void* dst, size_t n) const override {
    if (offset != 0 || n != 8) {
      ADD_FAILURE() << "read of " << n << " bytes at " << offset << " before the length check";
      throw Error("unexpected read");
    }
    auto* b = static_cast<uint8_t*>(dst);
    for (int i = 0; i < 8; ++i) b[i] = uint8_t(len_ >> (8 * i));
  }
  const std::string& label() const override { return label_; }

 private:
  size_t size_;
  uint64_t len_;
  std::string label_ = "huge.safetensors";
};

TEST(SafetensorsLimits, HeaderLengthIsCappedBeforeAnythingIsRead) {
  // A 200 MB file whose header claims 150 MB: within the file, over the 100 MB cap.
  expect_error(
      [] { SafetensorsReader(std::make_unique<LengthOnlySource>(200u << 20, 150u << 20)); },
      {"huge.safetensors", "header length 157286400", "over the 100 MB limit"});
  // Exactly at the cap passes both length checks and goes on to read the header.
  struct AtCap final : public ByteSource {
    bool* header_read;
    std::string name = "cap.safetensors";
    explicit AtCap(bool* flag) : header_read(flag) {}
    size_t size() const override { return (100u << 20) + 8; }
    void read(size_t offset, void* dst, size_t n) const override {
      if (offset != 0) {
        *header_read = true;
        throw Error("stop");
      }
      for (int i = 0; i < 8; ++i)
        static_cast<uint8_t*>(dst)[i] = uint8_t((uint64_t(100) << 20) >> (8 * i));
    }
    const std::string& label() const override { return name; }
  };
  bool header_read = false;
  expect_error([&] { SafetensorsReader r(std::make_unique<AtCap>(&header_read)); }, {"stop"});
  EXPECT_TRUE(header_read);
}

TEST(SafetensorsLimits, OffsetsMustLieInsideTheFile) {
  const std::string four(4, '\0');
  // Empty tensors own no bytes but still may not point past the data block.
  expect_error(
      [&] {
        reader_of_bytes(
            make_file(R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})", four), "e.st");
      },
      {"e.st", "tensor 'e'", "outside the data block (4 bytes)"});
  // Offsets near 2^64: end - begin matches the byte count, and begin + size would wrap.
  expect_error(
      [&] {
        reader_of_bytes(make_file(R"({"w":{"dtype":"F32","shape":[1],)"
                                  R"("data_offsets":[18446744073709551612,18446744073709551615]}})",
                                  four),
                        "wrap.st");
      },
      {"wrap.st", "tensor 'w'", "outside the data block"});
}

TEST(SafetensorsLimits, TensorsMayNotOverlap) {
  const std::string eight(8, '\0');
  expect_error(
      [&] {
        reader_of_bytes(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                                  R"("b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})",
                                  eight),
                        "same.st");
      },
      {"same.st", "overlap tensor"});
  // Adjacent ranges and empty tensors anywhere inside are fine.
  const SafetensorsReader r =
      reader_of_bytes(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                eight),
                      "ok.st");
  EXPECT_EQ(r.tensors().size(), 3u);
}

TEST(SafetensorsLimits, ByteCountMustMatchDtypeTimesShape) {
  const std::string sixteen(16, '\0');
  // 16 bytes: right for F32 [4] and F64 [2], wrong for F64 [4] and BF16 [4].
  EXPECT_NO_THROW(reader_of_bytes(
      make_file(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", sixteen), "ok.st"));
  expect_error(
      [&] {
        reader_of_bytes(
            make_file(R"({"w":{"dtype":"F64","shape":[4],"data_offsets":[0,16]}})", sixteen),
            "f64.st");
      },
      {"f64.st", "hold 16 bytes", "F64 [4] needs 32 bytes"});
  expect_error(
      [&] {
        reader_of_bytes(
            make_file(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", sixteen),
            "bf16.st");
      },
      {"bf16.st", "hold 16 bytes", "BF16 [4] needs 8 bytes"});
}

TEST(SafetensorsLimits, SizeArithmeticCannotOverflow) {
  const std::string four(4, '\0');
  // A dimension that does not fit int64.
  expect_error(
      [&] {
        reader_of_bytes(
            make_file(R"({"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}})",
                      four),
            "dim.st");
      },
      {"dim.st", "overflows the element count"});
  // numel * 4 wraps to exactly 4 bytes in 64 bits: must be an overflow, not a match.
  expect_error(
      [&] {
        reader_of_bytes(
            make_file(R"({"w":{"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,4]}})",
                      four),
            "wrap.st");
      },
      {"wrap.st", "overflows the byte count"});
  // A zero dimension makes any other dimension harmless.
  const SafetensorsReader r = reader_of_bytes(
      make_file(R"({"w":{"dtype":"F32","shape":[0,4611686018427387904],"data_offsets":[0,0]}})",
                ""),
      "zero.st");
  EXPECT_EQ(r.find("w")->numel(), 0);
}

TEST(SafetensorsLimits, DeepJsonIsRefusedNotACrash) {
  // Printing a value 1,000,000 levels deep for the error message used to overflow the stack.
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  expect_error(
      [&] {
        reader_of_bytes(
            make_file(R"({"w":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,0]}})", ""),
            "deep.st");
      },
      {"deep.st", "nests JSON more than 512 levels"});
  // 512 levels is still parsed (and then refused for what it is, with a short message).
  const std::string ok = std::string(510, '[') + std::string(510, ']');
  try {
    reader_of_bytes(
        make_file(R"({"w":{"dtype":"F32","shape":)" + ok + R"(,"data_offsets":[0,0]}})", ""),
        "ok.st");
    ADD_FAILURE() << "expected ftune::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'shape' must be a list of non-negative integers"), std::string::npos)
        << msg;
    EXPECT_LT(msg.size(), 300u) << "the value is quoted in full";
  }
}

TEST_F(SafetensorsDir, MappedFilesAreReadOnly) {
  float v[4] = {1, 2, 3, 4};
  SafetensorsWriter w;
  w.add("v", {4}, v, DType::F32, DType::F32);
  const std::string path = dir_ + "/ro.safetensors";
  w.write(path);
  const auto src = open_mapped_file(path);
  const auto addr = reinterpret_cast<uintptr_t>(src->data());
  // /proc/self/maps lists each mapping as "start-end perms offset dev inode path".
  const std::string maps = read_file("/proc/self/maps");
  bool found = false;
  for (size_t pos = 0; pos < maps.size();) {
    const size_t eol = maps.find('\n', pos);
    const std::string line = maps.substr(pos, eol - pos);
    pos = eol == std::string::npos ? maps.size() : eol + 1;
    unsigned long lo = 0, hi = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
    if (addr < lo || addr >= hi) continue;
    found = true;
    EXPECT_EQ(perms[1], '-') << "mapping is writable: " << line;
    EXPECT_NE(line.find("ro.safetensors"), std::string::npos) << line;
  }
  EXPECT_TRUE(found) << "no mapping holds " << std::hex << addr;
}

TEST(SafetensorsLimits, ReadAsRefusesATensorOfAnotherFile) {
  // A TensorInfo whose shape needs more bytes than its range would make the conversion read
  // past the tensor; it is an internal error, not an out-of-bounds read.
  const SafetensorsReader r = reader_of_bytes(
      make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
      "one.st");
  TensorInfo forged = *r.find("w");
  forged.shape = {1 << 20};
  std::vector<double> out(1 << 20);
  expect_error([&] { r.read_as(forged, DType::F64, out.data()); },
               {"internal error", "does not belong to one.st"});
}

TEST_F(SafetensorsDir, IndexLimits) {
  float one = 1.f;
  SafetensorsWriter s1;
  s1.add("a", {1}, &one, DType::F32, DType::F32);
  s1.write(dir_ + "/s1.safetensors");
  const std::string index = dir_ + "/model.safetensors.index.json";
  // A NUL inside the name would make open(2) load "s1.safetensors" for "s1.safetensors\0x".
  write_file_atomic(index, R"({"weight_map": {"a": "s1.safetensors\u0000x"}})");
  expect_error([&] { WeightStore::open_dir(dir_); }, {index, "not a file inside"});
  // Deep nesting, as for headers.
  write_file_atomic(index, R"({"weight_map": {"a": )" + std::string(100000, '[') +
                               std::string(100000, ']') + "}}");
  expect_error([&] { WeightStore::open_dir(dir_); }, {index, "nested more than 512 levels"});
  // Over 100 MB: refused from its size alone (a sparse file, so the test writes nothing).
  ASSERT_EQ(::truncate(index.c_str(), (100 << 20) + 1), 0);
  expect_error([&] { WeightStore::open_dir(dir_); }, {index, "over the 100 MB limit"});
}

// The same kind of checks on the FTENC001 header, which is parsed before it is authenticated.
std::string encrypted_file(const std::string& header, uint64_t plaintext_bytes) {
  std::string out = "FTENC001";
  for (int i = 0; i < 8; ++i) out += char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + std::string(plaintext_bytes + 16, '\0');
}

TEST_F(SafetensorsDir, EncryptedHeaderLimits) {
  WeightKey key;
  key.origin = "test key";
  const std::string path = dir_ + "/w.safetensors";
  const std::string good_rest =
      R"("nonce":"000000000000000000000000","plaintext_bytes":0,"cipher":"AES-256-GCM"})";
  // key_id is echoed in messages: an escape sequence in it is refused, not printed.
  write_file_atomic(path,
                    encrypted_file(R"({"key_id":"\u001b[2J\u001b[31mabcdefg",)" + good_rest, 0));
  expect_error([&] { SafetensorsReader::open(path, &key); },
               {path, "'key_id' must be 16 hex characters"});
  write_file_atomic(path, encrypted_file("{\"key_id\":" + std::string(100000, '[') +
                                             std::string(100000, ']') + "," + good_rest,
                                         0));
  expect_error([&] { read_encrypted_header(path); }, {path, "nested more than 512 levels"});
  // The header length is checked against the file and the 100 MB cap before any allocation.
  std::string huge = "FTENC001";
  for (int i = 0; i < 8; ++i) huge += char(0xff);
  write_file_atomic(path, huge + std::string(32, '\0'));
  expect_error([&] { read_encrypted_header(path); }, {path, "header length field"});
  // plaintext_bytes must describe the file exactly.
  write_file_atomic(path, encrypted_file(R"({"key_id":"0123456789abcdef",)" + good_rest, 0) + "x");
  expect_error([&] { read_encrypted_header(path); }, {path, "unexpected bytes"});
}

TEST(SafetensorsWriter, RejectsBadTensors) {
  float x[4] = {};
  int32_t ids[2] = {};
  SafetensorsWriter w;
  w.add("x", {4}, x, DType::F32, DType::BF16);
  expect_error([&] { w.add("x", {4}, x, DType::F32, DType::F32); }, {"tensor 'x'", "added twice"});
  expect_error([&] { w.add("ids", {2}, ids, DType::I32, DType::F32); },
               {"tensor 'ids'", "cannot store I32 data as F32"});
  expect_error(
      [&] {
        w.add("neg", {-2, 2}, x, DType::F32, DType::F32);
      },
      {"tensor 'neg'", "negative dimension"});
  expect_error([&] { w.add("__metadata__", {1}, x, DType::F32, DType::F32); }, {"reserved"});
  expect_error([&] { w.add("", {1}, x, DType::F32, DType::F32); }, {"empty tensor name"});
  EXPECT_EQ(w.data_bytes(), 8u);  // the failed adds changed nothing
}

// ---------------------------------------------------------------- atomic writes

TEST_F(SafetensorsDir, FailedWritesLeaveNothingBehind) {
  const std::vector<float> v = ftune::testing::random_vec(1 << 20, 9);
  SafetensorsWriter w;
  w.add("v", {int64_t(v.size())}, v.data(), DType::F32, DType::BF16);

  const std::string missing = dir_ + "/no-such-dir/model.safetensors";
  expect_error([&] { w.write(missing); }, {missing});
  EXPECT_TRUE(listing().empty());

  // Invalid UTF-8 in a name cannot be written as JSON; the existing file must survive.
  const std::string path = dir_ + "/model.safetensors";
  write_file_atomic(path, "previous");
  SafetensorsWriter bad;
  bad.add("bad\xff", {1}, v.data(), DType::F32, DType::F32);
  expect_error([&] { bad.write(path); }, {path, "UTF-8"});
  EXPECT_EQ(read_file(path), "previous");

  // A write that fails halfway through the data: cap the file size so write(2) hits EFBIG.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);  // otherwise the signal kills the process
  struct rlimit small = old_limit;
  small.rlim_cur = 1 << 20;  // the file needs 2 MB + header
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  bool threw = false;
  try {
    w.write(path);
  } catch (const Error& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_file(path), "previous");
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
}

// ---------------------------------------------------------------- sharding + WeightStore

struct ModelTensors {
  std::vector<std::string> names = {"t0", "t1", "t2", "t3", "t4"};
  std::vector<std::vector<int64_t>> shapes = {{10, 10}, {100}, {20, 15}, {5, 5}, {75}};
  std::vector<std::vector<float>> data;
  ModelTensors() {
    for (size_t i = 0; i < names.size(); ++i) {
      int64_t n = 1;
      for (int64_t d : shapes[i]) n *= d;
      data.push_back(ftune::testing::random_vec(size_t(n), 100 + i));
    }
  }
  // Stored as F32, so the sizes are 400, 400, 1200, 100, 300 bytes.
  void add_to(SafetensorsWriter& w) const {
    for (size_t i = 0; i < names.size(); ++i)
      w.add(names[i], shapes[i], data[i].data(), DType::F32, DType::F32);
  }
  void check(const WeightStore& ws) const {
    EXPECT_EQ(ws.names(), names);
    for (size_t i = 0; i < names.size(); ++i) {
      const TensorInfo* t = ws.find(names[i]);
      ASSERT_NE(t, nullptr) << names[i];
      EXPECT_EQ(t->shape, shapes[i]);
      std::vector<float> got(data[i].size());
      ws.read_as(names[i], DType::F32, got.data());
      EXPECT_EQ(got, data[i]) << names[i];
      EXPECT_NE(ws.reader_of(names[i]).find(names[i]), nullptr);
    }
  }
};

TEST_F(SafetensorsDir, ShardedWriteAndReadBack) {
  ModelTensors m;
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  m.add_to(w);
  // Greedy by order with a 800-byte cap: [t0 t1] [t2 (alone: larger than the cap)] [t3 t4].
  write_sharded_model(w, dir_, 800);
  EXPECT_EQ(listing(), (std::vector<std::string>{
                           "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));

  const json index = json::parse(read_file(dir_ + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), w.data_bytes());
  const json want_map = {{"t0", "model-00001-of-00003.safetensors"},
                         {"t1", "model-00001-of-00003.safetensors"},
                         {"t2", "model-00002-of-00003.safetensors"},
                         {"t3", "model-00003-of-00003.safetensors"},
                         {"t4", "model-00003-of-00003.safetensors"}};
  EXPECT_EQ(index["weight_map"], want_map);

  const WeightStore ws = WeightStore::open_dir(dir_);
  ASSERT_EQ(ws.files().size(), 3u);
  for (const SafetensorsReader& r : ws.files()) EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(ws.files()[0].tensors().size(), 2u);
  EXPECT_EQ(ws.files()[1].tensors().size(), 1u);
  m.check(ws);
  expect_error([&] { ws.reader_of("t9"); }, {dir_, "tensor 't9' not found"});
  std::vector<float> sink(1);
  expect_error([&] { ws.read_as("t9", DType::F32, sink.data()); }, {"tensor 't9'"});
  EXPECT_EQ(ws.find("t9"), nullptr);
}

TEST_F(SafetensorsDir, SingleFileWhenItFitsAndLayoutsReplaceEachOther) {
  ModelTensors m;
  SafetensorsWriter w;
  m.add_to(w);
  const size_t total = w.data_bytes();

  write_sharded_model(w, dir_, total);  // exactly fits
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
  m.check(WeightStore::open_dir(dir_));

  write_sharded_model(w, dir_, total - 1);  // one byte short: shards, and the single file goes
  EXPECT_EQ(listing().size(), 3u);
  EXPECT_FALSE(path_exists(dir_ + "/model.safetensors"));
  m.check(WeightStore::open_dir(dir_ + "/"));

  write_sharded_model(w, dir_, 0);  // 0 = never shard; stale shards and index go
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
  m.check(WeightStore::open_dir(dir_));

  expect_error([&] { write_sharded_model(w, dir_ + "/missing", 0); }, {dir_ + "/missing"});
}

TEST_F(SafetensorsDir, WeightStoreErrors) {
  expect_error([&] { WeightStore::open_dir(dir_); },
               {dir_, "model.safetensors", "model.safetensors.index.json"});
  expect_error([&] { WeightStore::open_dir(dir_ + "/nope"); }, {dir_ + "/nope", "does not exist"});

  const std::string index = dir_ + "/model.safetensors.index.json";
  write_file_atomic(index, "{ not json");
  expect_error([&] { WeightStore::open_dir(dir_); }, {index, "not valid JSON"});
  write_file_atomic(index, R"({"metadata": {}})");
  expect_error([&] { WeightStore::open_dir(dir_); }, {index, "weight_map"});

  write_file_atomic(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})");
  expect_error([&] { WeightStore::open_dir(dir_); },
               {index, "model-00001-of-00002.safetensors", "does not exist", "tensor 'a'"});
  write_file_atomic(index, R"({"weight_map": {"a": "../elsewhere.safetensors"}})");
  expect_error([&] { WeightStore::open_dir(dir_); }, {index, "not a file inside"});

  // Two shards that both hold tensor "a".
  float one = 1.f, two = 2.f;
  SafetensorsWriter s1, s2;
  s1.add("a", {1}, &one, DType::F32, DType::F32);
  s2.add("a", {1}, &two, DType::F32, DType::F32);
  s2.add("b", {1}, &two, DType::F32, DType::F32);
  s1.write(dir_ + "/s1.safetensors");
  s2.write(dir_ + "/s2.safetensors");
  write_file_atomic(index, R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  expect_error([&] { WeightStore::open_dir(dir_); },
               {"tensor 'a'", "s1.safetensors", "s2.safetensors", "appears in both"});

  // The index points at a file that lacks the tensor.
  write_file_atomic(index, R"({"weight_map": {"a": "s1.safetensors", "c": "s1.safetensors"}})");
  expect_error([&] { WeightStore::open_dir(dir_); },
               {index, "tensor 'c'", "s1.safetensors", "does not contain it"});

  // A corrupt shard is reported with the shard's own path.
  write_file_atomic(dir_ + "/s1.safetensors", "garbage!garbage!");
  write_file_atomic(index, R"({"weight_map": {"a": "s1.safetensors"}})");
  expect_error([&] { WeightStore::open_dir(dir_); }, {dir_ + "/s1.safetensors", "header length"});
}

// ---------------------------------------------------------------- inspect

TEST_F(SafetensorsDir, InspectModelDirectory) {
  write_file_atomic(dir_ + "/config.json",
                    R"({"model_type": "llama", "hidden_size": 1024, "num_hidden_layers": 2,
                        "vocab_size": 1536})");
  const std::vector<std::pair<std::string, std::vector<int64_t>>> specs = {
      {"model.embed_tokens.weight", {1536, 1024}},
      {"model.layers.0.input_layernorm.weight", {1024}},
      {"model.norm.weight", {1024}},
  };
  const auto embed = ftune::testing::random_vec(1536 * 1024, 4);
  SafetensorsWriter w;
  w.add(specs[0].first, specs[0].second, embed.data(), DType::F32, DType::BF16);
  w.add(specs[1].first, specs[1].second, embed.data(), DType::F32, DType::F32);
  w.add(specs[2].first, specs[2].second, embed.data(), DType::F32, DType::F32);
  write_sharded_model(w, dir_, 0);

  const std::string text = inspect_path(dir_);
  for (const std::string& s : {std::string("llama"), std::string("hidden 1024"),
                               std::string("layers 2"), std::string("[1536, 1024]")})
    EXPECT_NE(text.find(s), std::string::npos) << s << "\n" << text;
  uint64_t params = 0;
  for (const auto& [name, shape] : specs) {
    EXPECT_NE(text.find(name), std::string::npos) << name;
    params += uint64_t(shape.size() == 2 ? shape[0] * shape[1] : shape[0]);
  }
  EXPECT_NE(text.find("tensors:    3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("(" + std::to_string(params) + ")"), std::string::npos) << text;
  EXPECT_NE(text.find("1.57M"), std::string::npos) << text;  // 1,574,912 parameters
  EXPECT_NE(text.find("(" + std::to_string(w.data_bytes()) + ")"), std::string::npos) << text;
  EXPECT_NE(text.find("BF16 1 tensor"), std::string::npos) << text;
  EXPECT_NE(text.find("F32 2 tensors"), std::string::npos) << text;

  // Sharded directories show which shard holds each tensor.
  write_sharded_model(w, dir_, 8192);  // embed alone, the two norms together
  const std::string sharded = inspect_path(dir_);
  EXPECT_NE(sharded.find("shards:     2"), std::string::npos) << sharded;
  EXPECT_NE(sharded.find("model-00002-of-00002.safetensors"), std::string::npos) << sharded;
}

TEST(Inspect, SingleFileAndErrors) {
  const std::string text = inspect_path(fixture("small.safetensors"));
  const json expected = json::parse(read_file(fixture("small.expected.json")));
  uint64_t params = 0;
  for (const auto& [name, e] : expected["tensors"].items()) {
    EXPECT_NE(text.find(name), std::string::npos) << name;
    params += e["values"].size();
  }
  EXPECT_NE(text.find("producer=ftune-fixture"), std::string::npos) << text;
  EXPECT_NE(text.find("tensors:    " + std::to_string(expected["tensors"].size()) + "\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("parameters: " + std::to_string(params) + " (" + std::to_string(params)),
            std::string::npos)
      << text;
  expect_error([&] { inspect_path("/nonexistent/model"); },
               {"/nonexistent/model", "does not exist"});
}

}  // namespace
}  // namespace ftune
