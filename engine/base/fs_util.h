// Small filesystem helpers whose point is durability: nothing ftune writes is ever seen
// half-written. Writers go to "<path>.tmp.<pid>", fsync, rename, then fsync the directory.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace ftune {

// Writes bytes to path atomically. Throws ftune::Error naming the path (and errno text).
void write_file_atomic(const std::string& path, std::string_view bytes);
// Streams into a temp file through `fill(fd)` (which writes with write_all), then fsync + rename.
void write_file_atomic_with(const std::string& path, const std::function<void(int fd)>& fill);
// write(2) loop that handles short writes; throws naming `what` on error (ENOSPC included).
void write_all(int fd, const void* data, size_t n, const std::string& what);
void fsync_dir(const std::string& dir);
std::string read_file(const std::string& path);  // throws ftune::Error naming the path
bool path_exists(const std::string& path);
// Lowercase hex SHA-256 of a file's contents / of bytes (OpenSSL).
std::string sha256_file(const std::string& path);
std::string sha256_hex(std::string_view bytes);

}  // namespace ftune
