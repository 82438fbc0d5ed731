# poc against TRL and transformers themselves (docs/trl.md): the learning-rate schedules
# against transformers' schedulers, and 10 optimizer steps of examples/dpo.po against
# TRL's DPOTrainer from the same weights on the same batches. Skip (exit 77) when torch,
# transformers or TRL cannot be had.
add_executable(trl_lr_dump ${CMAKE_CURRENT_LIST_DIR}/lr_dump.c)
target_include_directories(trl_lr_dump PRIVATE ${PROJECT_SOURCE_DIR}/runtime)
target_link_libraries(trl_lr_dump PRIVATE pocrt)
add_test(NAME trl.schedule
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/schedule_check.py
                 --lr-dump $<TARGET_FILE:trl_lr_dump> --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${CMAKE_CURRENT_BINARY_DIR}/trl_schedule)
set_tests_properties(trl.schedule PROPERTIES LABELS trl SKIP_RETURN_CODE 77 TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
add_test(NAME trl.dpo_training
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/dpo_parity.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                 --scratch ${CMAKE_CURRENT_BINARY_DIR}/trl_dpo)
set_tests_properties(trl.dpo_training PROPERTIES LABELS trl SKIP_RETURN_CODE 77 TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE;HF_HUB_OFFLINE=1")
