# The recompute, fuse and memplan passes: the fusion verifier on broken groupings, the
# memory planner (and a model's arena: planned peak = allocated bytes), and the passes as
# poc graph and poc build show them.
add_executable(test_passes_fuse ${CMAKE_CURRENT_LIST_DIR}/test_fuse.c)
target_link_libraries(test_passes_fuse PRIVATE poccomp)
target_include_directories(test_passes_fuse PRIVATE ${PROJECT_SOURCE_DIR}/tests)
add_test(NAME passes.fuse COMMAND test_passes_fuse)
set_tests_properties(passes.fuse PROPERTIES LABELS passes TIMEOUT 60)

add_executable(test_passes_mplan ${CMAKE_CURRENT_LIST_DIR}/test_mplan.c)
target_link_libraries(test_passes_mplan PRIVATE pocrt)
target_include_directories(test_passes_mplan PRIVATE ${PROJECT_SOURCE_DIR}/tests)
add_test(NAME passes.mplan COMMAND test_passes_mplan ${PROJECT_SOURCE_DIR}/examples/tiny)
set_tests_properties(passes.mplan PROPERTIES LABELS passes TIMEOUT 120)

add_test(NAME passes.graph
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_graph.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR})
set_tests_properties(passes.graph PROPERTIES LABELS passes TIMEOUT 300)
