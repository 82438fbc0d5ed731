#include "mt.h"
int main(void) { return check_summary("todo"); }
