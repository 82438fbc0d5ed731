# The training runtime: data validation, the optimizer and schedules, checkpoints, the
# step's gradient (float32 paths against each other, float64 against finite differences),
# and whole runs of a training binary built from a hand-written DPO program.
foreach(t units step)
  add_executable(test_train_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
  target_include_directories(test_train_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(test_train_${t} PRIVATE pocrt)
  add_test(NAME train_${t} COMMAND test_train_${t})
  set_tests_properties(train_${t} PROPERTIES LABELS train TIMEOUT 120)
endforeach()

# A training binary as generated code would link it, with the program built by hand.
add_executable(train_tt_dpo ${CMAKE_CURRENT_LIST_DIR}/tt_dpo_main.c)
target_include_directories(train_tt_dpo PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(train_tt_dpo PRIVATE pocrt)
add_test(NAME train_runs
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_runs.py
                 $<TARGET_FILE:train_tt_dpo> ${CMAKE_CURRENT_BINARY_DIR}/train_runs_scratch)
set_tests_properties(train_runs PROPERTIES LABELS train TIMEOUT 300)

# The embedded task's generator: deterministic, valid files, disjoint eval prompts.
add_test(NAME train_make_task
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_make_task.py
                 ${PROJECT_SOURCE_DIR}/tools/make_task.py ${CMAKE_CURRENT_BINARY_DIR}/make_task_scratch)
set_tests_properties(train_make_task PROPERTIES LABELS train TIMEOUT 120)

# What a run promises when things go wrong (docs/reliability.md, "Training runs").
add_test(NAME train_reliability
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_reliability.py
                 $<TARGET_FILE:train_tt_dpo> ${CMAKE_CURRENT_BINARY_DIR}/train_reliability_scratch)
set_tests_properties(train_reliability PROPERTIES LABELS train TIMEOUT 300)
