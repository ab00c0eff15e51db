/*
 * The original FogConnect's echo server, on the pr_* names as its examples spelled them:
 * claims an ID, accepts every incoming connection and answers each datagram with "I know!".
 * The port from the original: glib's g_malloc0/g_free/g_usleep became calloc/free/nanosleep,
 * and it answers on whichever protocol the client dialled (its client uses QUIC, as the
 * original's did).
 *
 *   echo_server SIGNAL_HOST SIGNAL_PORT STUN_HOST:PORT ID [ANSWERS]
 *
 * Exits 0 after ANSWERS answers (default: runs until killed).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fogconnect.h"

static atomic_int answers;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_recv(fc_conn conn, const uint8_t *data, size_t len)
{
    static const char reply[] = "I know!";
    printf("server received: %.*s\n", (int)len, (const char *)data);
    int rc = pr_send_peer(conn, (const uint8_t *)reply, strlen(reply));
    if (rc != FC_OK) {
        printf("server: pr_send_peer: %s\n", pr_errno_mgs(rc));
    } else {
        atomic_fetch_add(&answers, 1);
    }
    fflush(stdout);
}

static void on_close(fc_conn conn, int event)
{
    const char *why = event == PR_EVENT_EOF       ? "EOF"
                      : event == PR_EVENT_TIMEOUT ? "timeout"
                      : event == PR_EVENT_ERROR   ? "error"
                                                  : "disconnect";
    printf("server: connection %lld ended (%s)\n", (long long)conn, why);
    fflush(stdout);
}

/* The passive-link callback: a peer dialled us. */
static int on_passive_link(fc_context *ctx, fc_conn conn, const char *peer, int service, void *arg)
{
    (void)ctx;
    (void)arg;
    printf("server: incoming from %s, service %d, passive %d, convention 0x%x\n", peer, service,
           pr_connect_is_passive(conn), pr_get_convention_number(conn));
    fflush(stdout);
    int rc = pr_event_setcb(conn, on_recv, on_close);
    return rc == FC_OK ? FC_ACCEPT : FC_REFUSE;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s SIGNAL_HOST SIGNAL_PORT STUN ID [ANSWERS]\n", argv[0]);
        return 2;
    }
    int wanted = argc > 5 ? atoi(argv[5]) : 0;
    fc_context *ctx = pr_fogconnect_init();
    if (ctx == NULL) {
        fprintf(stderr, "pr_fogconnect_init failed\n");
        return 1;
    }
    int rc = set_id(ctx, argv[4]);
    if (rc == FC_OK) rc = pr_fogconnect_set_callback(ctx, on_passive_link, NULL);
    struct pr_signal_server *server = calloc(1, sizeof *server);
    if (server == NULL) return 1;
    server->ctx = ctx;
    server->url = argv[1];
    server->type = "/ws";
    server->port = atoi(argv[2]);
    server->stun = argv[3];
    if (rc == FC_OK) rc = pr_init_signal(server);
    /* Not in the original: wait until the server has our ID, so clients can dial it. */
    if (rc == FC_OK) rc = fc_wait_ready(ctx, 20000);
    if (rc != FC_OK) {
        fprintf(stderr, "server: %s\n", pr_errno_mgs(rc));
        pr_fogconnect_release(ctx);
        free(server);
        return 1;
    }
    printf("echo server %s ready\n", argv[4]);
    fflush(stdout);
    while (wanted == 0 || atomic_load(&answers) < wanted) {
        sleep_ms(10);
    }
    rc = pr_fogconnect_release(ctx);
    free(server);
    printf("server: released (%s)\n", pr_errno_mgs(rc));
    return rc == FC_OK ? 0 : 1;
}
