# The IR: verifier, lowering diagnostics, passes, autodiff against finite differences,
# and poc probe's input handling.
foreach(t verify lower autodiff)
  add_executable(test_ir_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
  target_link_libraries(test_ir_${t} PRIVATE poccomp)
  target_include_directories(test_ir_${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  add_test(NAME ir.${t} COMMAND test_ir_${t})
endforeach()
add_test(NAME ir.probe
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/probe_check.py ${POC_EXE} ${PROJECT_SOURCE_DIR})
