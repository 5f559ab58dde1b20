# The emulated kernels again under the host sanitizers: our CPU stand-ins for
# compute-sanitizer, which needs a GPU.
#   kernels_racecheck_test  ThreadSanitizer. The emulator runs a block's
#     threads as std::threads and __syncthreads() as a mutex barrier, so a
#     missing barrier or two threads writing one shared or global word is a
#     data race that TSan reports.
#   kernels_memcheck_test   ASan + UBSan. Dynamic shared memory is a vector of
#     exactly the launch's bytes, static __shared__ arrays are globals with
#     redzones, tensors come from malloc: an index past any of them, a
#     misaligned access or an integer overflow stops the test.
# Blocks run one after another, so races between blocks are not seen.
# MINIPUZZLE_KERNEL_SANITIZERS: `race` (the default, in CI: about 1 min of
# compile and 2 of tests on 2 cores), `all` (memcheck too: as much again),
# `off`. Skipped in builds that are already sanitized (a binary takes one of
# TSan and ASan) and where the compiler cannot link the sanitizer runtimes.
set(MINIPUZZLE_KERNEL_SANITIZERS race CACHE STRING "Emulated kernels under host sanitizers: race, all or off")
set_property(CACHE MINIPUZZLE_KERNEL_SANITIZERS PROPERTY STRINGS race all off)
# A cache from before the option took words holds ON or OFF.
if(MINIPUZZLE_KERNEL_SANITIZERS STREQUAL "ON")
  set_property(CACHE MINIPUZZLE_KERNEL_SANITIZERS PROPERTY VALUE race)
elseif(MINIPUZZLE_KERNEL_SANITIZERS STREQUAL "OFF")
  set_property(CACHE MINIPUZZLE_KERNEL_SANITIZERS PROPERTY VALUE off)
endif()
if(NOT MINIPUZZLE_KERNEL_SANITIZERS MATCHES "^(race|all|off)$")
  message(FATAL_ERROR "MINIPUZZLE_KERNEL_SANITIZERS must be race, all or off (got '${MINIPUZZLE_KERNEL_SANITIZERS}')")
endif()
if(MINIPUZZLE_KERNEL_SANITIZERS STREQUAL "off")
  return()
endif()
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize")
  message(STATUS "kernels_racecheck_test / kernels_memcheck_test: skipped (this build is sanitized already)")
  return()
endif()

include(CheckCXXSourceCompiles)
function(minipuzzle_add_kernel_sanitizer name flags env definition)
  separate_arguments(flag_list UNIX_COMMAND "${flags}")
  set(CMAKE_REQUIRED_FLAGS "${flags}")
  set(CMAKE_REQUIRED_LINK_OPTIONS ${flag_list})
  check_cxx_source_compiles("int main() { return 0; }" MINIPUZZLE_CAN_LINK_${name})
  if(NOT MINIPUZZLE_CAN_LINK_${name})
    message(STATUS "${name}: skipped (the compiler cannot link ${flags})")
    return()
  endif()
  add_executable(${name} emulated_kernels_test.cpp)
  target_link_libraries(${name} PRIVATE minipuzzle_core GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    MINIPUZZLE_SOURCE_DIR="${PROJECT_SOURCE_DIR}" MINIPUZZLE_BINARY_DIR="${PROJECT_BINARY_DIR}" ${definition})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/kernels ${PROJECT_SOURCE_DIR}/src
                             ${CUDAToolkit_INCLUDE_DIRS})
  set_target_properties(${name} PROPERTIES UNITY_BUILD OFF)
  # -O1: the sanitizers' advice, and it halves the compile of this large file.
  target_compile_options(${name} PRIVATE ${flag_list} -O1 -fno-omit-frame-pointer -Wno-unknown-pragmas)
  target_link_options(${name} PRIVATE ${flag_list})
  # SsdScanForward and SsdScanBackward run the kernels that
  # SsdScanSoftplusDtForwardAndBackward runs on the same shapes (dt given
  # rather than computed inside): left out here, they would add a minute.
  gtest_discover_tests(${name} TEST_PREFIX "${name}." DISCOVERY_TIMEOUT 120
    TEST_FILTER "-EmulatedKernels.SsdScanForward:EmulatedKernels.SsdScanBackward"
    PROPERTIES LABELS cpu TIMEOUT 900 ENVIRONMENT "${env}")
endfunction()

minipuzzle_add_kernel_sanitizer(kernels_racecheck_test "-fsanitize=thread"
  "TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1" MINIPUZZLE_EMULATOR_UNDER_TSAN=1)
if(MINIPUZZLE_KERNEL_SANITIZERS STREQUAL "all")
  minipuzzle_add_kernel_sanitizer(kernels_memcheck_test
    "-fsanitize=address,undefined -fno-sanitize-recover=undefined"
    "ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:check_initialization_order=1"
    MINIPUZZLE_EMULATOR_UNDER_ASAN=1)
endif()
