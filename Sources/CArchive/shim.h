// libarchive (Debian's libarchive-dev): tar reading and writing with zstd/gzip filters.
#include <archive.h>
#include <archive_entry.h>
