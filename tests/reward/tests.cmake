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
if(TARGET pocrt_cuda)
  add_test(NAME reward.score_head_cuda_emul COMMAND test_reward_score_head cuda)
  set_tests_properties(reward.score_head_cuda_emul PROPERTIES LABELS "reward;cuda_emul"
    TIMEOUT 300 ENVIRONMENT "${POC_CUEMU_ENV};POC_CUDA_EMU_SEED=1")
endif()
