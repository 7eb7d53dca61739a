// libseccomp (Debian's libseccomp-dev): compiles a container's seccomp profile into the
// BPF program the spawn shim loads. Only FerryRuntime's SeccompFilter uses it.
#include <seccomp.h>
