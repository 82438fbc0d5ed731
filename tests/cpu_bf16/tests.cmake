# The bf16 CPU device (runtime/cpu, built where oneDNN is found): every kernel against the
# float device's twin within bf16 rounding, and examples/dpo.po trained with
# precision = bf16 against its fp32 run.
if(TARGET pocrt_cpu_bf16)
  add_executable(test_cpu_bf16_kernels ${CMAKE_CURRENT_LIST_DIR}/test_cpu_bf16_kernels.c)
  target_include_directories(test_cpu_bf16_kernels PRIVATE ${PROJECT_SOURCE_DIR}/tests
                                                           ${PROJECT_SOURCE_DIR}/runtime/cpu)
  target_link_libraries(test_cpu_bf16_kernels PRIVATE pocrt)
  add_test(NAME cpu_bf16_kernels COMMAND test_cpu_bf16_kernels)
  set_tests_properties(cpu_bf16_kernels PROPERTIES LABELS "cpu_bf16;model" TIMEOUT 120
                       ENVIRONMENT "OMP_NUM_THREADS=2;OMP_WAIT_POLICY=PASSIVE")

  add_test(NAME cpu_bf16_train
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_train.py --poc ${POC_EXE}
                   --root ${PROJECT_SOURCE_DIR} --scratch ${CMAKE_CURRENT_BINARY_DIR}/cpu_bf16_scratch)
  set_tests_properties(cpu_bf16_train PROPERTIES LABELS "cpu_bf16;e2e" TIMEOUT 600
                       ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()
