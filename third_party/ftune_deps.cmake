# Finds every external dependency from the system (Debian packages). Nothing is vendored.
# FTUNE_PORTABLE links them statically (and replaces OpenBLAS by the built-in GEMM) so a build
# tree can be carried to a machine without Debian's -dev packages (the GPU check machine).
if(FTUNE_PORTABLE)
  set(OPENSSL_USE_STATIC_LIBS TRUE)
endif()
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)
if(FTUNE_TESTS)
  find_package(GTest REQUIRED)
endif()

# OpenMPI for CPU ranks (optional: without it ftune runs one process).
add_library(ftune_mpi INTERFACE)
if(NOT FTUNE_PORTABLE)
  find_package(MPI COMPONENTS C QUIET)
  if(MPI_C_FOUND)
    target_link_libraries(ftune_mpi INTERFACE MPI::MPI_C)
    # The C API only: mpi.h would otherwise pull in the deprecated C++ bindings.
    target_compile_definitions(ftune_mpi INTERFACE FTUNE_HAVE_MPI=1 OMPI_SKIP_MPICXX=1
                                                   MPICH_SKIP_MPICXX=1)
    message(STATUS "ftune: MPI ${MPI_C_VERSION} (CPU ranks)")
  else()
    message(STATUS "ftune: MPI not found (Debian: libopenmpi-dev); single-process runs only")
  endif()
endif()

add_library(ftune_yaml INTERFACE)
add_library(ftune_pcre2 INTERFACE)
if(FTUNE_PORTABLE)
  find_library(FTUNE_YAML_STATIC libyaml-cpp.a REQUIRED)
  find_library(FTUNE_PCRE2_STATIC libpcre2-8.a REQUIRED)
  get_target_property(_yaml_inc yaml-cpp INTERFACE_INCLUDE_DIRECTORIES)
  target_include_directories(ftune_yaml INTERFACE ${_yaml_inc})
  target_link_libraries(ftune_yaml INTERFACE ${FTUNE_YAML_STATIC})
  target_compile_definitions(ftune_pcre2 INTERFACE PCRE2_STATIC)
  target_link_libraries(ftune_pcre2 INTERFACE ${FTUNE_PCRE2_STATIC})
  # The built-in GEMM stands in for OpenBLAS (36 MB as a shared library).
  add_library(ftune_openblas INTERFACE)
  target_compile_definitions(ftune_openblas INTERFACE FTUNE_NO_BLAS=1)
  message(STATUS "ftune: portable build (static deps, built-in GEMM instead of OpenBLAS)")
  return()
endif()
target_link_libraries(ftune_yaml INTERFACE yaml-cpp)

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
target_link_libraries(ftune_pcre2 INTERFACE PkgConfig::PCRE2)

