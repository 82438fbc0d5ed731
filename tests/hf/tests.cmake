# The independent check against Hugging Face transformers: random tiny models of each
# supported type, saved by transformers, scored by `poc logp`, and poc's own checkpoints
# loaded back into transformers. Skips (exit 77) when torch or transformers is missing.
# test_model_tool is defined in tests/model_io/tests.cmake.
add_test(NAME hf_logp
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_hf.py
                 --poc ${POC_EXE} --model-tool $<TARGET_FILE:test_model_tool>
                 --scratch ${CMAKE_CURRENT_BINARY_DIR}/hf)
set_tests_properties(hf_logp PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
