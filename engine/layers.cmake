# The engine's layers. Each folder of engine/ (and cuda/) is one layer: a static library that
# names the layers it builds on. The graph is recorded here so that check_layers.cmake can refuse
# an #include that reaches a layer outside a file's dependencies (a lower layer including a
# higher one), at configure time and as the test `layer_includes`.

set_property(GLOBAL PROPERTY FTUNE_LAYER_GRAPH "")

# Records `name` -> DEPS in the graph without building anything (cuda/ builds its own target).
function(ftune_record_layer name)
  cmake_parse_arguments(L "" "" "DEPS" ${ARGN})
  string(REPLACE ";" "," deps "${L_DEPS}")
  set_property(GLOBAL APPEND PROPERTY FTUNE_LAYER_GRAPH "${name}=${deps}")
endfunction()

# ftune_layer(name DEPS lower layers... LINK third-party targets...): engine/<name>/**.cpp as
# the static library ftune_<name>, linked PUBLIC to its lower layers.
function(ftune_layer name)
  cmake_parse_arguments(L "" "" "DEPS;LINK" ${ARGN})
  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${name}/*.cpp)
  add_library(ftune_${name} STATIC ${srcs})
  target_include_directories(ftune_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(ftune_${name} PRIVATE ${FTUNE_WARN} ${FTUNE_CPU_FLAGS})
  set(targets "")
  foreach(d IN LISTS L_DEPS)
    if(d STREQUAL "cuda")
      list(APPEND targets ftune_cuda_glue)  # the CUDA library and FTUNE_HAVE_CUDA, when built
    else()
      list(APPEND targets ftune_${d})
    endif()
  endforeach()
  target_link_libraries(ftune_${name} PUBLIC ${targets} ${L_LINK})
  ftune_record_layer(${name} DEPS ${L_DEPS})
endfunction()

# Checks every include of engine/ and cuda/ against the graph; FATAL_ERROR names each bad one.
function(ftune_check_layers)
  get_property(graph GLOBAL PROPERTY FTUNE_LAYER_GRAPH)
  string(REPLACE ";" " " graph_arg "${graph}")
  set(graph_file ${PROJECT_BINARY_DIR}/layer_graph.txt)
  file(WRITE ${graph_file} "${graph_arg}\n")
  execute_process(COMMAND ${CMAKE_COMMAND} -DROOT=${PROJECT_SOURCE_DIR} -DGRAPH=${graph_file}
                          -P ${PROJECT_SOURCE_DIR}/engine/check_layers.cmake
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(NOTICE "${out}")
    message(FATAL_ERROR "engine/check_layers.cmake refused the includes above")
  endif()
endfunction()
