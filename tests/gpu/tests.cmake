# The CUDA backend. cuda_nvrtc runs wherever the toolkit is (no GPU needed): every kernel
# template compiles under NVRTC. backend_cpu checks the CPU backend behind backend.h.
# cuda_model compares the CUDA model with the CPU one and skips (exit 77) without a GPU.
add_executable(test_backend_cpu ${CMAKE_CURRENT_LIST_DIR}/test_backend_cpu.c)
target_include_directories(test_backend_cpu PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_backend_cpu PRIVATE pocrt)
add_test(NAME backend_cpu COMMAND test_backend_cpu)
set_tests_properties(backend_cpu PROPERTIES LABELS "unit" TIMEOUT 60)

if(TARGET pocrt_cuda)
  foreach(t cuda_nvrtc cuda_model)
    add_executable(test_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
    target_include_directories(test_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(test_${t} PRIVATE pocrt pocrt_cuda)
    add_test(NAME ${t} COMMAND test_${t})
  endforeach()
  set_tests_properties(cuda_nvrtc PROPERTIES LABELS "unit;gpu" TIMEOUT 300)
  set_tests_properties(cuda_model PROPERTIES LABELS gpu TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()

# The DPO-step benchmark (bench/cuda/run.sh runs it on a GPU); built, not run, by ctest.
if(TARGET pocrt_cuda)
  add_executable(bench_cuda ${PROJECT_SOURCE_DIR}/bench/cuda/bench_cuda.c)
  target_link_libraries(bench_cuda PRIVATE pocrt pocrt_cuda)
endif()
