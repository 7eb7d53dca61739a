// libzstd (Debian's libzstd-dev): the streamed export compresses its members itself, one
// zstd frame after another, because libarchive cannot leave a tar header patchable.
#include <zstd.h>
