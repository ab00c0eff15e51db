/*
 * A publish/subscribe hub on the fc_* names: one hub, any number of subscribers, publishers
 * whose messages the hub hands to every subscriber. One program, three roles:
 *
 *   hub SIGNAL_URL STUN serve HUB_ID [PUBLICATIONS]   the hub (exits after PUBLICATIONS)
 *   hub SIGNAL_URL STUN sub HUB_ID                    prints the first message, exits 0
 *   hub SIGNAL_URL STUN pub HUB_ID MESSAGE            exits 0 once the hub handed it on
 *
 * Over datagrams: a subscriber sends "SUB" until the hub answers "SUBSCRIBED"; a publisher
 * sends "PUB <message>" until the hub answers "DELIVERED <n>", after sending "MSG <message>"
 * to each of its n subscribers. Callbacks run on the context's event thread, one at a time, so
 * the hub's table needs no lock.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fogconnect.h"

#define MAX_SUBSCRIBERS 64
#define SERVICE 9

static fc_conn subscribers[MAX_SUBSCRIBERS];
static int subscriber_count;
static atomic_int publications;

/* The client roles' state: 0 waiting, 1 done, -1 failed; the live connection. */
static atomic_int outcome;
static _Atomic fc_conn hub_link;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int send_text(fc_conn conn, const char *text)
{
    return fc_send(conn, (const uint8_t *)text, strlen(text));
}

static int starts_with(const uint8_t *data, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(data, prefix, n) == 0;
}

static void forget_subscriber(fc_conn conn)
{
    for (int i = 0; i < subscriber_count; i++) {
        if (subscribers[i] == conn) {
            subscribers[i] = subscribers[--subscriber_count];
            return;
        }
    }
}

static void hub_event(fc_conn conn, int event, const uint8_t *data, size_t len, void *arg)
{
    (void)arg;
    if (event == FC_EVENT_DATA && starts_with(data, len, "SUB")) {
        /* The userdata marks a connection already subscribed (a repeated SUB). */
        if (fc_get_userdata(conn) == NULL && subscriber_count < MAX_SUBSCRIBERS) {
            subscribers[subscriber_count++] = conn;
            fc_set_userdata(conn, &subscribers[0]);
            printf("hub: subscriber %d joined\n", subscriber_count);
        }
        send_text(conn, "SUBSCRIBED");
    } else if (event == FC_EVENT_DATA && starts_with(data, len, "PUB ")) {
        char out[FC_MAX_DATAGRAM + 1];
        int n = snprintf(out, sizeof out, "MSG %.*s", (int)(len - 4), (const char *)data + 4);
        int delivered = 0;
        for (int i = 0; n > 0 && i < subscriber_count; i++) {
            if (send_text(subscribers[i], out) == FC_OK) delivered++;
        }
        char reply[32];
        snprintf(reply, sizeof reply, "DELIVERED %d", delivered);
        send_text(conn, reply);
        printf("hub: published \"%.*s\" to %d subscribers\n", (int)(len - 4),
               (const char *)data + 4, delivered);
        atomic_fetch_add(&publications, 1);
    } else if (event == FC_EVENT_EOF || event == FC_EVENT_ERROR || event == FC_EVENT_TIMEOUT ||
               event == FC_EVENT_DISCONNECT) {
        forget_subscriber(conn);
    }
    fflush(stdout);
}

static int hub_incoming(fc_context *ctx, fc_conn conn, const char *peer, int service, void *arg)
{
    (void)ctx;
    (void)peer;
    (void)arg;
    if (service != SERVICE) return FC_REFUSE;
    return fc_event_setcb(conn, hub_event, NULL) == FC_OK ? FC_ACCEPT : FC_REFUSE;
}

static void client_event(fc_conn conn, int event, const uint8_t *data, size_t len, void *arg)
{
    const char *role = arg;
    if (event == FC_EVENT_CONNECTED) {
        atomic_store(&hub_link, conn);
    } else if (event == FC_EVENT_DATA && strcmp(role, "sub") == 0) {
        if (starts_with(data, len, "SUBSCRIBED") && atomic_load(&outcome) == 0) {
            printf("subscribed\n");
            atomic_store(&outcome, 2);
        } else if (starts_with(data, len, "MSG ")) {
            printf("received: %.*s\n", (int)(len - 4), (const char *)data + 4);
            atomic_store(&outcome, 1);
        }
    } else if (event == FC_EVENT_DATA && starts_with(data, len, "DELIVERED ")) {
        printf("delivered to %.*s subscribers\n", (int)(len - 10), (const char *)data + 10);
        atomic_store(&outcome, 1);
    } else if (event != FC_EVENT_DATA && event != FC_EVENT_PATH_CHANGED) {
        printf("%s: connection ended (event %d): %s\n", role, event, (const char *)data);
        atomic_store(&outcome, -1);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr,
                "usage: %s SIGNAL_URL STUN serve|sub|pub HUB_ID [PUBLICATIONS|MESSAGE]\n",
                argv[0]);
        return 2;
    }
    const char *role = argv[3];
    const char *hub = argv[4];
    int serve = strcmp(role, "serve") == 0;
    if (!serve && strcmp(role, "sub") != 0 && (strcmp(role, "pub") != 0 || argc < 6)) {
        fprintf(stderr, "unknown role or missing message\n");
        return 2;
    }
    fc_context *ctx = fc_init();
    if (ctx == NULL) return 1;
    int rc = FC_OK;
    if (serve) {
        rc = fc_set_id(ctx, hub);
        if (rc == FC_OK) rc = fc_passive_link_setcb(ctx, hub_incoming, NULL);
    }
    if (rc == FC_OK) rc = fc_signal_init(ctx, argv[1], argv[2], NULL, NULL);
    if (rc == FC_OK) rc = fc_wait_ready(ctx, 20000);
    if (rc != FC_OK) {
        fprintf(stderr, "%s: %s\n", role, fc_strerror(rc));
        fc_release(ctx);
        return 1;
    }
    int ok;
    if (serve) {
        int wanted = argc > 5 ? atoi(argv[5]) : 0;
        printf("hub %s ready\n", hub);
        fflush(stdout);
        while (wanted == 0 || atomic_load(&publications) < wanted) sleep_ms(10);
        /* A moment for the last datagrams to leave before the connections close. */
        sleep_ms(200);
        ok = 1;
    } else {
        fc_conn conn = fc_connect(ctx, hub, FC_PROTOCOL_DATAGRAM, SERVICE, client_event,
                                  (void *)role);
        if (conn < 0) {
            fprintf(stderr, "%s: fc_connect: %s\n", role, fc_strerror((int)conn));
            fc_release(ctx);
            return 1;
        }
        char request[FC_MAX_DATAGRAM + 1];
        if (strcmp(role, "sub") == 0) {
            snprintf(request, sizeof request, "SUB");
        } else {
            snprintf(request, sizeof request, "PUB %s", argv[5]);
        }
        /* Ask again every half second until the hub answers; then wait for the message. */
        for (int tick = 0; tick < 6000 && atomic_load(&outcome) != 1 &&
                           atomic_load(&outcome) != -1;
             tick++) {
            fc_conn c = atomic_load(&hub_link);
            if (c > 0 && atomic_load(&outcome) == 0 && tick % 50 == 0) send_text(c, request);
            sleep_ms(10);
        }
        ok = atomic_load(&outcome) == 1;
    }
    rc = fc_release(ctx);
    return ok && rc == FC_OK ? 0 : 1;
}
