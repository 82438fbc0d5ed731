# tools/plot.py: figures from a run directory the test writes, and its error paths.
add_test(NAME plot_figures
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/test_plot.py
                 ${PROJECT_SOURCE_DIR}/tools/plot.py ${CMAKE_CURRENT_BINARY_DIR}/plot_scratch)
set_tests_properties(plot_figures PROPERTIES LABELS "plot;tools" TIMEOUT 180
                     SKIP_RETURN_CODE 77)
