# examples/trl/: TRL's own trainers (CPOTrainer's loss types, ORPOTrainer, KTOTrainer), as
# installed, on ragged random float64 batches against `poc probe`. Skips (exit 77) when
# torch or TRL is missing and cannot be installed.
foreach(f cpo_sigmoid cpo_hinge cpo_ipo cpo_simpo cpo_alphapo orpo)
  add_test(NAME trl_cpo_${f}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_trl_cpo.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --file ${f})
  set_tests_properties(trl_cpo_${f} PROPERTIES LABELS trl SKIP_RETURN_CODE 77 TIMEOUT 300
                       ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
