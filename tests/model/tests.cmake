# The CPU transformer: gradients against finite differences, packing, the loss head,
# generation with a KV cache, float32 against float64, and the parameter layout.
foreach(t grad pack head generate layout)
  add_executable(test_model_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
  target_include_directories(test_model_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests ${CBLAS_INCLUDE})
  target_link_libraries(test_model_${t} PRIVATE pocrt)
  add_test(NAME model_${t} COMMAND test_model_${t})
  set_tests_properties(model_${t} PROPERTIES LABELS model TIMEOUT 120)
endforeach()
