/* faultproxy.h: a fault-injecting TCP proxy on 127.0.0.1 that tests control (cut, stall, drop, flip, slow, hook). */
#ifndef RMAPVM_TEST_FAULTPROXY_H
#define RMAPVM_TEST_FAULTPROXY_H

/*
 * The proxy listens on 127.0.0.1 (an ephemeral port) and relays every
 * connection it accepts to 127.0.0.1:upstream, one thread per connection.
 * Loopback only: no other address is ever bound or connected to.
 *
 * A fault applies to one direction of one connection (connections are
 * numbered in accept order; conn = -1 means every connection) and fires
 * when that direction has relayed @at bytes. It does not depend on the
 * migration code: tests/faults only.
 */
#include <stdbool.h>
#include <stdint.h>

enum fp_kind {
	FP_NONE,
	FP_CUT,		/* at @at: reset both sides (RST), as a dead link or a killed peer */
	FP_STALL,	/* at @at: stop reading that direction for @len ms (0 = until the proxy stops) */
	FP_DROP,	/* bytes [at, at + len) are not relayed */
	FP_FLIP,	/* byte @at is xor-ed with @xor */
	FP_SLOW,	/* from @at on, relay at most @rate bytes/s */
	FP_HOOK,	/* at @at: call @hook(@hook_arg) once, keep relaying */
};

enum fp_dir {
	FP_S2D,		/* client (migration source) -> upstream (destination) */
	FP_D2S,		/* upstream -> client: the destination's verdict */
};

struct fp_fault {
	enum fp_kind kind;
	enum fp_dir dir;
	int conn;		/* connection index, -1 = all */
	uint64_t at;		/* byte offset in that direction of that connection */
	uint64_t len;		/* DROP: bytes; STALL: ms */
	uint8_t xor;		/* FLIP: non-zero */
	uint64_t rate;		/* SLOW: bytes/s */
	void (*hook)(void *arg);
	void *hook_arg;
};

struct faultproxy;

/* Start a proxy to 127.0.0.1:@upstream_port with @f (NULL = none). 0 or -errno. */
int fp_start(uint16_t upstream_port, const struct fp_fault *f, struct faultproxy **out);
/* The port the proxy listens on (127.0.0.1). */
uint16_t fp_port(const struct faultproxy *p);
/* "tcp:127.0.0.1:PORT" of the proxy. */
const char *fp_uri(const struct faultproxy *p);
/* True once the fault fired (on any connection). */
bool fp_fired(const struct faultproxy *p);
/* Connections accepted so far. */
int fp_conns(const struct faultproxy *p);
/* Bytes relayed in @dir over all connections. */
uint64_t fp_bytes(const struct faultproxy *p, enum fp_dir dir);
/* Reset every open connection now. */
void fp_cut_all(struct faultproxy *p);
/* Stop: reset every connection, join the threads, free. */
void fp_stop(struct faultproxy *p);

/* A free TCP port on 127.0.0.1 (bound and released: racy, good enough for tests). */
uint16_t fp_free_port(void);

#endif /* RMAPVM_TEST_FAULTPROXY_H */
