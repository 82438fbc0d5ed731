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

# Against PEFT itself (peft, transformers, torch; skipped when they cannot be had): a poc
# run's adapter in peft, a peft adapter in poc, poc merge vs merge_and_unload, bad
# adapters, exact resume. About a minute of one core.
add_test(NAME lora_peft
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_peft.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                 --scratch ${CMAKE_CURRENT_BINARY_DIR}/lora_peft)
set_tests_properties(lora_peft PROPERTIES LABELS "lora;peer" SKIP_RETURN_CODE 77 TIMEOUT 600)
