# Bounded fuzz runs under ASan and UBSan (clang + libFuzzer, each target built in its
# own directory by run.sh; skipped, saying why, where those are missing): the .po front
# end and the JSONL data reader. Longer runs: tests/fuzz/run.sh SECONDS WORKDIR TARGET.
add_test(NAME fuzz_frontend
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run.sh 60 ${CMAKE_CURRENT_BINARY_DIR}/fuzz_frontend frontend)
add_test(NAME fuzz_data
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run.sh 60 ${CMAKE_CURRENT_BINARY_DIR}/fuzz_data data)
set_tests_properties(fuzz_frontend fuzz_data PROPERTIES LABELS fuzz SKIP_RETURN_CODE 77 TIMEOUT 300)

# With -DPOC_FUZZ=ON and clang as the C compiler, the fuzz target is also a CMake target
# (instrumenting the front end library), for running libFuzzer by hand.
if(POC_FUZZ)
  if(CMAKE_C_COMPILER_ID MATCHES "Clang")
    target_compile_options(pocdsl PRIVATE -fsanitize=fuzzer-no-link)
    add_executable(fuzz_frontend_bin ${CMAKE_CURRENT_LIST_DIR}/fuzz_frontend.c)
    target_link_libraries(fuzz_frontend_bin PRIVATE pocdsl)
    target_compile_options(fuzz_frontend_bin PRIVATE -fsanitize=fuzzer)
    target_link_options(fuzz_frontend_bin PRIVATE -fsanitize=fuzzer)
  else()
    message(WARNING "POC_FUZZ needs clang as the C compiler; use tests/fuzz/run.sh instead")
  endif()
endif()
