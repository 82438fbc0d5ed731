# PocLink.cmake — what `poc build` compiles generated code with, and the install rules for it.
#
# poc_link_description(ROOTS lib... TEMPLATES file...) follows the link interface of the
# runtime libraries a generated program links (ROOTS) and writes the *link description*
# that poc build reads instead of this build's CMakeCache.txt:
#
#   <build>/lib/poc/link.txt            for the poc in the build tree (absolute paths)
#   <prefix>/lib/poc/link.txt           installed, for <prefix>/bin/poc ("@/" = <prefix>)
#
# Every line is "KEY VALUE", the value being one compiler argument or path, verbatim:
#   include DIR     -I for the runtime headers generated code includes
#   templates DIR   where the code generator reads objective.c
#   runtime FILE    one of poc's static libraries; all of them are linked as one group
#   cflag ARG       before the sources (compile and link)
#   link ARG        after the runtime group, in order (libraries, -Wl,-rpath,...)
#
# Everything reached from ROOTS is found by walking INTERFACE_LINK_LIBRARIES: a static
# library of this project becomes a `runtime` line and is installed under lib/poc with its
# PUBLIC_HEADER files under include/poc; imported and plain libraries become `link` lines
# (with an rpath where their directory is not one the linker searches anyway); interface
# compile options and definitions become `cflag` lines. A new runtime library that a root
# links is therefore picked up without touching this file.
#
# The layout under the prefix is fixed (bin, include/poc, lib/poc, share/poc) and not
# GNUInstallDirs': poc finds its files relative to its own executable.

# A link-interface item without the generator expressions CMake itself puts there, or an
# error naming the one this walker does not understand.
function(_poc_unwrap out item)
  while(item MATCHES "^\\$<(LINK_ONLY|BUILD_INTERFACE|\\$<(COMPILE|LINK)_LANGUAGE:C>):(.*)>$")
    set(item "${CMAKE_MATCH_3}")
  endwhile()
  if(item MATCHES "^\\$<INSTALL_INTERFACE:" OR item MATCHES "^\\$<\\$<(COMPILE|LINK)_LANGUAGE:")
    set(item "")   # not for a C program linked from the build or install tree
  elseif(item MATCHES "\\$<")
    message(FATAL_ERROR "poc: cannot put '${item}' into the link description "
                        "(teach cmake/PocLink.cmake this generator expression)")
  endif()
  set(${out} "${item}" PARENT_SCOPE)
endfunction()

function(_poc_add list value)
  get_property(have GLOBAL PROPERTY ${list})
  if(NOT value IN_LIST have)
    set_property(GLOBAL APPEND PROPERTY ${list} "${value}")
  endif()
endfunction()

# A library file: linked by path; a shared one outside the linker's own directories also
# needs its directory at run time (OpenBLAS's OpenMP build lives in a directory of its own
# while the default one may hold the pthread build under the same soname).
function(_poc_link_file path)
  _poc_add(_POC_LINK_ARGS "${path}")
  if(path MATCHES "\\.so(\\.[0-9]+)*$")
    get_filename_component(dir "${path}" DIRECTORY)
    if(NOT dir IN_LIST CMAKE_C_IMPLICIT_LINK_DIRECTORIES
       AND NOT dir IN_LIST CMAKE_PLATFORM_IMPLICIT_LINK_DIRECTORIES)
      _poc_add(_POC_LINK_RPATHS "-Wl,-rpath,${dir}")
    endif()
  endif()
endfunction()

function(_poc_link_walk item)
  # CMake marks items added from another directory with ::@(dir) ... ::@; they name nothing
  if(item MATCHES "^::@")
    return()
  endif()
  _poc_unwrap(item "${item}")
  if(item STREQUAL "")
    return()
  endif()
  if(NOT TARGET "${item}")
    if(IS_ABSOLUTE "${item}")
      _poc_link_file("${item}")
    elseif(item MATCHES "^-")
      _poc_add(_POC_LINK_ARGS "${item}")
    else()
      _poc_add(_POC_LINK_ARGS "-l${item}")
    endif()
    return()
  endif()
  get_target_property(real "${item}" ALIASED_TARGET)
  if(real)
    set(item "${real}")
  endif()
  get_property(seen GLOBAL PROPERTY _POC_LINK_SEEN)
  if(item IN_LIST seen)
    return()   # pocrt and pocrt_cuda link each other
  endif()
  set_property(GLOBAL APPEND PROPERTY _POC_LINK_SEEN "${item}")

  get_target_property(type "${item}" TYPE)
  get_target_property(imported "${item}" IMPORTED)
  if(NOT imported AND type STREQUAL "STATIC_LIBRARY")
    _poc_add(_POC_LINK_RUNTIME "${item}")
  elseif(imported AND type MATCHES "^(SHARED|STATIC|UNKNOWN)_LIBRARY$")
    string(TOUPPER "${CMAKE_BUILD_TYPE}" cfg)
    set(loc "")
    foreach(p IMPORTED_LOCATION IMPORTED_LOCATION_${cfg} IMPORTED_LOCATION_RELEASE
              IMPORTED_LOCATION_NOCONFIG)
      get_target_property(l "${item}" ${p})
      if(l AND NOT loc)
        set(loc "${l}")
      endif()
    endforeach()
    if(NOT loc)
      message(FATAL_ERROR "poc: the imported library ${item} has no IMPORTED_LOCATION")
    endif()
    _poc_link_file("${loc}")
  elseif(NOT type STREQUAL "INTERFACE_LIBRARY")
    message(FATAL_ERROR "poc: ${item} is a ${type}; generated programs can link this "
                        "project's static libraries and imported or interface ones")
  endif()

  foreach(prop INTERFACE_COMPILE_OPTIONS INTERFACE_COMPILE_DEFINITIONS INTERFACE_LINK_OPTIONS
               INTERFACE_LINK_DIRECTORIES)
    get_target_property(vals "${item}" ${prop})
    if(NOT vals)
      continue()
    endif()
    foreach(v ${vals})
      _poc_unwrap(v "${v}")
      if(v STREQUAL "")
        continue()
      elseif(prop STREQUAL "INTERFACE_COMPILE_OPTIONS")
        _poc_add(_POC_LINK_CFLAGS "${v}")
      elseif(prop STREQUAL "INTERFACE_COMPILE_DEFINITIONS")
        _poc_add(_POC_LINK_CFLAGS "-D${v}")
      elseif(prop STREQUAL "INTERFACE_LINK_OPTIONS")
        _poc_add(_POC_LINK_ARGS "${v}")
      else()
        _poc_add(_POC_LINK_ARGS "-L${v}")
      endif()
    endforeach()
  endforeach()
  get_target_property(libs "${item}" INTERFACE_LINK_LIBRARIES)
  if(libs)
    foreach(l ${libs})
      _poc_link_walk("${l}")
    endforeach()
  endif()
endfunction()

# Sets, in the caller, POC_LINK_RUNTIME_FILES (the runtime libraries, as $<TARGET_FILE>),
# POC_LINK_CFLAGS and POC_LINK_ARGS: the build tree's link line for other users (tests).
function(poc_link_description)
  cmake_parse_arguments(PARSE_ARGV 0 A "" "" "ROOTS;TEMPLATES")
  foreach(r ${A_ROOTS})
    _poc_link_walk("${r}")
  endforeach()
  get_property(runtime GLOBAL PROPERTY _POC_LINK_RUNTIME)
  get_property(cflags GLOBAL PROPERTY _POC_LINK_CFLAGS)
  get_property(args GLOBAL PROPERTY _POC_LINK_ARGS)
  get_property(rpaths GLOBAL PROPERTY _POC_LINK_RPATHS)
  list(APPEND args ${rpaths})
  # add_link_options() of the whole build (the sanitizers in a POC_SANITIZE build): the
  # runtime's objects need them in every program that links them, and its generated code
  # is compiled to match
  get_directory_property(global_link DIRECTORY ${PROJECT_SOURCE_DIR} LINK_OPTIONS)
  foreach(v ${global_link})
    _poc_unwrap(v "${v}")
    if(NOT v STREQUAL "" AND NOT v IN_LIST cflags)
      list(APPEND cflags "${v}")
    endif()
  endforeach()

  # the headers: every runtime library's PUBLIC_HEADER
  set(header_dirs "")
  set(have_headers OFF)
  foreach(t ${runtime})
    get_target_property(hs ${t} PUBLIC_HEADER)
    if(hs)
      set(have_headers ON)
      foreach(h ${hs})
        get_filename_component(d "${h}" DIRECTORY)
        list(APPEND header_dirs "${d}")
      endforeach()
    endif()
  endforeach()
  if(NOT have_headers)
    message(FATAL_ERROR "poc: no runtime library declares a PUBLIC_HEADER; generated code "
                        "needs program.h and pocrt.h")
  endif()
  list(REMOVE_DUPLICATES header_dirs)
  set(template_dirs "")
  foreach(f ${A_TEMPLATES})
    get_filename_component(d "${f}" DIRECTORY)
    list(APPEND template_dirs "${d}")
  endforeach()
  list(REMOVE_DUPLICATES template_dirs)
  list(LENGTH template_dirs n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "poc: the code generator reads its templates from one directory "
                        "(got '${template_dirs}')")
  endif()

  string(CONCAT head "# poc's link description, written by CMake (cmake/PocLink.cmake says "
         "what the\n# keys mean); poc build reads it. \"@/\" is the installation's root.\n")
  set(build "${head}")
  set(inst "${head}")
  foreach(d ${header_dirs})
    string(APPEND build "include ${d}\n")
  endforeach()
  string(APPEND inst "include @/include/poc\n")
  string(APPEND build "templates ${template_dirs}\n")
  string(APPEND inst "templates @/share/poc/templates\n")
  set(files "")
  foreach(t ${runtime})
    string(APPEND build "runtime $<TARGET_FILE:${t}>\n")
    string(APPEND inst "runtime @/lib/poc/$<TARGET_FILE_NAME:${t}>\n")
    list(APPEND files "$<TARGET_FILE:${t}>")
  endforeach()
  foreach(kv "cflag;${cflags}" "link;${args}")
    list(POP_FRONT kv key)
    foreach(v ${kv})
      string(APPEND build "${key} ${v}\n")
      string(APPEND inst "${key} ${v}\n")
    endforeach()
  endforeach()
  file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/lib/poc/link.txt CONTENT "${build}")
  file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/CMakeFiles/poc-install/link.txt CONTENT "${inst}")

  install(TARGETS ${runtime} ARCHIVE DESTINATION lib/poc PUBLIC_HEADER DESTINATION include/poc)
  install(FILES ${PROJECT_BINARY_DIR}/CMakeFiles/poc-install/link.txt DESTINATION lib/poc)
  install(FILES ${A_TEMPLATES} DESTINATION share/poc/templates)

  message(STATUS "poc: generated programs link ${runtime} and ${args}")
  set(POC_LINK_RUNTIME_FILES "${files}" PARENT_SCOPE)
  set(POC_LINK_CFLAGS "${cflags}" PARENT_SCOPE)
  set(POC_LINK_ARGS "${args}" PARENT_SCOPE)
endfunction()
