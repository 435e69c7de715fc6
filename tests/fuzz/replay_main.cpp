// Replays files through a fuzz target's LLVMFuzzerTestOneInput with the normal compiler, so the
// committed seed corpora and crash regressions run in every ctest run (no clang or libFuzzer
// needed). Arguments are files or directories (their regular files, sorted); a missing argument
// is skipped, but replaying nothing at all is a failure so a moved corpus cannot pass silently.
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#if defined(__SANITIZE_ADDRESS__)
#define FTUNE_REPLAY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FTUNE_REPLAY_ASAN 1
#endif
#endif

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
#ifndef FTUNE_REPLAY_ASAN
  // A regression that comes back as runaway allocation (recipe/leading_comma*: yaml-cpp once
  // allocated 20 GB in 3 minutes) must fail this test fast (bad_alloc), not take the machine's
  // memory. ASan reserves terabytes of address space up front, so its builds go without the cap.
  const rlimit cap{8ull << 30, 8ull << 30};
  setrlimit(RLIMIT_AS, &cap);
#endif
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (fs::is_directory(argv[i], ec)) {
      for (const auto& e : fs::directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (fs::is_regular_file(argv[i], ec)) {
      files.push_back(argv[i]);
    }
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "cannot read %s\n", f.c_str());
      return 1;
    }
    std::printf("replay %s (%zu bytes)\n", f.c_str(), bytes.size());
    std::fflush(stdout);  // so a crash names the input that caused it
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  if (files.empty()) {
    std::fprintf(stderr, "no input files found in the given paths\n");
    return 1;
  }
  std::printf("replayed %zu files, none crashed\n", files.size());
  return 0;
}
