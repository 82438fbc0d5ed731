# The example objectives (examples/*.po) against independent statements of their papers'
# formulas (tests/examples/formulas.py), through `poc probe`; one test per file.
set(POC_EXAMPLES sft dpo lora_dpo simpo ipo cpo orpo rdpo stapo stapo_dpo copo inspo ins_simpo sgdpo rao)
foreach(ex ${POC_EXAMPLES})
  add_test(NAME example_probe_${ex}
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_examples.py
                   --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --example ${ex})
  set_tests_properties(example_probe_${ex} PROPERTIES LABELS examples TIMEOUT 300)
endforeach()
