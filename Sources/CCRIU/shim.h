// libcriu's public header, installed by `make deps` under /usr/local/include/criu.
#include <stdbool.h>
#include <criu.h>
