// Durable file writes: the destination is either the old file or the complete new one, never a
// mix, and no temp file survives a failure.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/byte_source.h"
#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

using testing::expect_error;

std::string pattern_bytes(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = char(x >> 24);
  }
  return s;
}

class FsUtil : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = ftune::testing::make_temp_dir("fsutil"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(FsUtil, AtomicWriteRoundTripsAndOverwrites) {
  const std::string path = dir_ + "/a.bin";
  const std::string first = pattern_bytes(100000, 1);
  write_file_atomic(path, first);
  EXPECT_EQ(read_file(path), first);
  const std::string second = "short";
  write_file_atomic(path, second);
  EXPECT_EQ(read_file(path), second);
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"a.bin"});

  write_file_atomic(dir_ + "/empty", "");
  EXPECT_EQ(read_file(dir_ + "/empty"), "");
  EXPECT_EQ(fs::file_size(dir_ + "/empty"), 0u);
}

TEST_F(FsUtil, StreamedWriteUsesTheGivenFd) {
  const std::string path = dir_ + "/streamed";
  std::string expect;
  write_file_atomic_with(path, [&](int fd) {
    for (uint32_t i = 0; i < 20; ++i) {
      std::string part = pattern_bytes(5000 + i, i);
      write_all(fd, part.data(), part.size(), path);
      expect += part;
    }
    // The destination must not appear before the fill is finished.
    EXPECT_FALSE(path_exists(path));
    EXPECT_TRUE(path_exists(path + ".tmp." + std::to_string(getpid())));
  });
  EXPECT_EQ(read_file(path), expect);
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"streamed"});
}

TEST_F(FsUtil, MissingDirectoryFailsCleanly) {
  const std::string path = dir_ + "/no/such/dir/file.bin";
  expect_error([&] { write_file_atomic(path, "data"); }, {path, "No such file or directory"});
  EXPECT_TRUE(list_dir(dir_).empty());
}

TEST_F(FsUtil, ThrowingFillLeavesDestinationUntouched) {
  const std::string path = dir_ + "/keep.txt";
  write_file_atomic(path, "original contents");
  // Both ftune errors and foreign exceptions must clean up and propagate unchanged.
  expect_error(
      [&] {
        write_file_atomic_with(path, [&](int fd) {
          write_all(fd, "partial new", 11, path);
          throw Error("fill failed on purpose");
        });
      },
      {"fill failed on purpose"});
  EXPECT_THROW(write_file_atomic_with(path,
                                      [&](int fd) {
                                        write_all(fd, "xx", 2, path);
                                        throw std::runtime_error("other");
                                      }),
               std::runtime_error);
  EXPECT_EQ(read_file(path), "original contents");
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"keep.txt"});
}

TEST_F(FsUtil, RenameOntoDirectoryFailsWithoutLeftovers) {
  const std::string path = dir_ + "/sub";
  fs::create_directory(path);
  fs::create_directory(path + "/inner");  // non-empty, so rename(2) must refuse it
  expect_error([&] { write_file_atomic(path, "x"); }, {path});
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"sub"});
  EXPECT_TRUE(fs::is_directory(path + "/inner"));
}

TEST(FsUtilWriteAll, DiskFullNamesTheTarget) {
  // /dev/full fails every write with ENOSPC: exactly the disk-full path.
  int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << "this test needs /dev/full";
  char buf[64] = {};
  expect_error([&] { write_all(fd, buf, sizeof buf, "/models/out.safetensors"); },
               {"disk full", "/models/out.safetensors"});
  ::close(fd);
}

TEST(FsUtilWriteAll, BadFdIsAnError) {
  expect_error([&] { write_all(-1, "x", 1, "target-name"); }, {"target-name"});
}

void ignore_signal(int) {}

TEST(FsUtilWriteAll, SurvivesShortWritesAndSignals) {
  // A pipe holds only 64 KiB, so a large write is cut short and, with a signal handler that
  // does not restart syscalls, also interrupted: write_all must still deliver every byte.
  struct sigaction sa = {}, old = {};
  sa.sa_handler = ignore_signal;
  sa.sa_flags = 0;  // no SA_RESTART
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);

  int p[2];
  ASSERT_EQ(pipe(p), 0);
  const std::string data = pattern_bytes(8 << 20, 99);
  std::atomic<bool> done{false};
  std::string error;
  pthread_t writer_handle{};
  std::atomic<bool> started{false};
  std::thread writer([&] {
    writer_handle = pthread_self();
    started = true;
    try {
      write_all(p[1], data.data(), data.size(), "pipe");
    } catch (const std::exception& e) {
      error = e.what();
    }
    ::close(p[1]);
    done = true;
  });
  while (!started) std::this_thread::yield();
  std::thread pester([&] {
    while (!done) {
      pthread_kill(writer_handle, SIGUSR1);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::string got;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    ASSERT_GE(n, 0);
    if (n == 0) break;
    got.append(buf, size_t(n));
  }
  pester.join();  // first: it must not signal a thread that has been joined
  writer.join();
  ::close(p[0]);
  sigaction(SIGUSR1, &old, nullptr);
  EXPECT_EQ(error, "");
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
}

TEST_F(FsUtil, ReadFileErrorsNameThePath) {
  const std::string missing = dir_ + "/missing.json";
  expect_error([&] { read_file(missing); }, {missing, "No such file"});
  expect_error([&] { read_file(dir_); }, {dir_, "directory"});
}

TEST_F(FsUtil, PathExists) {
  EXPECT_TRUE(path_exists(dir_));
  EXPECT_FALSE(path_exists(dir_ + "/nope"));
  write_file_atomic(dir_ + "/f", "1");
  EXPECT_TRUE(path_exists(dir_ + "/f"));
}

TEST_F(FsUtil, FsyncDir) {
  EXPECT_NO_THROW(fsync_dir(dir_));
  expect_error([&] { fsync_dir(dir_ + "/gone"); }, {dir_ + "/gone"});
}

TEST(Sha256, PublishedTestVectors) {
  // FIPS 180-2 examples.
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST_F(FsUtil, Sha256FileStreamsLargeFiles) {
  // One million 'a' is the long FIPS vector; the file spans more than one read chunk.
  const std::string path = dir_ + "/million_a";
  write_file_atomic(path, std::string(1000000, 'a'));
  EXPECT_EQ(sha256_file(path), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

  const std::string big = pattern_bytes((3 << 20) + 12345, 5);
  write_file_atomic(dir_ + "/big", big);
  EXPECT_EQ(sha256_file(dir_ + "/big"), sha256_hex(big));
  EXPECT_NE(sha256_hex(big), sha256_hex(big.substr(1)));
  expect_error([&] { sha256_file(dir_ + "/absent"); }, {dir_ + "/absent"});
}

// ByteSource lives with the file helpers: all three kinds must agree on contents and bounds.
TEST_F(FsUtil, ByteSourcesAgree) {
  const std::string path = dir_ + "/src.bin";
  const std::string bytes = pattern_bytes(70000, 3);
  write_file_atomic(path, bytes);
  std::vector<std::unique_ptr<ByteSource>> sources;
  sources.push_back(open_mapped_file(path));
  sources.push_back(open_plain_file(path));
  sources.push_back(open_memory(bytes, path));
  for (const auto& s : sources) {
    EXPECT_EQ(s->size(), bytes.size());
    EXPECT_EQ(s->label(), path);
    std::string got(1000, '\0');
    s->read(65000, got.data(), got.size());
    EXPECT_EQ(got, bytes.substr(65000, 1000));
    s->read(bytes.size(), got.data(), 0);  // empty read at the end is fine
    expect_error([&] { s->read(bytes.size() - 10, got.data(), 11); }, {path, "past the end"});
    // offset + n wraps around size_t; must still be caught.
    expect_error([&] { s->read(5, got.data(), SIZE_MAX - 2); }, {path});
  }
  ASSERT_NE(sources[0]->data(), nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(sources[0]->data()), bytes.size()), bytes);
  EXPECT_EQ(sources[1]->data(), nullptr);

  write_file_atomic(dir_ + "/zero", "");
  auto empty = open_mapped_file(dir_ + "/zero");
  EXPECT_EQ(empty->size(), 0u);
  EXPECT_NE(empty->data(), nullptr);

  expect_error([&] { open_mapped_file(dir_ + "/nope"); }, {dir_ + "/nope", "No such file"});
  expect_error([&] { open_plain_file(dir_ + "/nope"); }, {dir_ + "/nope", "No such file"});
  expect_error([&] { open_mapped_file(dir_); }, {dir_, "not a regular file"});
}

}  // namespace
}  // namespace ftune
