# tools/prepare_data.py offline: a tokenizer, model and datasets the test makes itself;
# pairs tokenized as TRL's DPOTrainer does (TRL's own code as the oracle), every input form,
# truncation counts, bad records named by file and row, and poc reading the result.
add_test(NAME prepare_data
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/prepare_check.py
                 --root ${PROJECT_SOURCE_DIR} --poc ${POC_EXE})
set_tests_properties(prepare_data PROPERTIES LABELS "tools;hf" TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=1;HF_DATASETS_OFFLINE=1;HF_HUB_OFFLINE=1")
