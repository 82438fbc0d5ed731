# Model I/O: safetensors, config.json, weight loading and saving; the HF checks live in
# tests/hf. Scratch files go under the build tree.
set(MIO_SCRATCH ${CMAKE_CURRENT_BINARY_DIR}/model_io)

add_executable(test_model_io_st ${CMAKE_CURRENT_LIST_DIR}/test_st.c)
target_link_libraries(test_model_io_st PRIVATE pocrt)
add_test(NAME model_io_st COMMAND test_model_io_st ${MIO_SCRATCH})

add_executable(test_model_io_config ${CMAKE_CURRENT_LIST_DIR}/test_config.c)
target_link_libraries(test_model_io_config PRIVATE pocrt)
add_test(NAME model_io_config COMMAND test_model_io_config ${MIO_SCRATCH})

add_executable(test_model_io_weights ${CMAKE_CURRENT_LIST_DIR}/test_weights.c)
target_link_libraries(test_model_io_weights PRIVATE pocrt)
add_test(NAME model_io_weights COMMAND test_model_io_weights ${MIO_SCRATCH})

# Model folders for the command-line and HF checks, made through poc's own I/O.
add_executable(test_model_tool ${CMAKE_CURRENT_LIST_DIR}/model_tool.c)
target_link_libraries(test_model_tool PRIVATE pocrt)
add_test(NAME model_io_cli
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_cli.py
                 --poc ${POC_EXE} --model-tool $<TARGET_FILE:test_model_tool>
                 --scratch ${MIO_SCRATCH}/cli)
set_tests_properties(model_io_cli PROPERTIES TIMEOUT 120 ENVIRONMENT "OMP_NUM_THREADS=2")
