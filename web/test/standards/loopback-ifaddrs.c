/*
 * A getifaddrs() for Janus in tests: the only interface it reports is the loopback address
 * 127.0.0.1, without the IFF_LOOPBACK flag.
 *
 * Why: Janus 1.1.2 skips every interface flagged IFF_LOOPBACK when it picks the addresses to
 * gather ICE candidates on (src/ice.c, janus_ice_setup_local: "Skip loopback interfaces"), and
 * libnice does the same when Janus gives it none (agent/interfaces.c,
 * nice_interfaces_get_local_ips(FALSE)). Without this shim, Janus's media sockets would bind to
 * the host's other addresses; the tests' network rules keep everything on 127.0.0.1.
 *
 * Loaded with LD_PRELOAD into the Janus process that web/test/standards/janus.mjs starts, and
 * nowhere else. Each list is one allocation, freed by the freeifaddrs() below.
 */
#define _GNU_SOURCE
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

struct loopback_ifaddrs {
    struct ifaddrs ifa;
    struct sockaddr_in addr;
    struct sockaddr_in netmask;
    char name[4];
};

int getifaddrs(struct ifaddrs **ifap) {
    struct loopback_ifaddrs *l = calloc(1, sizeof *l);
    if (l == NULL) return -1;
    strcpy(l->name, "lo");
    l->addr.sin_family = AF_INET;
    l->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    l->netmask.sin_family = AF_INET;
    l->netmask.sin_addr.s_addr = htonl(0xff000000u);
    l->ifa.ifa_next = NULL;
    l->ifa.ifa_name = l->name;
    l->ifa.ifa_flags = IFF_UP | IFF_RUNNING;
    l->ifa.ifa_addr = (struct sockaddr *)&l->addr;
    l->ifa.ifa_netmask = (struct sockaddr *)&l->netmask;
    *ifap = &l->ifa;
    return 0;
}

void freeifaddrs(struct ifaddrs *ifa) {
    free(ifa);
}
