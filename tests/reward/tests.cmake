# Reward models: the sequence-classification head of runtime/model.c (gradients on cpu64,
# the CUDA device under the emulation against the CPU), `reward()` in the language and
# TRL's RewardTrainer loss through `poc probe`, checkpoints transformers loads, `poc score`
# against transformers, and bad heads.
add_executable(test_reward_score_head ${CMAKE_CURRENT_LIST_DIR}/test_score_head.c)
target_include_directories(test_reward_score_head PRIVATE ${PROJECT_SOURCE_DIR}/tests
  ${PROJECT_SOURCE_DIR}/tests/model)
target_link_libraries(test_reward_score_head PRIVATE pocrt)
add_test(NAME reward.score_head COMMAND test_reward_score_head)
set_tests_properties(reward.score_head PROPERTIES LABELS "reward;model" TIMEOUT 300)
add_executable(test_reward_config ${CMAKE_CURRENT_LIST_DIR}/test_config.c)
target_include_directories(test_reward_config PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_reward_config PRIVATE pocrt)
add_test(NAME reward.config COMMAND test_reward_config ${PROJECT_SOURCE_DIR}/examples/tiny)
set_tests_properties(reward.config PROPERTIES LABELS "reward;model_io" TIMEOUT 60)
if(TARGET pocrt_cuda)
  add_test(NAME reward.score_head_cuda_emul COMMAND test_reward_score_head cuda)
  set_tests_properties(reward.score_head_cuda_emul PROPERTIES LABELS "reward;cuda_emul"
    TIMEOUT 300 ENVIRONMENT "${POC_CUEMU_ENV};POC_CUDA_EMU_SEED=1")
endif()

# the front end accepts the examples
foreach(name reward reward_margin)
  add_test(NAME reward.check.${name} COMMAND ${POC_EXE} check ${PROJECT_SOURCE_DIR}/examples/${name}.po)
  set_tests_properties(reward.check.${name} PROPERTIES LABELS reward TIMEOUT 30)
endforeach()

# the generated objective, fused and unfused, against poc probe (tests/e2e's driver)
add_test(NAME reward.kernels
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/e2e/kernel_check.py
                 --poc ${POC_EXE} --harness ${PROJECT_SOURCE_DIR}/tests/e2e/kernel_harness.c
                 --include ${PROJECT_SOURCE_DIR}/runtime --lib "${E2E_LINK}"
                 "--cflags=${E2E_CFLAGS}" --rounds 3
                 ${PROJECT_SOURCE_DIR}/examples/reward.po ${PROJECT_SOURCE_DIR}/examples/reward_margin.po
                 ${CMAKE_CURRENT_LIST_DIR}/objectives/mixed.po
                 ${CMAKE_CURRENT_LIST_DIR}/objectives/online.po)
set_tests_properties(reward.kernels PROPERTIES LABELS reward TIMEOUT 300)

# TRL's RewardTrainer loss, transformers' classifiers, checkpoints, training, bad heads
add_test(NAME reward.trl_hf
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_reward.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR})
set_tests_properties(reward.trl_hf PROPERTIES LABELS "reward;trl" SKIP_RETURN_CODE 77
                     TIMEOUT 600 WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")

# training and scoring on the CUDA device under the emulation, against the CPU
if(TARGET pocrt_cuda)
  add_test(NAME reward.cuda_emul
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_reward.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --only cuda_emul)
  set_tests_properties(reward.cuda_emul PROPERTIES LABELS "reward;cuda_emul" SKIP_RETURN_CODE 77
                       TIMEOUT 600 WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
                       ENVIRONMENT "${POC_CUEMU_ENV};OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
endif()
