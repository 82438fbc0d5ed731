# The fault suite: SIGKILLs at random moments of a training run, a damaged poc run
# cache, and .po inputs that are not regular files. Each case says what it checks on
# failure; the soak prints its seed (soak.py --seed S replays its kill moments).
set(FAULT_DIR ${CMAKE_CURRENT_BINARY_DIR}/fault)
add_test(NAME fault.soak
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/soak.py --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${FAULT_DIR}/soak --kills 60)
add_test(NAME fault.cache
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/cases.py cache --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${FAULT_DIR}/cache)
add_test(NAME fault.input
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/cases.py input --poc ${POC_EXE}
                 --root ${PROJECT_SOURCE_DIR} --scratch ${FAULT_DIR}/input)
set_tests_properties(fault.soak fault.cache fault.input PROPERTIES LABELS fault TIMEOUT 300)
