/* faultproxy.c: a fault-injecting TCP relay on 127.0.0.1 for the fault tests (independent of src/migrate). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "faultproxy.h"

struct fp_conn {
	struct faultproxy *p;
	int idx;
	int fd[2];		/* [0] client (source), [1] upstream (destination) */
	bool eof[2];		/* reading fd[i] hit end of stream */
	bool cut;		/* relaxed atomic: reset requested */
	uint64_t off[2];	/* bytes relayed per direction (FP_S2D reads fd[0]) */
	bool hooked;
	uint64_t slow_t0;	/* FP_SLOW: when pacing started */
	pthread_t thread;
	struct fp_conn *next;
};

struct faultproxy {
	int lfd;
	uint16_t port, upstream;
	char uri[64];
	struct fp_fault f;
	bool stop;		/* relaxed atomic */
	bool fired;		/* relaxed atomic */
	uint64_t bytes[2];	/* atomic */
	int nconns;		/* under lock */
	struct fp_conn *conns;	/* under lock */
	pthread_mutex_t lock;
	pthread_t acceptor;
};

static uint64_t fp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void fp_sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };

	nanosleep(&ts, NULL);
}

static bool fp_applies(const struct fp_conn *c, enum fp_dir d)
{
	const struct fp_fault *f = &c->p->f;

	return f->kind != FP_NONE && f->dir == d && (f->conn < 0 || f->conn == c->idx);
}

static void fp_fire(struct fp_conn *c)
{
	__atomic_store_n(&c->p->fired, true, __ATOMIC_RELAXED);
}

/* Close both sides with RST (SO_LINGER 0), as a dead peer or a cut cable would. */
static void fp_reset(struct fp_conn *c)
{
	struct linger lg = { 1, 0 };
	int i;

	pthread_mutex_lock(&c->p->lock);
	for (i = 0; i < 2; i++) {
		if (c->fd[i] < 0)
			continue;
		setsockopt(c->fd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(c->fd[i]);
		c->fd[i] = -1;
	}
	pthread_mutex_unlock(&c->p->lock);
}

static int fp_write_all(int fd, const uint8_t *b, size_t n)
{
	while (n) {
		ssize_t w = send(fd, b, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Relay one readable chunk in direction @d. Returns false when the connection is over. */
static bool fp_relay(struct fp_conn *c, enum fp_dir d, uint8_t *buf, size_t cap)
{
	const struct fp_fault *f = &c->p->f;
	int src = c->fd[d == FP_S2D ? 0 : 1], dst = c->fd[d == FP_S2D ? 1 : 0];
	uint64_t off = c->off[d];
	size_t want = cap, keep;
	bool fault = fp_applies(c, d);
	ssize_t n;

	if (fault && off < f->at &&
	    (f->kind == FP_CUT || f->kind == FP_STALL || f->kind == FP_HOOK || f->kind == FP_SLOW))
		want = (size_t)(f->at - off < want ? f->at - off : want);
	if (fault && f->kind == FP_SLOW && off >= f->at) {
		size_t step = (size_t)(f->rate / 50 + 1);

		want = step < want ? step : want;
	}
	n = recv(src, buf, want, 0);
	if (n < 0 && errno == EINTR)
		return true;
	if (n <= 0) {
		if (n < 0) { /* reset by the peer: reset the other side too */
			fp_reset(c);
			return false;
		}
		c->eof[d == FP_S2D ? 0 : 1] = true;
		shutdown(dst, SHUT_WR);
		return !(c->eof[0] && c->eof[1]);
	}
	keep = (size_t)n;
	if (fault && f->kind == FP_DROP && off + (uint64_t)n > f->at && off < f->at + f->len) {
		uint64_t a = off > f->at ? off : f->at, b = off + (uint64_t)n < f->at + f->len
								   ? off + (uint64_t)n
								   : f->at + f->len;

		memmove(buf + (a - off), buf + (b - off), (size_t)(off + (uint64_t)n - b));
		keep -= (size_t)(b - a);
		fp_fire(c);
	}
	if (fault && f->kind == FP_FLIP && f->at >= off && f->at < off + (uint64_t)n) {
		buf[f->at - off] ^= f->xor ? f->xor : 0xff;
		fp_fire(c);
	}
	if (keep && fp_write_all(dst, buf, keep)) {
		fp_reset(c);
		return false;
	}
	c->off[d] = off + (uint64_t)n;
	__atomic_fetch_add(&c->p->bytes[d], (uint64_t)n, __ATOMIC_RELAXED);
	if (fault && f->kind == FP_HOOK && c->off[d] >= f->at && !c->hooked) {
		c->hooked = true;
		fp_fire(c);
		if (f->hook)
			f->hook(f->hook_arg);
	}
	if (fault && f->kind == FP_SLOW && c->off[d] > f->at) {
		uint64_t due, now = fp_now_ns();

		if (!c->slow_t0) {
			c->slow_t0 = now;
			fp_fire(c);
		}
		due = c->slow_t0 + (c->off[d] - f->at) * 1000000000ull / (f->rate ? f->rate : 1);
		if (due > now)
			fp_sleep_ns(due - now);
	}
	return true;
}

static void *fp_conn_fn(void *arg)
{
	struct fp_conn *c = arg;
	struct faultproxy *p = c->p;
	const struct fp_fault *f = &p->f;
	uint8_t *buf = malloc(64 << 10);
	uint64_t stall_end = 0;
	int stall = 0; /* 0 not yet, 1 stalling, 2 over */

	while (buf && !__atomic_load_n(&p->stop, __ATOMIC_RELAXED)) {
		struct pollfd pfd[2];
		int d, r, sd = f->dir == FP_S2D ? 0 : 1; /* the fd a stall stops reading */

		if (__atomic_load_n(&c->cut, __ATOMIC_RELAXED)) {
			fp_reset(c);
			break;
		}
		/* faults that fire at an offset the relay has reached */
		for (d = 0; d < 2; d++) {
			if (!fp_applies(c, (enum fp_dir)d) || c->off[d] < f->at)
				continue;
			if (f->kind == FP_CUT) {
				fp_fire(c);
				fp_reset(c);
				goto out;
			}
			if (f->kind == FP_STALL && stall == 0) {
				fp_fire(c);
				stall = 1;
				stall_end = f->len ? fp_now_ns() + f->len * 1000000ull : 0;
			}
		}
		if (stall == 1 && stall_end && fp_now_ns() >= stall_end)
			stall = 2;
		/* a stall stops reading one direction; the other one flows */
		pfd[0] = (struct pollfd){ .fd = c->fd[0],
					  .events = c->eof[0] || (stall == 1 && sd == 0) ? 0 : POLLIN };
		pfd[1] = (struct pollfd){ .fd = c->fd[1],
					  .events = c->eof[1] || (stall == 1 && sd == 1) ? 0 : POLLIN };
		r = poll(pfd, 2, stall == 1 ? 10 : 50);
		if (r < 0 && errno != EINTR)
			break;
		if (r <= 0)
			continue;
		for (d = 0; d < 2; d++) {
			int i = d == FP_S2D ? 0 : 1;

			if (stall == 1 && i == sd)
				continue;
			if (!c->eof[i] && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				if (!fp_relay(c, (enum fp_dir)d, buf, 64 << 10))
					goto out;
		}
	}
out:
	free(buf);
	return NULL;
}

static void *fp_accept_fn(void *arg)
{
	struct faultproxy *p = arg;

	while (!__atomic_load_n(&p->stop, __ATOMIC_RELAXED)) {
		struct pollfd pfd = { .fd = p->lfd, .events = POLLIN };
		struct sockaddr_in up = { .sin_family = AF_INET, .sin_port = htons(p->upstream),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		struct fp_conn *c;
		int cfd, ufd, one = 1;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		cfd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0)
			continue;
		ufd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (ufd < 0 || connect(ufd, (struct sockaddr *)&up, sizeof(up))) {
			struct linger lg = { 1, 0 };

			setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			close(cfd);
			if (ufd >= 0)
				close(ufd);
			continue;
		}
		setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(cfd);
			close(ufd);
			continue;
		}
		c->p = p;
		c->fd[0] = cfd;
		c->fd[1] = ufd;
		pthread_mutex_lock(&p->lock);
		c->idx = p->nconns++;
		c->next = p->conns;
		p->conns = c;
		if (pthread_create(&c->thread, NULL, fp_conn_fn, c)) {
			p->conns = c->next;
			pthread_mutex_unlock(&p->lock);
			close(cfd);
			close(ufd);
			free(c);
			continue;
		}
		pthread_mutex_unlock(&p->lock);
	}
	return NULL;
}

int fp_start(uint16_t upstream_port, const struct fp_fault *f, struct faultproxy **out)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	struct faultproxy *p = calloc(1, sizeof(*p));
	int one = 1;

	if (!p)
		return -ENOMEM;
	p->upstream = upstream_port;
	if (f)
		p->f = *f;
	pthread_mutex_init(&p->lock, NULL);
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (p->lfd < 0)
		goto fail;
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(p->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(p->lfd, 64) ||
	    getsockname(p->lfd, (struct sockaddr *)&sa, &sl))
		goto fail;
	p->port = ntohs(sa.sin_port);
	snprintf(p->uri, sizeof(p->uri), "tcp:127.0.0.1:%u", p->port);
	if (pthread_create(&p->acceptor, NULL, fp_accept_fn, p))
		goto fail;
	*out = p;
	return 0;
fail:
	{
		int e = errno ? -errno : -EIO;

		if (p->lfd >= 0)
			close(p->lfd);
		pthread_mutex_destroy(&p->lock);
		free(p);
		return e;
	}
}

uint16_t fp_port(const struct faultproxy *p)
{
	return p->port;
}

const char *fp_uri(const struct faultproxy *p)
{
	return p->uri;
}

bool fp_fired(const struct faultproxy *p)
{
	return __atomic_load_n(&p->fired, __ATOMIC_RELAXED);
}

int fp_conns(const struct faultproxy *p)
{
	struct faultproxy *q = (struct faultproxy *)p;
	int n;

	pthread_mutex_lock(&q->lock);
	n = q->nconns;
	pthread_mutex_unlock(&q->lock);
	return n;
}

uint64_t fp_bytes(const struct faultproxy *p, enum fp_dir dir)
{
	return __atomic_load_n(&p->bytes[dir], __ATOMIC_RELAXED);
}

void fp_cut_all(struct faultproxy *p)
{
	struct fp_conn *c;

	pthread_mutex_lock(&p->lock);
	for (c = p->conns; c; c = c->next) {
		__atomic_store_n(&c->cut, true, __ATOMIC_RELAXED);
		if (c->fd[0] >= 0)
			shutdown(c->fd[0], SHUT_RDWR);
		if (c->fd[1] >= 0)
			shutdown(c->fd[1], SHUT_RDWR);
	}
	pthread_mutex_unlock(&p->lock);
}

void fp_stop(struct faultproxy *p)
{
	struct fp_conn *c, *n;

	if (!p)
		return;
	fp_cut_all(p);
	__atomic_store_n(&p->stop, true, __ATOMIC_RELAXED);
	pthread_join(p->acceptor, NULL);
	for (c = p->conns; c; c = n) {
		n = c->next;
		pthread_join(c->thread, NULL);
		if (c->fd[0] >= 0)
			close(c->fd[0]);
		if (c->fd[1] >= 0)
			close(c->fd[1]);
		free(c);
	}
	close(p->lfd);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

uint16_t fp_free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	uint16_t port = 0;

	if (fd >= 0 && !bind(fd, (struct sockaddr *)&sa, sizeof(sa)) &&
	    !getsockname(fd, (struct sockaddr *)&sa, &sl))
		port = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}
