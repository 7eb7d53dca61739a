// libnftables (Debian's libnftables-dev): applies Ferry's nftables table (published ports,
// masquerade) as one transaction written in nft's own syntax, so no netlink message of
// nf_tables is built by hand. Only FerryNetwork's Nftables uses it.
#include <nftables/libnftables.h>
