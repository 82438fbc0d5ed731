/* home.h — where poc's own files are: the runtime headers generated code includes, the
 * code generator's templates, the runtime libraries and what they link with.
 *
 * They are described by lib/poc/link.txt (written by CMake, cmake/PocLink.cmake) under
 * the *home*: $POC_HOME when set, else the nearest directory holding lib/poc/link.txt
 * among the one poc's executable is in and those above it. That is <prefix> for an
 * installed <prefix>/bin/poc and the build tree for the poc built there, so an
 * installation can be moved as a whole and poc never looks at the source or build tree
 * it came from. */
#ifndef POC_HOME_H
#define POC_HOME_H

typedef struct poc_home {
  char *root; /* the home */
  char *desc; /* its lib/poc/link.txt */
  char *include, *templates;
  char **runtime, **cflags, **link; /* NULL-terminated; "@/" expanded */
  int nruntime, ncflags, nlink;
  char *text; /* link.txt as read, for poc run's cache key */
} poc_home;

/* The home, found and read once; NULL after saying on stderr what is missing. */
const poc_home *poc_home_get(void);

#endif
