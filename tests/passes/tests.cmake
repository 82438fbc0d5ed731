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

# Fused kernels whose scratch vectors share memory across stages, against poc probe (the
# e2e kernel checker, with e2e's link line)
add_test(NAME passes.kernels
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/e2e/kernel_check.py
                 --poc ${POC_EXE} --harness ${PROJECT_SOURCE_DIR}/tests/e2e/kernel_harness.c
                 --include ${PROJECT_SOURCE_DIR}/runtime --lib "${E2E_LINK}"
                 "--cflags=${E2E_CFLAGS}" --rounds 3 ${CMAKE_CURRENT_LIST_DIR}/objectives/share.po)
set_tests_properties(passes.kernels PROPERTIES LABELS passes TIMEOUT 300)
