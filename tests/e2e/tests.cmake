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
# libpocrt and the runtime libraries it links (they call each other), then their
# libraries: the link line poc build uses (cmake/PocLink.cmake)
list(JOIN POC_LINK_RUNTIME_FILES " " E2E_RUNTIME)
list(JOIN POC_LINK_ARGS " " E2E_LINK_ARGS)
set(E2E_LINK "-Wl,--start-group ${E2E_RUNTIME} -Wl,--end-group ${E2E_LINK_ARGS}")

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
# Passive OpenMP waits: ctest runs two suites at once on two cores, and spinning threads
# of one training run would starve the other's.
set_tests_properties(e2e.kernels e2e.inject e2e.plan e2e.train e2e.learn
                     PROPERTIES LABELS e2e TIMEOUT 1200 ENVIRONMENT "OMP_WAIT_POLICY=PASSIVE")
