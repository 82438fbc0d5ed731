# End to end: the code generator's output against the reference interpreter, crafted
# .po files that try to put code into generated C, and every example built and trained.
#
# The Python drivers compile generated C themselves (as poc build does), so they get the
# runtime's headers, libpocrt and what it links with from here.
set(E2E_EXAMPLES sft dpo simpo ipo cpo orpo rdpo stapo stapo_dpo copo inspo ins_simpo sgdpo rao)
set(E2E_PO)
foreach(ex ${E2E_EXAMPLES})
  list(APPEND E2E_PO ${PROJECT_SOURCE_DIR}/examples/${ex}.po)
endforeach()

set(E2E_CFLAGS "")
if(POC_SANITIZE)
  set(E2E_CFLAGS "-fsanitize=address,undefined")
endif()
# libpocrt (the device registry), the CPU devices, the core and, when built, the CUDA
# device (they call each other), then their libraries
set(E2E_LINK "-Wl,--start-group $<TARGET_FILE:pocrt> $<TARGET_FILE:pocrt_cpu> $<TARGET_FILE:pocrt_core>")
if(TARGET pocrt_cuda)
  string(APPEND E2E_LINK " $<TARGET_FILE:pocrt_cuda> -Wl,--end-group")
  foreach(lib CUDA::nvrtc CUDA::cublas CUDA::cublasLt)
    if(TARGET ${lib})
      string(APPEND E2E_LINK " $<TARGET_FILE:${lib}>")
    endif()
  endforeach()
  string(APPEND E2E_LINK " -Wl,-rpath,${CUDAToolkit_LIBRARY_DIR} -ldl")
else()
  string(APPEND E2E_LINK " -Wl,--end-group")
endif()
string(APPEND E2E_LINK " ${OPENBLAS_LIB}")

# examples and objectives written for the generator's corner cases
file(GLOB E2E_OBJECTIVES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/objectives/*.po)
add_test(NAME e2e.kernels
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/kernel_check.py
                 --poc ${POC_EXE} --harness ${CMAKE_CURRENT_LIST_DIR}/kernel_harness.c
                 --include ${PROJECT_SOURCE_DIR}/runtime --lib "${E2E_LINK}"
                 "--cflags=${E2E_CFLAGS}" --rounds 3 ${E2E_PO} ${E2E_OBJECTIVES})
file(GLOB E2E_INJECT CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/inject/*.po)
add_test(NAME e2e.inject
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/inject_check.py
                 --poc ${POC_EXE} --dump ${CMAKE_CURRENT_LIST_DIR}/plan_dump.c
                 --include ${PROJECT_SOURCE_DIR}/runtime --lib "${E2E_LINK}"
                 "--cflags=${E2E_CFLAGS}" ${E2E_INJECT})
add_test(NAME e2e.plan
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/plan_check.py
                 --poc ${POC_EXE} --dump ${CMAKE_CURRENT_LIST_DIR}/plan_dump.c
                 --include ${PROJECT_SOURCE_DIR}/runtime --lib "${E2E_LINK}"
                 "--cflags=${E2E_CFLAGS}" --root ${PROJECT_SOURCE_DIR})
add_test(NAME e2e.train
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/train_check.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} --steps 2 ${E2E_EXAMPLES})
# The embedded default: DPO from the shipped SFT model raises held-out accuracy.
add_test(NAME e2e.learn
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/learn_check.py
                 --poc ${POC_EXE} --root ${PROJECT_SOURCE_DIR} dpo)
set_tests_properties(e2e.kernels e2e.inject e2e.plan e2e.train e2e.learn
                     PROPERTIES LABELS e2e TIMEOUT 900)
