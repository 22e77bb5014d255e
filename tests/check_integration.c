/* check_integration.c - placeholder runner, filled in below */
#include <stdlib.h>
int main(void) { return EXIT_SUCCESS; }
