/* The c-ceiling forwarder of the benchmark: the least work per packet an SRTP SFU can do on this machine.
 *
 * recvmmsg -> SRTP unprotect -> for every subscriber: copy, rewrite SSRC/seq/timestamp, SRTP protect -> sendmmsg.
 * No control logic, no RTCP, no state beyond the per-subscriber offsets. libsrtp is reached through function
 * pointers handed in by bench/forwarders.py (pylibsrtp's bundled build, the same one the engine calls), so the
 * comparison with the engine measures forwarding code, not two different crypto builds.
 * Built on demand by bench/forwarders.py with `cc -O3 -shared -fPIC`; called through ctypes (GIL released).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*srtp_fn)(void *ctx, void *packet, int *length);

enum {
    BATCH = 64,       /* datagrams per recvmmsg, as in the engine */
    RECV_BUF = 2048,
    SEND_SLOTS = 256, /* datagrams per sendmmsg, as in the engine */
    SEND_BUF = 2112,  /* a received datagram + the SRTP trailer */
    SRTP_TRAILER = 16,
};

enum { C_RECEIVED, C_FORWARDED, C_DROPPED, C_SEND_FAILED, C_COUNT };

struct sender {
    int fd;
    struct mmsghdr msgs[SEND_SLOTS];
    struct iovec iov[SEND_SLOTS];
    uint8_t *bufs;
    int count;
    uint64_t *counters;
};

static void store32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t load32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void flush(struct sender *s) {
    int sent = 0;
    while (sent < s->count) {
        int r = sendmmsg(s->fd, s->msgs + sent, (unsigned)(s->count - sent), MSG_DONTWAIT);
        if (r > 0) {
            sent += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else { /* a full socket buffer: drop the head packet, as the engine does */
            s->counters[C_SEND_FAILED]++;
            sent++;
        }
    }
    s->count = 0;
}

/* Forwards until `stop_fd` reaches end of file. `peers`, `tx`, `seq_offsets` and `ts_offsets` have `count`
 * entries (one per subscriber). Returns 0, or -1 with errno set if poll or recvmmsg fail for another reason.
 * `counters` receives C_COUNT totals. */
int ceiling_run(int fd, int stop_fd, srtp_fn unprotect, srtp_fn protect, void *rx, void **tx,
                const struct sockaddr_in *peers, const uint32_t *ssrcs, const uint16_t *seq_offsets,
                const uint32_t *ts_offsets, int count, uint64_t *counters) {
    static struct mmsghdr recv_msgs[BATCH];
    static struct iovec recv_iov[BATCH];
    static struct sender s;
    uint8_t *recv_bufs = malloc(BATCH * RECV_BUF);
    int result = 0;
    memset(counters, 0, C_COUNT * sizeof(uint64_t));
    memset(&s, 0, sizeof(s));
    s.fd = fd;
    s.counters = counters;
    s.bufs = malloc(SEND_SLOTS * SEND_BUF);
    if (recv_bufs == NULL || s.bufs == NULL) {
        free(recv_bufs);
        free(s.bufs);
        errno = ENOMEM;
        return -1;
    }
    for (int i = 0; i < BATCH; i++) {
        recv_iov[i].iov_base = recv_bufs + i * RECV_BUF;
        recv_iov[i].iov_len = RECV_BUF;
        memset(&recv_msgs[i], 0, sizeof(recv_msgs[i]));
        recv_msgs[i].msg_hdr.msg_iov = &recv_iov[i];
        recv_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (int i = 0; i < SEND_SLOTS; i++) {
        s.iov[i].iov_base = s.bufs + i * SEND_BUF;
        s.msgs[i].msg_hdr.msg_iov = &s.iov[i];
        s.msgs[i].msg_hdr.msg_iovlen = 1;
        s.msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    }
    for (;;) {
        struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            result = -1;
            break;
        }
        if (fds[1].revents) {
            char scratch[256];
            ssize_t n = read(stop_fd, scratch, sizeof(scratch));
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
                break;
        }
        if (!(fds[0].revents & POLLIN))
            continue;
        for (;;) {
            int n = recvmmsg(fd, recv_msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                result = -1;
                goto done;
            }
            for (int m = 0; m < n; m++) {
                uint8_t *in = recv_iov[m].iov_base;
                int length = (int)recv_msgs[m].msg_len;
                counters[C_RECEIVED]++;
                /* RTP only: version 2, not an RTCP packet type (RFC 5761), unprotected by libsrtp. */
                if (length < 12 || (in[0] >> 6) != 2 || (in[1] >= 192 && in[1] <= 223) ||
                    recv_msgs[m].msg_hdr.msg_flags & MSG_TRUNC || unprotect(rx, in, &length) != 0 ||
                    length + SRTP_TRAILER > SEND_BUF) {
                    counters[C_DROPPED]++;
                    continue;
                }
                uint16_t seq = (uint16_t)((in[2] << 8) | in[3]);
                uint32_t ts = load32(in + 4);
                for (int i = 0; i < count; i++) {
                    int slot = s.count;
                    uint8_t *out = s.bufs + slot * SEND_BUF;
                    int out_length = length;
                    memcpy(out, in, (size_t)length);
                    uint16_t out_seq = (uint16_t)(seq + seq_offsets[i]);
                    out[2] = (uint8_t)(out_seq >> 8);
                    out[3] = (uint8_t)out_seq;
                    store32(out + 4, ts + ts_offsets[i]);
                    store32(out + 8, ssrcs[i]);
                    if (protect(tx[i], out, &out_length) != 0) {
                        counters[C_DROPPED]++;
                        continue;
                    }
                    s.iov[slot].iov_len = (size_t)out_length;
                    s.msgs[slot].msg_hdr.msg_name = (void *)&peers[i];
                    counters[C_FORWARDED]++;
                    if (++s.count == SEND_SLOTS)
                        flush(&s);
                }
            }
            flush(&s);
            if (n < BATCH)
                break;
        }
    }
done:
    free(recv_bufs);
    free(s.bufs);
    return result;
}
