/*
 * The original FogConnect's echo client, on the pr_* names as its examples spelled them:
 * dials the server's ID over QUIC, sends "I am fog data!" and waits for "I know!". Ported as
 * echo_server.c was (calloc/free/nanosleep for glib).
 *
 *   echo_client SIGNAL_HOST SIGNAL_PORT STUN_HOST:PORT SERVER_ID
 *
 * Exits 0 once the answer came, 1 on failure or after 20 seconds.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fogconnect.h"

static const char message[] = "I am fog data!";

/* 0 waiting, 1 answered, -1 failed. */
static atomic_int outcome;
static _Atomic fc_conn connected;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_recv(fc_conn conn, const uint8_t *data, size_t len)
{
    (void)conn;
    printf("client received: %.*s\n", (int)len, (const char *)data);
    fflush(stdout);
    if (len == strlen("I know!") && memcmp(data, "I know!", len) == 0) {
        atomic_store(&outcome, 1);
    }
}

static void on_close(fc_conn conn, int event)
{
    printf("client: connection %lld ended (event %d)\n", (long long)conn, event);
    fflush(stdout);
    int waiting = 0;
    atomic_compare_exchange_strong(&outcome, &waiting, -1);
}

static void on_event(fc_conn conn, int event, const uint8_t *data, size_t len, void *arg)
{
    (void)arg;
    (void)len;
    if (event == PR_EVENT_CONNECTED) {
        printf("client: connected, passive %d, convention 0x%x\n", pr_connect_is_passive(conn),
               pr_get_convention_number(conn));
        fflush(stdout);
        pr_event_setcb(conn, on_recv, on_close);
        pr_connect_set_userdata(conn, (void *)message);
        atomic_store(&connected, conn);
    } else if (event == PR_EVENT_ERROR || event == PR_EVENT_TIMEOUT) {
        printf("client: failed (event %d): %s\n", event, (const char *)data);
        fflush(stdout);
        atomic_store(&outcome, -1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s SIGNAL_HOST SIGNAL_PORT STUN SERVER_ID\n", argv[0]);
        return 2;
    }
    fc_context *ctx = pr_fogconnect_init();
    if (ctx == NULL) {
        fprintf(stderr, "pr_fogconnect_init failed\n");
        return 1;
    }
    struct pr_signal_server *server = calloc(1, sizeof *server);
    if (server == NULL) return 1;
    server->ctx = ctx;
    server->url = argv[1];
    server->type = "/ws";
    server->port = atoi(argv[2]);
    server->stun = argv[3];
    int rc = set_id(ctx, "00:16:3e:00:00:02");
    if (rc == FC_OK) rc = pr_init_signal(server);
    if (rc != FC_OK) {
        fprintf(stderr, "client: %s\n", pr_errno_mgs(rc));
        return 1;
    }
    /* QUIC, as the original: reliable, ordered messages. */
    fc_conn conn = pr_connect_peer(ctx, argv[4], PR_TRANSPORT_PROTOCOL_QUIC, 7, on_event, NULL);
    if (conn < 0) {
        fprintf(stderr, "client: pr_connect_peer: %s\n", pr_errno_mgs((int)conn));
        return 1;
    }
    /* Until the answer comes, send again every second (QUIC delivers each one; the server
       answers every message it gets). */
    for (int tick = 0; tick < 2000 && atomic_load(&outcome) == 0; tick++) {
        fc_conn c = atomic_load(&connected);
        if (c > 0 && tick % 100 == 0) {
            const char *text = pr_connect_get_userdata(c);
            rc = pr_send_peer(c, (const uint8_t *)text, strlen(text));
            printf("client: sent \"%s\" (%s)\n", text, pr_errno_mgs(rc));
            fflush(stdout);
        }
        sleep_ms(10);
    }
    int ok = atomic_load(&outcome) == 1;
    pr_fogconnect_release(ctx);
    free(server);
    printf("client: %s\n", ok ? "done" : "no answer");
    return ok ? 0 : 1;
}
