# Finds every external dependency from the system (Debian packages). Nothing is vendored.
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)

# OpenBLAS, preferring Debian's OpenMP build: it shares our OpenMP thread pool, where the
# pthread build's workers fight our OpenMP workers for the cores.
find_library(FTUNE_OPENBLAS_LIB openblas NO_DEFAULT_PATH
             PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
find_path(FTUNE_OPENBLAS_INCLUDE cblas.h NO_DEFAULT_PATH
          PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
if(NOT FTUNE_OPENBLAS_LIB OR NOT FTUNE_OPENBLAS_INCLUDE)
  message(WARNING "ftune: the OpenMP build of OpenBLAS was not found (Debian: "
                  "libopenblas-openmp-dev); using whichever OpenBLAS is installed")
  unset(FTUNE_OPENBLAS_LIB CACHE)
  unset(FTUNE_OPENBLAS_INCLUDE CACHE)
  find_library(FTUNE_OPENBLAS_LIB openblas REQUIRED)
  find_path(FTUNE_OPENBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas openblas-openmp openblas-pthread
            REQUIRED)
endif()
add_library(ftune_openblas INTERFACE IMPORTED)
set_target_properties(ftune_openblas PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${FTUNE_OPENBLAS_INCLUDE}"
  INTERFACE_LINK_LIBRARIES "${FTUNE_OPENBLAS_LIB}")
message(STATUS "ftune: OpenBLAS ${FTUNE_OPENBLAS_LIB}")

# PCRE2 (8-bit, UTF mode) for the tokenizer's pre-tokenization regexes.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

if(FTUNE_TESTS)
  find_package(GTest REQUIRED)
endif()
