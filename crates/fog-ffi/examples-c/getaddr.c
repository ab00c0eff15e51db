/*
 * Prints this node's NAT type and candidates, as the original FogConnect's getaddr did, on
 * the fc_* names: starts a node, waits for discovery, prints fc_nat_report.
 *
 *   getaddr SIGNAL_URL STUN_HOST[:PORT]
 */
#include <stdio.h>

#include "fogconnect.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SIGNAL_URL STUN\n", argv[0]);
        return 2;
    }
    fc_context *ctx = fc_init();
    if (ctx == NULL) return 1;
    char id[128];
    char report[4096];
    int rc = fc_signal_init(ctx, argv[1], argv[2], NULL, NULL);
    if (rc == FC_OK) rc = fc_wait_ready(ctx, 20000);
    if (rc >= FC_OK) rc = fc_get_peer_id(ctx, id, sizeof id);
    if (rc >= FC_OK) printf("peer id: %s\n", id);
    if (rc >= FC_OK) rc = fc_nat_report(ctx, report, sizeof report);
    if (rc >= FC_OK) fputs(report, stdout);
    if (rc < FC_OK) fprintf(stderr, "getaddr: %s\n", fc_strerror(rc));
    int released = fc_release(ctx);
    return rc >= FC_OK && released == FC_OK ? 0 : 1;
}
