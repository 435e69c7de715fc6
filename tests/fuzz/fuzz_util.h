// Shared by the fuzz targets. Each target feeds the real parser through its real entry point;
// parsers that take a path read the input from a scratch file on tmpfs, so no parser needed a
// second, in-memory code path that could drift from the one users run.
//
// Contract of every target: malformed input may throw ftune::Error (the parser refusing it with
// a message); anything else escaping (std::bad_alloc, nlohmann or yaml-cpp exceptions, a
// sanitizer report, a crash) is a bug that the fuzzer reports.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

namespace ftune::fuzz {

// A private directory, removed at exit: /dev/shm when there is one (no disk I/O per input).
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    struct stat st;
    std::string tmpl = (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) ? "/dev/shm" : "/tmp";
    tmpl += "/ftune-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
      std::perror("ftune fuzz: mkdtemp");
      std::abort();
    }
    static std::string keep = tmpl;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return tmpl;
  }();
  return dir;
}

// Writes bytes to <scratch>/<name> (plainly: atomic renames would only slow the loop) and
// returns the path.
inline std::string scratch_file(const std::string& name, std::string_view bytes) {
  const std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::perror(("ftune fuzz: cannot write " + path).c_str());
    std::abort();
  }
  return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace ftune::fuzz
