# Installation: `cmake --install` to a temporary prefix, moved elsewhere, builds and trains
# the DPO example from a directory outside the checkout, without the source or build tree.
add_test(NAME install.prefix
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/install_check.py
                 --cmake ${CMAKE_COMMAND} --build ${PROJECT_BINARY_DIR}
                 --source ${PROJECT_SOURCE_DIR} --config $<CONFIG>)
set_tests_properties(install.prefix PROPERTIES LABELS install TIMEOUT 300)
