# TRL's DPOConfig family (examples/trl/*.po) against TRL's own DPOTrainer, as installed
# (installed with pip when missing; skipped, exit 77, when that is impossible), and the
# new constructs they use (batch_sort, pos) through generated code and training runs.
file(GLOB TRL_PO CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/examples/trl/*.po)
# corner cases of the new constructs for the generated code and the gradient rules
file(GLOB TRL_OBJECTIVES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/objectives/*.po)

add_test(NAME trl.dpo_losses
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_trl.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR})
set_tests_properties(trl.dpo_losses PROPERTIES LABELS trl SKIP_RETURN_CODE 77 TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1")

# the front end accepts every file
foreach(po ${TRL_PO})
  get_filename_component(name ${po} NAME_WE)
  add_test(NAME trl.check.${name} COMMAND ${POC_EXE} check ${po})
  set_tests_properties(trl.check.${name} PROPERTIES LABELS trl TIMEOUT 30)
endforeach()

# the generated objective, fused and unfused, against poc probe (tests/e2e's driver)
add_test(NAME trl.kernels
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/e2e/kernel_check.py
                 --poc ${POC_EXE} --harness ${PROJECT_SOURCE_DIR}/tests/e2e/kernel_harness.c
                 --include ${PROJECT_SOURCE_DIR}/runtime --lib "${E2E_LINK}"
                 "--cflags=${E2E_CFLAGS}" --rounds 2 ${TRL_PO} ${TRL_OBJECTIVES})
# batch_sort's and pos's gradients in poc probe against finite differences
add_test(NAME trl.fd
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/probe_fd.py --poc ${POC_EXE}
                 ${TRL_OBJECTIVES} ${PROJECT_SOURCE_DIR}/examples/trl/dpo_aot.po
                 ${PROJECT_SOURCE_DIR}/examples/trl/dpo_sigmoid_ld.po)
# training binaries of the files with a batch sort, per-token positions and the batch
# token mean: two steps each, fused and unfused agreeing
add_test(NAME trl.train
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/train_trl.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --steps 2
                 dpo_aot dpo_sigmoid_ld dpo_rpo dpo_sft)
set_tests_properties(trl.kernels trl.train trl.fd PROPERTIES LABELS trl TIMEOUT 600
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
