# The model on the CPU devices: gradients against finite differences ("cpu64"), packing,
# the loss head, generation with a KV cache, "cpu" against "cpu64", and the parameter layout.
foreach(t grad pack head generate layout)
  add_executable(test_model_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
  target_include_directories(test_model_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests ${CBLAS_INCLUDE})
  target_link_libraries(test_model_${t} PRIVATE pocrt)
  add_test(NAME model_${t} COMMAND test_model_${t})
  set_tests_properties(model_${t} PROPERTIES LABELS model TIMEOUT 120)
endforeach()

# The CPU devices' kernels (runtime/cpu) against plain double-loop references.
add_executable(test_cpu_kernels ${CMAKE_CURRENT_LIST_DIR}/test_cpu_kernels.c)
target_include_directories(test_cpu_kernels PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_cpu_kernels PRIVATE pocrt)
add_test(NAME cpu_kernels COMMAND test_cpu_kernels)
set_tests_properties(cpu_kernels PROPERTIES LABELS model TIMEOUT 120)
