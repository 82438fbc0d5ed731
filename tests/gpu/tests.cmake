# The devices. model_api holds the CPU device to the model API's device-independent
# contract (pocrt.h). cuda_nvrtc runs wherever the toolkit is (no GPU needed): every kernel
# template compiles under NVRTC. cuda_model compares the model on the CUDA device with the
# CPU one and skips (exit 77) without a GPU.
add_executable(test_model_api ${CMAKE_CURRENT_LIST_DIR}/test_model_api.c)
target_include_directories(test_model_api PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_model_api PRIVATE pocrt)
add_test(NAME model_api COMMAND test_model_api)
set_tests_properties(model_api PROPERTIES LABELS "unit" TIMEOUT 60)

if(TARGET pocrt_cuda)
  foreach(t cuda_nvrtc cuda_model)
    add_executable(test_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
    target_include_directories(test_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(test_${t} PRIVATE pocrt pocrt_cuda)
    add_test(NAME ${t} COMMAND test_${t})
  endforeach()
  set_tests_properties(cuda_nvrtc PROPERTIES LABELS "unit;gpu" TIMEOUT 300)
  set_tests_properties(cuda_model PROPERTIES LABELS gpu TIMEOUT 300 SKIP_RETURN_CODE 77)

  # The device of device.h: on a GPU it checks copies, a GEMM and attention; elsewhere that
  # opening it fails with a message. cuda_device_stub opens it against the toolkit's stub
  # driver, which loads and answers every call with an error: the path past dlopen.
  add_executable(test_cuda_device ${CMAKE_CURRENT_LIST_DIR}/test_cuda_device.c)
  target_include_directories(test_cuda_device PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_cuda_device PRIVATE pocrt pocrt_cuda)
  add_test(NAME cuda_device COMMAND test_cuda_device)
  set_tests_properties(cuda_device PROPERTIES LABELS "unit;gpu" TIMEOUT 120)
  find_file(POC_CUDA_STUB libcuda.so PATHS ${CUDAToolkit_LIBRARY_DIR}/stubs NO_DEFAULT_PATH)
  if(POC_CUDA_STUB)
    set(stub_dir ${CMAKE_CURRENT_BINARY_DIR}/cuda_stub)
    file(MAKE_DIRECTORY ${stub_dir})
    file(CREATE_LINK ${POC_CUDA_STUB} ${stub_dir}/libcuda.so.1 SYMBOLIC)
    add_test(NAME cuda_device_stub COMMAND test_cuda_device)
    set_tests_properties(cuda_device_stub PROPERTIES LABELS unit TIMEOUT 60
                         ENVIRONMENT "LD_LIBRARY_PATH=${stub_dir}"
                         PASS_REGULAR_EXPRESSION "unavailable here: cuda: the CUDA driver found no usable GPU"
                         FAIL_REGULAR_EXPRESSION "check failed")
  endif()
endif()

# The DPO-step benchmark (bench/cuda/run.sh runs it on a GPU); built, not run, by ctest.
if(TARGET pocrt_cuda)
  add_executable(bench_cuda ${PROJECT_SOURCE_DIR}/bench/cuda/bench_cuda.c)
  target_link_libraries(bench_cuda PRIVATE pocrt pocrt_cuda)
endif()
