/* chan.c: migration transports (tcp, unix, file), URIs, and checksummed record I/O on a channel. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "migrate_internal.h"

int mig_err(int r, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

const char *mig_rec_name(unsigned int type)
{
	static const char *const names[] = {
		[MIG_REC_HELLO] = "HELLO", [MIG_REC_PAGES] = "PAGES", [MIG_REC_ZERO] = "ZERO",
		[MIG_REC_ROUND] = "ROUND", [MIG_REC_VCPU] = "VCPU",   [MIG_REC_DIGEST] = "DIGEST",
		[MIG_REC_END] = "END",	   [MIG_REC_ABORT] = "ABORT", [MIG_REC_ACK] = "ACK",
	};

	if (type >= 1 && type <= MIG_REC_TYPE_MAX)
		return names[type];
	return "unknown";
}

/* ---- URIs ---- */

int mig_uri_parse(const char *uri, struct mig_uri *u, char *err, size_t errlen)
{
	const char *rest, *colon;
	size_t hl;

	memset(u, 0, sizeof(*u));
	if (!uri)
		return mig_err(-EINVAL, err, errlen, "no URI");
	if (!strncmp(uri, "unix:", 5) || !strncmp(uri, "file:", 5)) {
		u->kind = uri[0] == 'u' ? MIG_URI_UNIX : MIG_URI_FILE;
		rest = uri + 5;
		if (!*rest || strlen(rest) >= sizeof(u->path) ||
		    (u->kind == MIG_URI_UNIX && strlen(rest) >= sizeof(((struct sockaddr_un *)0)->sun_path)))
			return mig_err(-EINVAL, err, errlen, "URI '%s': empty or overlong path", uri);
		strcpy(u->path, rest);
		return 0;
	}
	if (strncmp(uri, "tcp:", 4))
		return mig_err(-EINVAL, err, errlen,
			       "URI '%s': expected tcp:HOST:PORT, unix:PATH or file:PATH", uri);
	rest = uri + 4;
	u->kind = MIG_URI_TCP;
	if (rest[0] == '[') {
		const char *close = strchr(rest, ']');

		if (!close || close[1] != ':')
			return mig_err(-EINVAL, err, errlen, "URI '%s': bad [IPv6]:PORT", uri);
		hl = (size_t)(close - rest - 1);
		if (hl >= sizeof(u->host))
			return mig_err(-EINVAL, err, errlen, "URI '%s': host too long", uri);
		memcpy(u->host, rest + 1, hl);
		colon = close + 1;
	} else {
		colon = strrchr(rest, ':');
		if (!colon)
			return mig_err(-EINVAL, err, errlen, "URI '%s': missing :PORT", uri);
		hl = (size_t)(colon - rest);
		if (hl >= sizeof(u->host))
			return mig_err(-EINVAL, err, errlen, "URI '%s': host too long", uri);
		memcpy(u->host, rest, hl);
	}
	colon++;
	{
		char *end;
		unsigned long port = strtoul(colon, &end, 10);

		if (!*colon || *end || port > 65535 || colon[0] == '-' || colon[0] == '+')
			return mig_err(-EINVAL, err, errlen, "URI '%s': port '%s' is not 0..65535",
				       uri, colon);
		snprintf(u->port, sizeof(u->port), "%lu", port);
	}
	if (!u->host[0])
		strcpy(u->host, "0.0.0.0");
	return 0;
}

/* ---- listeners and connections ---- */

struct mig_listener {
	struct mig_uri uri;
	int fd;			/* listening socket, -1 for file */
	bool file_used;		/* file: only one channel */
	char effective[300];	/* URI with the bound port */
};

static void sock_tune(int fd, bool tcp)
{
	int one = 1, buf = 4 << 20;

	if (tcp)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

int mig_listen(const char *uri, struct mig_listener **out, char *err, size_t errlen)
{
	struct mig_listener *l;
	int r, fd = -1, one = 1;

	l = calloc(1, sizeof(*l));
	if (!l)
		return mig_err(-ENOMEM, err, errlen, "out of memory");
	l->fd = -1;
	r = mig_uri_parse(uri, &l->uri, err, errlen);
	if (r)
		goto fail;
	snprintf(l->effective, sizeof(l->effective), "%s", uri);
	if (l->uri.kind == MIG_URI_FILE) {
		*out = l;
		return 0;
	}
	if (l->uri.kind == MIG_URI_UNIX) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		struct stat st;

		strcpy(sa.sun_path, l->uri.path);
		if (!stat(l->uri.path, &st) && S_ISSOCK(st.st_mode))
			unlink(l->uri.path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 64)) {
			r = mig_err(-errno, err, errlen, "listen on unix:%s: %s", l->uri.path,
				    strerror(errno));
			goto fail;
		}
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int gr = getaddrinfo(l->uri.host, l->uri.port, &hints, &ai);

		if (gr) {
			r = mig_err(-EINVAL, err, errlen, "tcp:%s:%s: %s", l->uri.host, l->uri.port,
				    gai_strerror(gr));
			goto fail;
		}
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0)
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 64)) {
			r = mig_err(-errno, err, errlen, "listen on tcp:%s:%s: %s", l->uri.host,
				    l->uri.port, strerror(errno));
			freeaddrinfo(ai);
			goto fail;
		}
		freeaddrinfo(ai);
		if (!getsockname(fd, (struct sockaddr *)&ss, &sl)) {
			int port = ss.ss_family == AF_INET6
					   ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
					   : ntohs(((struct sockaddr_in *)&ss)->sin_port);

			snprintf(l->effective, sizeof(l->effective), "tcp:%s%s%s:%d",
				 strchr(l->uri.host, ':') ? "[" : "", l->uri.host,
				 strchr(l->uri.host, ':') ? "]" : "", port);
		}
	}
	l->fd = fd;
	*out = l;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	free(l);
	return r;
}

const char *mig_listener_uri(const struct mig_listener *l)
{
	return l->effective;
}

bool mig_listener_multi(const struct mig_listener *l)
{
	return l->uri.kind != MIG_URI_FILE;
}

void mig_listener_close(struct mig_listener *l)
{
	if (!l)
		return;
	if (l->fd >= 0) {
		close(l->fd);
		if (l->uri.kind == MIG_URI_UNIX)
			unlink(l->uri.path);
	}
	free(l);
}

int mig_accept(struct mig_listener *l, uint32_t timeout_ms, int *fd, bool *is_socket, char *err,
	       size_t errlen)
{
	struct pollfd pfd = { .fd = l->fd, .events = POLLIN };
	int r, cfd;

	if (l->uri.kind == MIG_URI_FILE) {
		if (l->file_used)
			return mig_err(-EPROTO, err, errlen, "a file: stream has one channel only");
		cfd = open(l->uri.path, O_RDONLY | O_CLOEXEC);
		if (cfd < 0)
			return mig_err(-errno, err, errlen, "open %s: %s", l->uri.path, strerror(errno));
		l->file_used = true;
		*fd = cfd;
		*is_socket = false;
		return 0;
	}
	do {
		r = poll(&pfd, 1, timeout_ms ? (int)timeout_ms : -1);
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		return mig_err(-errno, err, errlen, "poll: %s", strerror(errno));
	if (r == 0)
		return mig_err(-ETIMEDOUT, err, errlen, "no connection on %s within %u ms",
			       l->effective, timeout_ms);
	cfd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
	if (cfd < 0)
		return mig_err(-errno, err, errlen, "accept: %s", strerror(errno));
	sock_tune(cfd, l->uri.kind == MIG_URI_TCP);
	*fd = cfd;
	*is_socket = true;
	return 0;
}

int mig_connect(const struct mig_uri *u, int *fd, bool *is_socket, char *err, size_t errlen)
{
	int cfd;

	if (u->kind == MIG_URI_FILE) {
		cfd = open(u->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (cfd < 0)
			return mig_err(-errno, err, errlen, "create %s: %s", u->path, strerror(errno));
		*fd = cfd;
		*is_socket = false;
		return 0;
	}
	if (u->kind == MIG_URI_UNIX) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		strcpy(sa.sun_path, u->path);
		cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (cfd < 0)
			return mig_err(-errno, err, errlen, "socket: %s", strerror(errno));
		sock_tune(cfd, false);
		if (connect(cfd, (struct sockaddr *)&sa, sizeof(sa))) {
			int e = errno;

			close(cfd);
			return mig_err(-e, err, errlen, "connect unix:%s: %s", u->path, strerror(e));
		}
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai, *p;
		int gr = getaddrinfo(u->host, u->port, &hints, &ai), e = ECONNREFUSED;

		if (gr)
			return mig_err(-EINVAL, err, errlen, "tcp:%s:%s: %s", u->host, u->port,
				       gai_strerror(gr));
		cfd = -1;
		for (p = ai; p; p = p->ai_next) {
			cfd = socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (cfd < 0) {
				e = errno;
				continue;
			}
			sock_tune(cfd, true);
			if (!connect(cfd, p->ai_addr, p->ai_addrlen))
				break;
			e = errno;
			close(cfd);
			cfd = -1;
		}
		freeaddrinfo(ai);
		if (cfd < 0)
			return mig_err(-e, err, errlen, "connect tcp:%s:%s: %s", u->host, u->port,
				       strerror(e));
	}
	*fd = cfd;
	*is_socket = true;
	return 0;
}

/* ---- channels ---- */

void chan_init(struct mig_chan *c, int fd, bool is_socket, uint32_t index)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->is_socket = is_socket;
	c->index = index;
	pthread_mutex_init(&c->lock, NULL);
}

void chan_close(struct mig_chan *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	pthread_mutex_destroy(&c->lock);
}

void chan_abort(struct mig_chan *c, bool writes_only)
{
	int fd = MIG_READ_ONCE(c->fd);

	if (fd >= 0 && c->is_socket)
		shutdown(fd, writes_only ? SHUT_WR : SHUT_RDWR);
}

int chan_write_all(struct mig_chan *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = c->is_socket ? send(c->fd, p, len, MSG_NOSIGNAL) : write(c->fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		p += n;
		len -= (size_t)n;
		MIG_ADD(c->bytes, (uint64_t)n);
	}
	return 0;
}

int chan_write_preamble(struct mig_chan *c)
{
	struct mig_preamble pre = { .major = MIG_ABI_MAJOR, .minor = MIG_ABI_MINOR,
				    .page_size = PAGE_SIZE };

	memcpy(pre.magic, MIG_MAGIC, 8);
	return chan_write_all(c, &pre, sizeof(pre));
}

static uint64_t rec_seed(const struct mig_rec_hdr *h)
{
	return XXH3_64bits(h, 16);
}

int chan_write_rec(struct mig_chan *c, uint16_t type, uint16_t flags, const struct iovec *iov,
		   int n, uint64_t pages)
{
	struct mig_rec_hdr h = { .type = type, .flags = flags };
	/*
	 * XXH3_state_t wants 64-byte alignment, which a stack slot does not get
	 * under every sanitizer build: take the library's aligned allocation.
	 */
	XXH3_state_t *st = XXH3_createState();
	size_t len = 0;
	int i, r = 0;

	if (!st)
		return -ENOMEM;

	for (i = 0; i < n; i++)
		len += iov[i].iov_len;
	if (len > MIG_MAX_PAYLOAD) {
		XXH3_freeState(st);
		return -EMSGSIZE;
	}
	h.len = (uint32_t)len;
	pthread_mutex_lock(&c->lock);
	h.seq = c->seq;
	XXH3_64bits_reset_withSeed(st, rec_seed(&h));
	for (i = 0; i < n; i++)
		XXH3_64bits_update(st, iov[i].iov_base, iov[i].iov_len);
	h.csum = XXH3_64bits_digest(st);
	r = chan_write_all(c, &h, sizeof(h));
	for (i = 0; !r && i < n; i++)
		r = chan_write_all(c, iov[i].iov_base, iov[i].iov_len);
	if (!r) {
		c->seq++;
		c->pages += pages;
	}
	pthread_mutex_unlock(&c->lock);
	XXH3_freeState(st);
	return r;
}

int chan_read_all(struct mig_chan *c, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n;

		if (c->io_timeout_ms) {
			struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
			int pr = poll(&pfd, 1, (int)c->io_timeout_ms);

			if (pr < 0 && errno == EINTR)
				continue;
			if (pr < 0)
				return -errno;
			if (pr == 0)
				return -ETIMEDOUT;
		}
		n = read(c->fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return got ? -EPIPE : -ENODATA;
		got += (size_t)n;
		MIG_ADD(c->bytes, (uint64_t)n);
	}
	return 0;
}

static const char *io_reason(int r, char *buf, size_t len)
{
	if (r == -ENODATA || r == -EPIPE)
		return "stream truncated (end of stream)";
	if (r == -ETIMEDOUT)
		return "the source went silent (timeout)";
	snprintf(buf, len, "read error: %s", strerror(-r));
	return buf;
}

int chan_read_preamble(struct mig_chan *c, char *err, size_t errlen)
{
	struct mig_preamble pre;
	char tmp[96];
	int r = chan_read_all(c, &pre, sizeof(pre));

	if (r)
		return mig_err(r == -ENODATA ? -EPIPE : r, err, errlen,
			       "channel %u: no preamble: %s", c->index, io_reason(r, tmp, sizeof(tmp)));
	if (memcmp(pre.magic, MIG_MAGIC, 8))
		return mig_err(-EPROTO, err, errlen,
			       "channel %u: bad magic (not an rmapvm migration stream)", c->index);
	if (pre.major != MIG_ABI_MAJOR || pre.minor > MIG_ABI_MINOR)
		return mig_err(-EPROTO, err, errlen,
			       "channel %u: stream version %u.%u not supported (this reader: %u.%u)",
			       c->index, pre.major, pre.minor, MIG_ABI_MAJOR, MIG_ABI_MINOR);
	if (pre.page_size != PAGE_SIZE)
		return mig_err(-EPROTO, err, errlen, "channel %u: page size %u, expected %lu",
			       c->index, pre.page_size, PAGE_SIZE);
	return 0;
}

int chan_read_rec(struct mig_chan *c, struct mig_rec_hdr *h, uint8_t **buf, size_t *cap, char *err,
		  size_t errlen)
{
	char tmp[96];
	int r = chan_read_all(c, h, sizeof(*h));

	if (r)
		return mig_err(r == -ENODATA ? -EPIPE : r, err, errlen,
			       "channel %u: record %llu: %s", c->index, (unsigned long long)c->seq,
			       io_reason(r, tmp, sizeof(tmp)));
	if (h->type < 1 || h->type > MIG_REC_TYPE_MAX)
		return mig_err(-EPROTO, err, errlen, "channel %u: record %llu: unknown type %u",
			       c->index, (unsigned long long)c->seq, h->type);
	if (h->flags & ~(h->type == MIG_REC_PAGES ? MIG_REC_F_KNOWN : 0))
		return mig_err(-EPROTO, err, errlen, "channel %u: record %llu (%s): bad flags 0x%x",
			       c->index, (unsigned long long)c->seq, mig_rec_name(h->type), h->flags);
	if (h->len > MIG_MAX_PAYLOAD)
		return mig_err(-EPROTO, err, errlen,
			       "channel %u: record %llu (%s): length %u above the %u limit", c->index,
			       (unsigned long long)c->seq, mig_rec_name(h->type), h->len,
			       MIG_MAX_PAYLOAD);
	if (h->seq != c->seq)
		return mig_err(-EPROTO, err, errlen,
			       "channel %u: record %llu (%s): sequence number %llu (lost or reordered record)",
			       c->index, (unsigned long long)c->seq, mig_rec_name(h->type),
			       (unsigned long long)h->seq);
	if (*cap < h->len || !*buf) {
		size_t ncap = h->len ? h->len : 64;
		uint8_t *nb = realloc(*buf, ncap);

		if (!nb)
			return mig_err(-ENOMEM, err, errlen, "out of memory");
		*buf = nb;
		*cap = ncap;
	}
	r = chan_read_all(c, *buf, h->len);
	if (r)
		return mig_err(r == -ENODATA ? -EPIPE : r, err, errlen,
			       "channel %u: record %llu (%s, %u bytes): %s", c->index,
			       (unsigned long long)c->seq, mig_rec_name(h->type), h->len,
			       io_reason(r == -ENODATA ? -EPIPE : r, tmp, sizeof(tmp)));
	if (XXH3_64bits_withSeed(*buf, h->len, rec_seed(h)) != h->csum)
		return mig_err(-EBADMSG, err, errlen,
			       "channel %u: record %llu (%s, %u bytes): checksum mismatch (corrupt stream)",
			       c->index, (unsigned long long)c->seq, mig_rec_name(h->type), h->len);
	c->seq++;
	return 0;
}
