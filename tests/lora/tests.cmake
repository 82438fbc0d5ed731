# LoRA: the adapters in the model (gradients against finite differences on cpu64, cpu
# against cpu64, adapters off / merged / views), and on the emulated CUDA device.
add_executable(test_lora_model ${CMAKE_CURRENT_LIST_DIR}/test_lora_model.c)
target_include_directories(test_lora_model PRIVATE ${PROJECT_SOURCE_DIR}/tests ${PROJECT_SOURCE_DIR}/runtime)
target_link_libraries(test_lora_model PRIVATE pocrt)
add_test(NAME lora_model COMMAND test_lora_model)
set_tests_properties(lora_model PROPERTIES LABELS "lora;model" TIMEOUT 120)
if(TARGET pocrt_cuda AND TARGET poc_cuemu)
  target_link_libraries(test_lora_model PRIVATE pocrt_cuda)
  add_dependencies(test_lora_model poc_cuemu)
  add_test(NAME lora_cuda_emul COMMAND test_lora_model cuda)
  set_tests_properties(lora_cuda_emul PROPERTIES LABELS "lora;cuda_emul" TIMEOUT 300
    ENVIRONMENT "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>;OMP_WAIT_POLICY=PASSIVE")
endif()
