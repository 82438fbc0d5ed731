# examples/trl/: TRL's own trainers (CPOTrainer's loss types, ORPOTrainer, KTOTrainer), as
# installed, on ragged random float64 batches against `poc probe`. Skips (exit 77) when
# torch or TRL is missing and cannot be installed.
# main_cpo, main_orpo: examples/cpo.po and examples/orpo.po, whose defaults follow TRL too.
foreach(f cpo_sigmoid cpo_hinge cpo_ipo cpo_simpo cpo_alphapo orpo main_cpo main_orpo)
  add_test(NAME trl_cpo_${f}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_trl_cpo.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --file ${f})
  set_tests_properties(trl_cpo_${f} PROPERTIES LABELS trl SKIP_RETURN_CODE 77 TIMEOUT 300
                       ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
foreach(f kto kto_apo_zero_unpaired)
  add_test(NAME trl_cpo_${f}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_trl_kto.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --file ${f})
  set_tests_properties(trl_cpo_${f} PROPERTIES LABELS trl SKIP_RETURN_CODE 77 TIMEOUT 300
                       ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()

# poc check every file of examples/trl/ this suite covers (the probe drivers do too), then
# build and train two steps of KTO (the `sequence` declaration, sequential order) and CPO
# (a batch token mean through the training runtime).
add_test(NAME trl_cpo_train_steps
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/train_steps.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR}
                 --scratch ${CMAKE_CURRENT_BINARY_DIR}/trl_cpo_train_steps
                 examples/trl/kto.po examples/trl/cpo_sigmoid.po examples/cpo.po examples/orpo.po)
set_tests_properties(trl_cpo_train_steps PROPERTIES LABELS trl TIMEOUT 600
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
