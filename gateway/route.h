/* placeholder: the gateway work defines the routing module here */
#ifndef KILN_ROUTE_H_INCLUDED
#define KILN_ROUTE_H_INCLUDED
#include <stdbool.h>
void kiln_route_test (bool verbose);
#endif
