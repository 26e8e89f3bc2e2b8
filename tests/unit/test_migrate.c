/* test_migrate.c: migration stream, transports, destination validation and source recovery, over an in-test backend. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "harness.h"
#include "migrate/migrate_internal.h"
#include "rmapvm/migrate.h"
#include "test_migrate_fake.h"

/* ---- helpers ---- */

struct dest_run {
	struct mig_listener *l;
	struct mig_dest_ops ops;
	struct backend *be;
	struct mig_dest_info info;
	int r;
	char err[512];
	pthread_t t;
};

static void *dest_thread(void *arg)
{
	struct dest_run *d = arg;
	struct mig_dest_params p = { .accept_timeout_ms = 20000, .io_timeout_ms = 20000 };

	d->r = mig_incoming(d->l, &p, &d->ops, &d->be, &d->info, d->err, sizeof(d->err));
	return NULL;
}

static void dest_start(struct dest_run *d, const char *uri)
{
	char err[256];

	memset(d, 0, sizeof(*d));
	assert_int_equal(mig_listen(uri, &d->l, err, sizeof(err)), 0);
	d->ops.create = fake_dest_create;
	assert_int_equal(pthread_create(&d->t, NULL, dest_thread, d), 0);
}

static void dest_join(struct dest_run *d)
{
	pthread_join(d->t, NULL);
	mig_listener_close(d->l);
}

static char sock_path[108];
static char file_path[256];

static void make_paths(void)
{
	snprintf(sock_path, sizeof(sock_path), "/tmp/rmapvm-test-mig-%d.sock", getpid());
	snprintf(file_path, sizeof(file_path), "/tmp/rmapvm-test-mig-%d.img", getpid());
}

static void params_default(struct mig_params *p, const char *uri, char *desc, size_t dlen,
			   const struct fake_vm *f)
{
	memset(p, 0, sizeof(*p));
	p->uri = uri;
	p->kind = "fake";
	snprintf(desc, dlen, "%d %llu", f->nr_regions,
		 (unsigned long long)(f->regions[0].size / PAGE_SIZE));
	p->desc = desc;
	p->desc_len = strlen(desc);
	p->dirty.mode = DIRTY_MODE_BITMAP;
	p->timeout_s = 30;
}

static void assert_same_memory(struct fake_vm *a, struct fake_vm *b)
{
	int i;

	assert_int_equal(a->nr_regions, b->nr_regions);
	for (i = 0; i < a->nr_regions; i++) {
		assert_int_equal(a->regions[i].size, b->regions[i].size);
		if (memcmp(a->regions[i].hva, b->regions[i].hva, a->regions[i].size)) {
			uint64_t p;

			for (p = 0; p < a->regions[i].size / PAGE_SIZE; p++)
				if (memcmp(a->regions[i].hva + p * PAGE_SIZE,
					   b->regions[i].hva + p * PAGE_SIZE, PAGE_SIZE))
					break;
			fail_msg("region %d page %llu differs after migration", i,
				 (unsigned long long)p);
		}
	}
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* ---- URIs ---- */

static void test_uri_parse(void **state)
{
	struct mig_uri u;
	char err[128];

	assert_int_equal(mig_uri_parse("tcp:127.0.0.1:4444", &u, err, sizeof(err)), 0);
	assert_int_equal(u.kind, MIG_URI_TCP);
	assert_string_equal(u.host, "127.0.0.1");
	assert_string_equal(u.port, "4444");
	assert_int_equal(mig_uri_parse("tcp:[::1]:80", &u, err, sizeof(err)), 0);
	assert_string_equal(u.host, "::1");
	assert_int_equal(mig_uri_parse("tcp::9", &u, err, sizeof(err)), 0);
	assert_string_equal(u.host, "0.0.0.0");
	assert_int_equal(mig_uri_parse("unix:/tmp/x", &u, err, sizeof(err)), 0);
	assert_int_equal(u.kind, MIG_URI_UNIX);
	assert_int_equal(mig_uri_parse("file:/tmp/y", &u, err, sizeof(err)), 0);
	assert_int_equal(u.kind, MIG_URI_FILE);
	assert_int_equal(mig_uri_parse("tcp:host:70000", &u, err, sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:host", &u, err, sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:host:-1", &u, err, sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse("udp:host:1", &u, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "expected tcp:HOST:PORT"));
	assert_int_equal(mig_uri_parse("unix:", &u, err, sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse(NULL, &u, err, sizeof(err)), -EINVAL);
}

/* ---- end to end over a unix socket, with writers, several threads/ranges ---- */

static void migrate_live(const char *uri, int threads, uint64_t range, bool compress)
{
	struct fake_vm *src = fake_create(3, 4096 / (uint64_t)test_scale(), 2);
	struct mig_source *ms;
	struct mig_params p;
	struct dest_run d;
	struct mig_info info;
	struct fake_vm *dst;
	char desc[64];
	uint64_t w0;
	int r;

	src->hot_pages = 512;
	src->write_delay_ns = 2000;
	fake_start(src);
	sleep_ms(20);
	assert_int_equal(mig_source_create(&src->be, &ms), 0);
	dest_start(&d, uri);
	params_default(&p, uri, desc, sizeof(desc), src);
	p.threads = threads;
	p.range_bytes = range;
	p.compress = compress;
	r = mig_source_migrate(ms, &p, NULL, NULL);
	dest_join(&d);
	mig_source_info(ms, &info);
	if (r || d.r)
		fail_msg("migration failed: source %d (%s), destination %d (%s)", r, info.error_msg,
			 d.r, d.err);
	assert_int_equal(info.state, MIG_STATE_COMPLETED);
	assert_true(info.dirty_sync_count >= 1);
	assert_true(info.transferred > 0);
	dst = d.be->priv;
	/* the source stays paused: its memory is the switch-over image */
	assert_same_memory(src, dst);
	assert_int_equal(fake_verify(dst), 0);
	assert_int_equal(dst->vcpus[0].seq, src->vcpus[0].seq);
	assert_int_equal(dst->vcpus[1].rng, src->vcpus[1].rng);
	assert_int_equal(d.info.channels, uri[0] == 'f' ? 1 : (uint32_t)threads);
	/* the guest goes on at the destination */
	w0 = fake_writes(dst);
	fake_start(dst);
	sleep_ms(30);
	fake_stop(dst);
	assert_true(fake_writes(dst) > w0);
	assert_int_equal(dst->vcpus[0].bad + dst->vcpus[1].bad, 0);
	assert_int_equal(fake_verify(dst), 0);
	d.be->ops->destroy(d.be);
	mig_source_destroy(ms);
	fake_destroy(&src->be);
}

static void test_live_unix_1thread(void **state)
{
	make_paths();
	char uri[200];

	snprintf(uri, sizeof(uri), "unix:%s", sock_path);
	migrate_live(uri, 1, 1 << 20, false);
}

static void test_live_unix_3threads_small_ranges(void **state)
{
	char uri[200];

	make_paths();
	snprintf(uri, sizeof(uri), "unix:%s", sock_path);
	migrate_live(uri, 3, 256 << 10, false);
}

static void test_live_tcp_zstd(void **state)
{
	struct mig_listener *l;
	char err[128], uri[300];

	/* find a free port first */
	assert_int_equal(mig_listen("tcp:127.0.0.1:0", &l, err, sizeof(err)), 0);
	snprintf(uri, sizeof(uri), "%s", mig_listener_uri(l));
	mig_listener_close(l);
	migrate_live(uri, 2, 4 << 20, true);
}

static void test_live_file(void **state)
{
	char uri[300];

	make_paths();
	snprintf(uri, sizeof(uri), "file:%s", file_path);
	/* the destination must read after the source wrote: run them in order */
	{
		struct fake_vm *src = fake_create(2, 2048, 2), *dst;
		struct mig_source *ms;
		struct mig_params p;
		struct dest_run d;
		char desc[64];

		src->hot_pages = 300;
		src->write_delay_ns = 5000;
		fake_start(src);
		assert_int_equal(mig_source_create(&src->be, &ms), 0);
		params_default(&p, uri, desc, sizeof(desc), src);
		p.threads = 2;
		assert_int_equal(mig_source_migrate(ms, &p, NULL, NULL), 0);
		dest_start(&d, uri);
		dest_join(&d);
		if (d.r)
			fail_msg("restore failed: %s", d.err);
		dst = d.be->priv;
		assert_same_memory(src, dst);
		d.be->ops->destroy(d.be);
		mig_source_destroy(ms);
		fake_destroy(&src->be);
		unlink(file_path);
	}
}

/* ---- failure: the source keeps running, fetched bits are carried, a retry succeeds ---- */

static void test_failed_then_retry(void **state)
{
	struct fake_vm *src = fake_create(2, 2048, 2);
	struct mig_source *ms;
	struct mig_params p;
	struct dest_run d;
	struct mig_info info;
	char desc[64], uri[200];
	uint64_t w0, carry[64];
	int i, r;

	make_paths();
	snprintf(uri, sizeof(uri), "unix:%s", sock_path);
	src->hot_pages = 1000;
	src->write_delay_ns = 3000;
	fake_start(src);
	assert_int_equal(mig_source_create(&src->be, &ms), 0);
	params_default(&p, uri, desc, sizeof(desc), src);
	p.range_bytes = 1 << 20; /* 256 pages: 16 ranges */
	p.threads = 2;
	p.downtime_ms = 1;	 /* do not converge before the injected failure */
	p.bandwidth = 50 << 20;
	src->fail_harvest_at = 24; /* second round */
	dest_start(&d, uri);
	r = mig_source_migrate(ms, &p, NULL, NULL);
	dest_join(&d);
	mig_source_info(ms, &info);
	assert_int_equal(r, -EIO);
	assert_int_equal(info.state, MIG_STATE_FAILED);
	assert_non_null(strstr(info.error_msg, "harvesting slot"));
	assert_int_not_equal(d.r, 0);
	assert_null(d.be);
	if (!strstr(d.err, "source aborted") && !strstr(d.err, "truncated"))
		fail_msg("destination said: %s", d.err);
	/* the source runs, tracking is off, nothing is throttled */
	w0 = fake_writes(src);
	sleep_ms(20);
	assert_true(fake_writes(src) > w0);
	assert_false(__atomic_load_n(&src->tracking, __ATOMIC_RELAXED));
	/* every bit handed out by the backend is in the carry */
	for (i = 0; i < src->nr_regions; i++) {
		int64_t n = mig_source_carry(ms, src->regions[i].slot, carry, 64);
		uint64_t w;

		assert_true(n >= 0);
		for (w = 0; w < 2048 / 64; w++)
			if ((src->handed[i][w] & carry[w]) != src->handed[i][w])
				fail_msg("region %d word %llu: handed 0x%llx, carried 0x%llx", i,
					 (unsigned long long)w, (unsigned long long)src->handed[i][w],
					 (unsigned long long)carry[w]);
	}
	assert_true(mig_source_carry(ms, src->regions[0].slot, carry, 64) > 0);
	/* retry */
	src->fail_harvest_at = 0;
	p.downtime_ms = 300;
	p.bandwidth = 0;
	dest_start(&d, uri);
	r = mig_source_migrate(ms, &p, NULL, NULL);
	dest_join(&d);
	mig_source_info(ms, &info);
	if (r || d.r)
		fail_msg("retry failed: %s / %s", info.error_msg, d.err);
	assert_same_memory(src, d.be->priv);
	assert_int_equal(mig_source_carry(ms, src->regions[0].slot, carry, 64), 0);
	d.be->ops->destroy(d.be);
	mig_source_destroy(ms);
	fake_destroy(&src->be);
}

/* vCPU state that cannot be saved: failure inside the downtime resumes the VM */
static void test_fail_in_stop_copy_resumes(void **state)
{
	struct fake_vm *src = fake_create(1, 1024, 1);
	struct mig_source *ms;
	struct mig_params p;
	struct dest_run d;
	char desc[64], uri[200];
	uint64_t w0;

	make_paths();
	snprintf(uri, sizeof(uri), "unix:%s", sock_path);
	src->write_delay_ns = 10000;
	src->fail_save_vcpu = 1;
	fake_start(src);
	assert_int_equal(mig_source_create(&src->be, &ms), 0);
	params_default(&p, uri, desc, sizeof(desc), src);
	dest_start(&d, uri);
	assert_int_equal(mig_source_migrate(ms, &p, NULL, NULL), -EIO);
	dest_join(&d);
	assert_non_null(strstr(d.err, "saving vCPU 0"));
	w0 = fake_writes(src);
	sleep_ms(20);
	assert_true(fake_writes(src) > w0); /* resumed */
	mig_source_destroy(ms);
	fake_destroy(&src->be);
}

/* A destination that is not there, and a cancel. */
static void test_connect_refused_and_cancel(void **state)
{
	struct fake_vm *src = fake_create(1, 1024, 1);
	struct mig_source *ms;
	struct mig_params p;
	struct mig_info info;
	char desc[64];

	assert_int_equal(mig_source_create(&src->be, &ms), 0);
	params_default(&p, "unix:/nonexistent/rmapvm.sock", desc, sizeof(desc), src);
	assert_true(mig_source_migrate(ms, &p, NULL, NULL) < 0);
	mig_source_info(ms, &info);
	assert_non_null(strstr(info.error_msg, "connect unix:/nonexistent"));
	mig_source_destroy(ms);
	fake_destroy(&src->be);
}

/* ---- stream validation: make a valid file, then break it in every way ---- */

static uint8_t *stream_buf;
static size_t stream_len;

static void make_stream(void)
{
	struct fake_vm *src = fake_create(2, 1024, 2);
	struct mig_source *ms;
	struct mig_params p;
	char desc[64], uri[300];
	struct stat st;
	int fd;

	make_paths();
	snprintf(uri, sizeof(uri), "file:%s", file_path);
	/* some content, but no writers: a deterministic stream */
	for (uint64_t g = 0; g < src->total_pages; g += 3)
		*(uint64_t *)fake_page(src, g) = stamp_make((uint32_t)(g / src->pages_per_vcpu), 1,
							    g % src->pages_per_vcpu);
	assert_int_equal(mig_source_create(&src->be, &ms), 0);
	params_default(&p, uri, desc, sizeof(desc), src);
	assert_int_equal(mig_source_migrate(ms, &p, NULL, NULL), 0);
	mig_source_destroy(ms);
	fake_destroy(&src->be);
	fd = open(file_path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	stream_len = (size_t)st.st_size;
	free(stream_buf);
	stream_buf = malloc(stream_len);
	assert_int_equal(read(fd, stream_buf, stream_len), (ssize_t)stream_len);
	close(fd);
}

/* Receive @buf/@len from a file; returns the result and the message in @err. */
static int receive(const uint8_t *buf, size_t len, char *err, size_t errlen)
{
	struct mig_listener *l;
	struct mig_dest_ops ops = { .create = fake_dest_create };
	struct backend *be = NULL;
	char uri[300];
	int fd, r;

	snprintf(uri, sizeof(uri), "file:%s.bad", file_path);
	fd = open(uri + 5, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	assert_int_equal(mig_listen(uri, &l, err, errlen), 0);
	r = mig_incoming(l, NULL, &ops, &be, NULL, err, errlen);
	mig_listener_close(l);
	unlink(uri + 5);
	if (be)
		be->ops->destroy(be);
	return r;
}

/* Offset of the @nth record of @type (payload offset in *@pl, header at return). */
static size_t find_rec(const uint8_t *buf, size_t len, unsigned type, int nth, size_t *pl)
{
	size_t off = sizeof(struct mig_preamble);

	while (off + sizeof(struct mig_rec_hdr) <= len) {
		struct mig_rec_hdr h;

		memcpy(&h, buf + off, sizeof(h));
		if (h.type == type && nth-- == 0) {
			*pl = off + sizeof(h);
			return off;
		}
		off += sizeof(h) + h.len;
	}
	fail_msg("no record of type %u", type);
	return 0;
}

static void fix_csum(uint8_t *buf, size_t hoff)
{
	struct mig_rec_hdr h;

	memcpy(&h, buf + hoff, sizeof(h));
	h.csum = XXH3_64bits_withSeed(buf + hoff + sizeof(h), h.len, XXH3_64bits(&h, 16));
	memcpy(buf + hoff, &h, sizeof(h));
}

/* Patch @size bytes at @field of the nth record of @type, re-checksum, expect @msg. */
static void expect_reject(unsigned type, int nth, size_t field, uint64_t value, int size,
			  const char *msg)
{
	uint8_t *b = malloc(stream_len);
	size_t pl, h;
	char err[512] = "";
	int r;

	memcpy(b, stream_buf, stream_len);
	h = find_rec(b, stream_len, type, nth, &pl);
	memcpy(b + pl + field, &value, (size_t)size);
	fix_csum(b, h);
	r = receive(b, stream_len, err, sizeof(err));
	if (r == 0 || !strstr(err, msg))
		fail_msg("%s field %zu = 0x%llx: got %d '%s', expected '%s'", mig_rec_name(type), field,
			 (unsigned long long)value, r, err, msg);
	free(b);
}

static void test_stream_valid_and_digest(void **state)
{
	char err[512];

	make_stream();
	assert_int_equal(receive(stream_buf, stream_len, err, sizeof(err)), 0);
}

static void test_stream_corrupt_bytes(void **state)
{
	uint64_t seed = 42;
	int i;

	make_stream();
	/* one flipped byte anywhere: rejected, never accepted */
	for (i = 0; i < 40 / test_scale() + 5; i++) {
		uint8_t *b = malloc(stream_len);
		size_t at = test_rand(&seed) % stream_len;
		char err[512] = "";

		memcpy(b, stream_buf, stream_len);
		b[at] ^= (uint8_t)(1 + test_rand(&seed) % 255);
		if (receive(b, stream_len, err, sizeof(err)) == 0)
			fail_msg("byte %zu flipped: stream accepted", at);
		assert_true(strlen(err) > 10);
		free(b);
	}
	/* the preamble */
	{
		uint8_t *b = malloc(stream_len);
		char err[512];

		memcpy(b, stream_buf, stream_len);
		b[0] = 'X';
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "bad magic"));
		memcpy(b, stream_buf, stream_len);
		b[8] = 2; /* major */
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "version 2.0 not supported"));
		memcpy(b, stream_buf, stream_len);
		b[12] = 0; b[13] = 0x20; /* page size 8192 */
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "page size"));
		free(b);
	}
	/* a flipped payload byte is a checksum error naming the record */
	{
		uint8_t *b = malloc(stream_len);
		size_t pl;
		char err[512];

		memcpy(b, stream_buf, stream_len);
		find_rec(b, stream_len, MIG_REC_PAGES, 0, &pl);
		b[pl + 100] ^= 1;
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EBADMSG);
		assert_non_null(strstr(err, "(PAGES"));
		assert_non_null(strstr(err, "checksum mismatch"));
		free(b);
	}
}

static void test_stream_truncated(void **state)
{
	size_t cuts[] = { 0, 5, 16, 30, 100, 5000 };
	char err[512];
	size_t i;

	make_stream();
	for (i = 0; i < ARRAY_SIZE(cuts); i++) {
		assert_true(receive(stream_buf, cuts[i], err, sizeof(err)) < 0);
		assert_true(strstr(err, "truncated") || strstr(err, "no preamble"));
	}
	/* every record boundary near the end and the middle of the last records */
	for (i = 1; i < 200; i += 7) {
		assert_true(receive(stream_buf, stream_len - i, err, sizeof(err)) < 0);
		assert_non_null(strstr(err, "truncated"));
	}
}

static void test_stream_bad_fields(void **state)
{
	make_stream();
	/* record header: unknown type, flags, sequence, oversize */
	{
		uint8_t *b = malloc(stream_len);
		size_t pl, h = find_rec(stream_buf, stream_len, MIG_REC_ZERO, 0, &pl);
		char err[512];
		struct mig_rec_hdr rh;

		memcpy(b, stream_buf, stream_len);
		memcpy(&rh, b + h, sizeof(rh));
		rh.type = 77;
		memcpy(b + h, &rh, sizeof(rh));
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "unknown type 77"));
		memcpy(b, stream_buf, stream_len);
		rh.type = MIG_REC_ZERO;
		rh.flags = MIG_REC_F_ZSTD;
		memcpy(b + h, &rh, sizeof(rh));
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "bad flags"));
		memcpy(b, stream_buf, stream_len);
		memcpy(&rh, stream_buf + h, sizeof(rh));
		rh.seq += 1;
		memcpy(b + h, &rh, sizeof(rh));
		fix_csum(b, h);
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "lost or reordered"));
		memcpy(b, stream_buf, stream_len);
		memcpy(&rh, stream_buf + h, sizeof(rh));
		rh.len = MIG_MAX_PAYLOAD + 1;
		memcpy(b + h, &rh, sizeof(rh));
		assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
		assert_non_null(strstr(err, "above the"));
		free(b);
	}
	/* HELLO */
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, nr_channels), 0, 4, "0 channels");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, channel), 5, 4, "channel index 5");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, nr_regions), 0, 4, "0 regions");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, nr_regions), 3, 4, "does not match 3 regions");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, nr_vcpus), 0, 4, "0 vCPUs");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, nr_vcpus), 3, 4, "END without vCPU 2's state");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, backend), 'q', 1, "backend kind 'qake'");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, backend) + 6, 'x', 1, "NUL-padded");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, features), 0x80, 4, "unknown features");
	expect_reject(MIG_REC_HELLO, 0, offsetof(struct mig_hello, total_bytes), 1, 8, "add up to");
	expect_reject(MIG_REC_HELLO, 0, sizeof(struct mig_hello) + offsetof(struct mig_region, size), 4095, 8, "malformed");
	expect_reject(MIG_REC_HELLO, 0, sizeof(struct mig_hello) + offsetof(struct mig_region, reserved), 1, 4, "malformed");
	expect_reject(MIG_REC_HELLO, 0, sizeof(struct mig_hello) + sizeof(struct mig_region) + offsetof(struct mig_region, gpa), 0, 8, "overlaps");
	expect_reject(MIG_REC_HELLO, 0, sizeof(struct mig_hello) + sizeof(struct mig_region) + offsetof(struct mig_region, slot), 0, 4, "slot 0 twice");
	/* PAGES */
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, slot), 9, 4, "slot 9 is not in the layout");
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, span), 0, 4, "span 0");
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, span), 513, 4, "span 513");
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, first_page), 1000, 8, "beyond slot");
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, nr_pages), 0, 4, "0 pages in a span");
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, nr_pages), 2, 4, "bitmap has");
	expect_reject(MIG_REC_PAGES, 0, offsetof(struct mig_pages, data_len), 4096, 4, "length");
	expect_reject(MIG_REC_PAGES, 0, sizeof(struct mig_pages) + 63, 0x80, 1, "beyond span");
	/* ZERO */
	expect_reject(MIG_REC_ZERO, 0, offsetof(struct mig_zero, slot), 7, 4, "slot 7 is not in the layout");
	expect_reject(MIG_REC_ZERO, 0, offsetof(struct mig_zero, reserved), 1, 4, "reserved");
	expect_reject(MIG_REC_ZERO, 0, offsetof(struct mig_zero, npages), 0, 8, "not within slot");
	expect_reject(MIG_REC_ZERO, 0, offsetof(struct mig_zero, npages), 5000, 8, "not within slot");
	/* ROUND */
	expect_reject(MIG_REC_ROUND, 0, offsetof(struct mig_round, round), 3, 4, "round 3 after round -1");
	/* VCPU */
	expect_reject(MIG_REC_VCPU, 0, offsetof(struct mig_vcpu, vcpu), 2, 4, "vCPU 2 of 2");
	expect_reject(MIG_REC_VCPU, 1, offsetof(struct mig_vcpu, vcpu), 0, 4, "vCPU 0 sent twice");
	expect_reject(MIG_REC_VCPU, 0, offsetof(struct mig_vcpu, len), 3, 4, "does not fit");
	expect_reject(MIG_REC_VCPU, 0, sizeof(struct mig_vcpu), 0, 4, "loading vCPU 0");
	/* DIGEST */
	expect_reject(MIG_REC_DIGEST, 0, offsetof(struct mig_digest, chunk_pages), 3, 4, "power of two");
	expect_reject(MIG_REC_DIGEST, 0, offsetof(struct mig_digest, nr_chunks), 1, 8, "the layout has");
	expect_reject(MIG_REC_DIGEST, 0, sizeof(struct mig_digest) + 8, 0x1234, 8, "digest mismatch: chunk 1");
	expect_reject(MIG_REC_DIGEST, 0, offsetof(struct mig_digest, total_lo), 7, 8, "digest mismatch: total");
	/* END */
	expect_reject(MIG_REC_END, 0, offsetof(struct mig_end, pages), 1, 8, "END says");
	expect_reject(MIG_REC_END, 0, offsetof(struct mig_end, records), 1, 8, "END says");
	expect_reject(MIG_REC_END, 0, offsetof(struct mig_end, channel), 1, 4, "END says");
}

/* A page whose content differs from what was sent: the digest catches it. */
static void test_stream_page_content_changed(void **state)
{
	uint8_t *b;
	size_t pl, h;
	char err[512];
	struct mig_pages ph;

	make_stream();
	b = malloc(stream_len);
	memcpy(b, stream_buf, stream_len);
	h = find_rec(b, stream_len, MIG_REC_PAGES, 0, &pl);
	memcpy(&ph, b + pl, sizeof(ph));
	b[pl + sizeof(ph) + DIV_ROUND_UP(ph.span, 64) * 8 + 9] ^= 0x40; /* inside page data */
	fix_csum(b, h);
	assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "memory digest mismatch: chunk 0 (slot 0, gpa 0x0"));
	free(b);
}

/* A page never sent: the coverage check names it. */
static void test_stream_page_missing(void **state)
{
	uint8_t *b;
	size_t pl, h;
	char err[512];
	struct mig_zero z;

	make_stream();
	b = malloc(stream_len);
	memcpy(b, stream_buf, stream_len);
	h = find_rec(b, stream_len, MIG_REC_ZERO, 0, &pl);
	memcpy(&z, b + pl, sizeof(z));
	/* shrink the run by one page, and fix END's page count so only coverage can tell */
	z.npages--;
	memcpy(b + pl, &z, sizeof(z));
	fix_csum(b, h);
	h = find_rec(b, stream_len, MIG_REC_END, 0, &pl);
	{
		struct mig_end e;

		memcpy(&e, b + pl, sizeof(e));
		e.pages--;
		memcpy(b + pl, &e, sizeof(e));
		fix_csum(b, h);
	}
	assert_int_equal(receive(b, stream_len, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "was never sent"));
	free(b);
	unlink(file_path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uri_parse),
		cmocka_unit_test(test_live_unix_1thread),
		cmocka_unit_test(test_live_unix_3threads_small_ranges),
		cmocka_unit_test(test_live_tcp_zstd),
		cmocka_unit_test(test_live_file),
		cmocka_unit_test(test_failed_then_retry),
		cmocka_unit_test(test_fail_in_stop_copy_resumes),
		cmocka_unit_test(test_connect_refused_and_cancel),
		cmocka_unit_test(test_stream_valid_and_digest),
		cmocka_unit_test(test_stream_corrupt_bytes),
		cmocka_unit_test(test_stream_truncated),
		cmocka_unit_test(test_stream_bad_fields),
		cmocka_unit_test(test_stream_page_content_changed),
		cmocka_unit_test(test_stream_page_missing),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
