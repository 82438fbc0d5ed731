# Front end tests: unit tests of the scanner, parser and checker; a golden corpus of
# diagnostics; good files that must pass; a robustness run on hostile input.
add_executable(dsl_fe_check ${CMAKE_CURRENT_LIST_DIR}/fe_check.c)
target_link_libraries(dsl_fe_check PRIVATE pocdsl)

add_executable(test_dsl_parse ${CMAKE_CURRENT_LIST_DIR}/test_parse.c)
target_include_directories(test_dsl_parse PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_dsl_parse PRIVATE pocdsl)
add_test(NAME dsl_parse COMMAND test_dsl_parse)

add_executable(test_dsl_check ${CMAKE_CURRENT_LIST_DIR}/test_check.c)
target_include_directories(test_dsl_check PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_dsl_check PRIVATE pocdsl)
add_test(NAME dsl_check COMMAND test_dsl_check)

add_executable(test_dsl_robust ${CMAKE_CURRENT_LIST_DIR}/test_robust.c)
target_include_directories(test_dsl_robust PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_dsl_robust PRIVATE pocdsl)
file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/dsl_robust_scratch)
add_test(NAME dsl_robust
         COMMAND test_dsl_robust ${CMAKE_CURRENT_LIST_DIR}/good ${CMAKE_CURRENT_BINARY_DIR}/dsl_robust_scratch)

# The diagnostics corpus through `poc check` (bad/*.po against bad/*.expected; good/*.po
# must pass silently).
add_test(NAME dsl_corpus
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/run_corpus.py ${POC_EXE})
# The same corpus through the front end alone, independent of the later stages.
add_test(NAME dsl_corpus_frontend
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/run_corpus.py --bare
                 $<TARGET_FILE:dsl_fe_check>)
