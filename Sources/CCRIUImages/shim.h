// CRIU's image descriptors (images/*.proto, MIT), compiled with protobuf-c by `make deps`
// into libcriu-images.a under /usr/local. Only the images Ferry reads are included.
#include <pstree.pb-c.h>
#include <core.pb-c.h>
#include <mm.pb-c.h>
#include <stats.pb-c.h>
#include <pagemap.pb-c.h>
#include <fdinfo.pb-c.h>
#include <inventory.pb-c.h>
