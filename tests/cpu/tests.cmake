# The CPU device: kernel choice from feature bits (pure functions), and the device line of
# real runs against /proc/cpuinfo and the environment.
add_executable(test_cpu_features ${CMAKE_CURRENT_LIST_DIR}/test_cpu_features.c)
target_include_directories(test_cpu_features PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_cpu_features PRIVATE pocrt)
add_test(NAME cpu_features COMMAND test_cpu_features)
set_tests_properties(cpu_features PROPERTIES LABELS unit TIMEOUT 60)

add_test(NAME cpu_line
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_line.py --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${CMAKE_CURRENT_BINARY_DIR}/cpu_line)
set_tests_properties(cpu_line PROPERTIES LABELS cpu TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=2")
