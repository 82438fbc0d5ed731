# logsumsq (log Σ_v p(v)², the WPO weighting statistic) end to end: the loss head's
# per-token values against transformers on the bundled model (cpu64, cpu; cuda on the
# emulation), and examples/trl/dpo_sigmoid_wpo.po through poc probe and training.
add_executable(wpo_head ${CMAKE_CURRENT_LIST_DIR}/wpo_head.c)
target_include_directories(wpo_head PRIVATE ${PROJECT_SOURCE_DIR}/runtime)
target_link_libraries(wpo_head PRIVATE pocrt)

add_test(NAME wpo_head
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_head.py
                 --harness $<TARGET_FILE:wpo_head> --root ${PROJECT_SOURCE_DIR}
                 --scratch ${CMAKE_CURRENT_BINARY_DIR}/wpo_scratch/head)
set_tests_properties(wpo_head PROPERTIES LABELS "wpo;model" TIMEOUT 300 SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")

# The CUDA head: on a GPU (skips without one), and on the emulation (tests/cuda_emul)
if(TARGET pocrt_cuda)
  add_test(NAME wpo_head_cuda
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_head.py --cuda
                   --harness $<TARGET_FILE:wpo_head> --root ${PROJECT_SOURCE_DIR}
                   --scratch ${CMAKE_CURRENT_BINARY_DIR}/wpo_scratch/head_cuda)
  set_tests_properties(wpo_head_cuda PROPERTIES LABELS "wpo;gpu" TIMEOUT 300 SKIP_RETURN_CODE 77)
  if(TARGET poc_cuemu)
    add_test(NAME wpo_head_cuda_emul
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_head.py --cuda --lines 4
                     --harness $<TARGET_FILE:wpo_head> --root ${PROJECT_SOURCE_DIR}
                     --scratch ${CMAKE_CURRENT_BINARY_DIR}/wpo_scratch/head_cuda_emul)
    set_tests_properties(wpo_head_cuda_emul PROPERTIES LABELS "wpo;cuda_emul" TIMEOUT 600
                         SKIP_RETURN_CODE 77
                         ENVIRONMENT "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>;OMP_WAIT_POLICY=PASSIVE")
    add_dependencies(wpo_head poc_cuemu)
  endif()
endif()

# poc probe's logsumsq inputs (the values against TRL are a row of tests/trl)
add_test(NAME wpo_probe
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_probe.py --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${CMAKE_CURRENT_BINARY_DIR}/wpo_scratch/probe)
set_tests_properties(wpo_probe PROPERTIES LABELS "wpo;examples" TIMEOUT 300)

# The example built and trained two steps, fused head against textbook head
add_test(NAME wpo_train
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_train.py --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${CMAKE_CURRENT_BINARY_DIR}/wpo_scratch/train)
set_tests_properties(wpo_train PROPERTIES LABELS "wpo;e2e" TIMEOUT 600
                     ENVIRONMENT "OMP_NUM_THREADS=1;OMP_WAIT_POLICY=PASSIVE")
if(TARGET poc_cuemu)
  add_test(NAME wpo_train_cuda_emul
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_train.py --poc ${POC_EXE}
                   --root ${PROJECT_SOURCE_DIR} --backend cuda
                   --set train.batch=4 --set train.micro_batch=2 --lines 8
                   --scratch ${CMAKE_CURRENT_BINARY_DIR}/wpo_scratch/train_cuda_emul)
  set_tests_properties(wpo_train_cuda_emul PROPERTIES LABELS "wpo;cuda_emul" TIMEOUT 900
                       SKIP_RETURN_CODE 77
                       ENVIRONMENT "POC_CUDA_EMULATE=$<TARGET_FILE:poc_cuemu>;OMP_WAIT_POLICY=PASSIVE")
endif()
