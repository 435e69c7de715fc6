# Finds every external dependency from the system (Debian packages). Nothing is vendored.
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)

# OpenBLAS ships a plain variables file on Debian; wrap it in an imported target.
find_package(OpenBLAS CONFIG QUIET)
if(OpenBLAS_FOUND)
  add_library(ftune_openblas INTERFACE IMPORTED)
  set_target_properties(ftune_openblas PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${OpenBLAS_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${OpenBLAS_LIBRARIES}")
else()
  find_path(OPENBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas openblas-pthread REQUIRED)
  find_library(OPENBLAS_LIB openblas REQUIRED)
  add_library(ftune_openblas INTERFACE IMPORTED)
  set_target_properties(ftune_openblas PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${OPENBLAS_INCLUDE}"
    INTERFACE_LINK_LIBRARIES "${OPENBLAS_LIB}")
endif()

# PCRE2 (8-bit, UTF mode) for the tokenizer's pre-tokenization regexes.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

if(FTUNE_TESTS)
  find_package(GTest REQUIRED)
endif()
