/* source.c: the migration source: setup, range-wise pre-copy rounds, convergence, stop-and-copy, failure recovery. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#include <zstd.h>

#include "migrate_internal.h"
#include "rmapvm/util.h"

/* One range: a run of pages of one region, harvested and sent as a unit. */
struct mig_range {
	int region;			/* index in ms->regions */
	uint64_t first_page;		/* page offset in the region, a multiple of 64 */
	uint64_t npages;		/* multiple of 64 unless it ends the region */
	uint64_t last_harvest_ns;	/* when it was last harvested */
	double rate;			/* pages/ns dirtied, from the last two harvests */
};

/* CMD_DIGEST: hash the stale chunks (after CMD_FINAL, once every final harvest marked). */
enum worker_cmd { CMD_NONE, CMD_ROUND0, CMD_ROUND, CMD_FINAL, CMD_DIGEST, CMD_EXIT };

/* A harvester/sender thread; owns ranges idx, idx + nr_workers, ... */
struct mig_worker {
	struct mig_source *ms;
	int idx;
	pthread_t thread;
	bool started;
	struct mig_chan *chan;		/* the channel its records go to */
	uint8_t *rec;			/* PAGES record: header + bitmap + MIG_BATCH_SPAN pages */
	uint8_t *zbuf;			/* compressed data */
	size_t zcap;
	ZSTD_CCtx *zc;
	uint64_t *bm;			/* harvest bitmap of one range */
	uint64_t *pop;			/* populated bitmap of one range (round 0) */
	int pm;				/* /proc/self/pagemap or -1 */
	uint64_t gen0;			/* ms->cmd_gen when started: commands after it are ours */
	/* per-round counters: written by the worker, read by the main thread after the barrier */
	uint64_t r_pages, r_zero, r_dirty, r_harvest_ns, r_harvest_calls, r_max_harvest_ns;
};

struct mig_source {
	struct backend *be;
	struct backend_region *regions;
	int nr_regions;
	uint64_t total_pages;
	uint64_t **carry;		/* per region: fetched, never delivered (survives attempts) */
	uint64_t **fetched;		/* per region: fetched in this attempt (plus the carry) */
	uint64_t **ring_acc;		/* ring mode: harvested ring entries, taken per range */

	/* the attempt */
	struct mig_params p;
	struct mig_chan chans[MIG_MAX_CHANNELS];
	int nr_chans;
	struct mig_range *ranges;
	uint64_t nr_ranges;
	struct mig_worker *workers;
	int nr_workers;
	struct mig_digest_job digest;
	uint64_t attempt_start_ns;

	/* worker coordination */
	pthread_mutex_t lock;
	pthread_cond_t cond_work;	/* main -> workers: new command */
	pthread_cond_t cond_done;	/* workers -> main: one finished */
	enum worker_cmd cmd;
	uint64_t cmd_gen;
	int busy;			/* workers still on the current command */
	uint32_t round;			/* round being run (workers read it after the command) */

	bool cancel;			/* relaxed atomic: stop as soon as possible */
	int err;			/* first error, under lock */
	char errmsg[256];

	/* live parameters (control socket `set`), relaxed atomics */
	uint64_t downtime_ms;
	uint64_t bandwidth;
	uint64_t timeout_ms;
	uint64_t auto_converge;

	/* bandwidth cap */
	uint64_t bw_bytes;		/* bytes charged since bw_start (atomic) */
	uint64_t bw_start_ns;

	pthread_mutex_t info_lock;	/* guards info and chans' lifetime for readers */
	struct mig_info info;
	bool chans_live;		/* chans[] may be read for byte counts */
};

const char *mig_state_name(enum mig_state s)
{
	static const char *const n[] = { "none",      "setup",	  "active",   "stop-copy",
					 "completed", "failed", "cancelled" };

	return s <= MIG_STATE_CANCELLED ? n[s] : "?";
}

static void set_error(struct mig_source *ms, int r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Record the first error and make every thread stop. The channels stay usable (ABORT). */
static void set_error(struct mig_source *ms, int r, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ms->lock);
	if (!ms->err) {
		ms->err = r;
		va_start(ap, fmt);
		vsnprintf(ms->errmsg, sizeof(ms->errmsg), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&ms->lock);
	MIG_WRITE_ONCE(ms->cancel, true);
}

/* A channel write failed: the stream is dead, unblock every writer. */
static void abort_chans(struct mig_source *ms)
{
	int i;

	for (i = 0; i < ms->nr_chans; i++)
		chan_abort(&ms->chans[i], true);
}

/* (backend.h's dirty_mode_name() lives with a backend; the library must not depend on one) */
static const char *mode_name(enum dirty_mode m)
{
	static const char *const n[] = { "bitmap", "manual", "ring", "dbit" };

	return m < DIRTY_MODE_NR ? n[m] : "?";
}

static int get_regions(struct backend *be, struct backend_region **out)
{
	int max = 16, n;
	struct backend_region *r = NULL;

	for (;;) {
		struct backend_region *nr = realloc(r, (size_t)max * sizeof(*r));

		if (!nr) {
			free(r);
			return -ENOMEM;
		}
		r = nr;
		n = be->ops->get_regions(be, r, max);
		if (n < 0) {
			free(r);
			return n;
		}
		if (n <= max)
			break;
		max = n;
	}
	*out = r;
	return n;
}

static void free_bitmaps(uint64_t **bm, int n)
{
	int i;

	if (!bm)
		return;
	for (i = 0; i < n; i++)
		free(bm[i]);
	free(bm);
}

static uint64_t **alloc_bitmaps(const struct backend_region *r, int n)
{
	uint64_t **bm = calloc((size_t)n, sizeof(*bm));
	int i;

	if (!bm)
		return NULL;
	for (i = 0; i < n; i++) {
		bm[i] = calloc(bitmap_words(r[i].size / PAGE_SIZE) + 1, 8);
		if (!bm[i]) {
			free_bitmaps(bm, n);
			return NULL;
		}
	}
	return bm;
}

int mig_source_create(struct backend *be, struct mig_source **out)
{
	struct mig_source *ms = calloc(1, sizeof(*ms));
	int n, i;

	if (!ms)
		return -ENOMEM;
	ms->be = be;
	n = get_regions(be, &ms->regions);
	if (n < 0) {
		free(ms);
		return n;
	}
	if (n == 0 || n > (int)MIG_MAX_REGIONS) {
		free(ms->regions);
		free(ms);
		return -EINVAL;
	}
	ms->nr_regions = n;
	for (i = 0; i < n; i++) {
		if (!ms->regions[i].size || ms->regions[i].size % PAGE_SIZE ||
		    ms->regions[i].gpa % PAGE_SIZE) {
			free(ms->regions);
			free(ms);
			return -EINVAL;
		}
		ms->total_pages += ms->regions[i].size / PAGE_SIZE;
	}
	ms->carry = alloc_bitmaps(ms->regions, n);
	if (!ms->carry) {
		free(ms->regions);
		free(ms);
		return -ENOMEM;
	}
	pthread_mutex_init(&ms->lock, NULL);
	pthread_cond_init(&ms->cond_work, NULL);
	pthread_cond_init(&ms->cond_done, NULL);
	pthread_mutex_init(&ms->info_lock, NULL);
	ms->info.total = ms->total_pages * PAGE_SIZE;
	*out = ms;
	return 0;
}

void mig_source_destroy(struct mig_source *ms)
{
	if (!ms)
		return;
	free_bitmaps(ms->carry, ms->nr_regions);
	free(ms->regions);
	pthread_mutex_destroy(&ms->lock);
	pthread_cond_destroy(&ms->cond_work);
	pthread_cond_destroy(&ms->cond_done);
	pthread_mutex_destroy(&ms->info_lock);
	free(ms);
}

void mig_source_cancel(struct mig_source *ms)
{
	pthread_mutex_lock(&ms->lock);
	if (!ms->err) {
		ms->err = -ECANCELED;
		snprintf(ms->errmsg, sizeof(ms->errmsg), "cancelled");
	}
	pthread_mutex_unlock(&ms->lock);
	MIG_WRITE_ONCE(ms->cancel, true);
}

int mig_source_set(struct mig_source *ms, enum mig_param p, uint64_t value)
{
	switch (p) {
	case MIG_PARAM_DOWNTIME_MS:
		if (!value || value > 2000000)
			return -EINVAL;
		MIG_WRITE_ONCE(ms->downtime_ms, value);
		return 0;
	case MIG_PARAM_BANDWIDTH:
		MIG_WRITE_ONCE(ms->bandwidth, value);
		return 0;
	case MIG_PARAM_TIMEOUT_MS:
		MIG_WRITE_ONCE(ms->timeout_ms, value);
		return 0;
	case MIG_PARAM_AUTO_CONVERGE:
		if (value > 1)
			return -EINVAL;
		MIG_WRITE_ONCE(ms->auto_converge, value);
		return 0;
	}
	return -EINVAL;
}

int64_t mig_source_carry(struct mig_source *ms, uint32_t slot, uint64_t *bitmap, size_t words)
{
	int i;

	for (i = 0; i < ms->nr_regions; i++) {
		uint64_t w = bitmap_words(ms->regions[i].size / PAGE_SIZE), j;
		int64_t n = 0;

		if (ms->regions[i].slot != slot)
			continue;
		for (j = 0; j < w; j++) {
			if (j < words)
				bitmap[j] = ms->carry[i][j];
			n += __builtin_popcountll(ms->carry[i][j]);
		}
		return n;
	}
	return -ENOENT;
}

static uint64_t chans_bytes(struct mig_source *ms)
{
	uint64_t b = 0;
	int i;

	for (i = 0; i < ms->nr_chans; i++)
		b += MIG_READ_ONCE(ms->chans[i].bytes);
	return b;
}

void mig_source_info(struct mig_source *ms, struct mig_info *info)
{
	pthread_mutex_lock(&ms->info_lock);
	*info = ms->info;
	if (ms->chans_live) {
		uint64_t el = now_ns() - ms->attempt_start_ns;

		info->transferred = chans_bytes(ms);
		info->total_ms = el / 1000000;
		info->mbps = el ? (double)info->transferred * 8 / ((double)el / 1e9) / 1e6 : 0;
	}
	pthread_mutex_unlock(&ms->info_lock);
}

/* ---- bandwidth cap ---- */

static void bw_charge(struct mig_source *ms, uint64_t bytes)
{
	uint64_t bw = MIG_READ_ONCE(ms->bandwidth), sent, now, allowed;

	sent = MIG_ADD(ms->bw_bytes, bytes) + bytes;
	if (!bw)
		return;
	while (!MIG_READ_ONCE(ms->cancel)) {
		now = now_ns();
		allowed = (uint64_t)((double)(now - ms->bw_start_ns) / 1e9 * (double)bw);
		if (sent <= allowed)
			return;
		{
			double wait = (double)(sent - allowed) / (double)bw;
			struct timespec ts = { 0, (long)(MIN(wait, 0.05) * 1e9) };

			nanosleep(&ts, NULL);
		}
	}
}

/* ---- the worker: harvest a range, send its pages ---- */

struct batch {
	uint32_t region;
	uint64_t first;		/* first page of the window */
	uint32_t nr;		/* pages in the batch */
	uint32_t last;		/* offset of the batch's last page from first */
	uint64_t zero_start;	/* current zero run (page in region) */
	uint64_t zero_len;
};

static int send_zero_run(struct mig_worker *w, struct batch *b)
{
	struct mig_zero z = { .slot = w->ms->regions[b->region].slot,
			      .first_page = b->zero_start,
			      .npages = b->zero_len };
	struct iovec iov = { &z, sizeof(z) };
	int r;

	if (!b->zero_len)
		return 0;
	bw_charge(w->ms, sizeof(z) + sizeof(struct mig_rec_hdr));
	r = chan_write_rec(w->chan, MIG_REC_ZERO, 0, &iov, 1, b->zero_len);
	w->r_zero += b->zero_len;
	b->zero_len = 0;
	return r;
}

static void zero_page_seen(struct mig_worker *w, struct batch *b, uint64_t page)
{
	if (b->zero_len && b->zero_start + b->zero_len == page) {
		b->zero_len++;
		return;
	}
	/* a new run; the old one goes out first */
	if (b->zero_len)
		send_zero_run(w, b); /* error surfaces on the next write */
	b->zero_start = page;
	b->zero_len = 1;
}

#define REC_HDR_BYTES (sizeof(struct mig_pages) + MIG_BATCH_SPAN / 8)

static int send_batch(struct mig_worker *w, struct batch *b)
{
	uint32_t span = b->last + 1;
	struct mig_pages *ph = (struct mig_pages *)w->rec;
	uint8_t *data = w->rec + REC_HDR_BYTES;
	size_t raw = (size_t)b->nr * PAGE_SIZE, bml = DIV_ROUND_UP(span, 64) * 8;
	struct iovec iov[2];
	uint16_t flags = 0;
	int r;

	if (!b->nr)
		return 0;
	ph->slot = w->ms->regions[b->region].slot;
	ph->nr_pages = b->nr;
	ph->first_page = b->first;
	ph->span = span;
	iov[0].iov_base = w->rec;
	iov[0].iov_len = sizeof(*ph) + bml;
	iov[1].iov_base = data;
	iov[1].iov_len = raw;
	if (w->zc) {
		size_t z = ZSTD_compressCCtx(w->zc, w->zbuf, w->zcap, data, raw, 1);

		if (!ZSTD_isError(z) && z < raw) {
			iov[1].iov_base = w->zbuf;
			iov[1].iov_len = z;
			flags = MIG_REC_F_ZSTD;
		}
	}
	ph->data_len = (uint32_t)iov[1].iov_len;
	bw_charge(w->ms, iov[0].iov_len + iov[1].iov_len + sizeof(struct mig_rec_hdr));
	r = chan_write_rec(w->chan, MIG_REC_PAGES, flags, iov, 2, b->nr);
	w->r_pages += b->nr;
	b->nr = 0;
	memset(w->rec + sizeof(*ph), 0, MIG_BATCH_SPAN / 8);
	return r;
}

/* Take the ring accumulator's bits for a range (ring mode). */
static void ring_take(struct mig_source *ms, const struct mig_range *rg, uint64_t *bm)
{
	uint64_t w, words = bitmap_words(rg->npages), *acc = ms->ring_acc[rg->region] + rg->first_page / 64;

	for (w = 0; w < words; w++)
		bm[w] = __atomic_exchange_n(&acc[w], 0, __ATOMIC_RELAXED);
}

static int harvest(struct mig_worker *w, struct mig_range *rg, uint64_t *found)
{
	struct mig_source *ms = w->ms;
	const struct backend_region *reg = &ms->regions[rg->region];
	uint64_t t0 = now_ns(), dt, words = bitmap_words(rg->npages), i, n = 0;
	uint64_t *fetched = ms->fetched[rg->region] + rg->first_page / 64;
	int r = 0;

	memset(w->bm, 0, words * 8);
	if (ms->p.dirty.mode == DIRTY_MODE_RING)
		ring_take(ms, rg, w->bm);
	else
		r = ms->be->ops->harvest_range(ms->be, reg->slot, rg->first_page, rg->npages, w->bm);
	dt = now_ns() - t0;
	if (r) {
		set_error(ms, r, "harvesting slot %u pages %llu+%llu: %s", reg->slot,
			  (unsigned long long)rg->first_page, (unsigned long long)rg->npages,
			  strerror(-r));
		return -ECANCELED;
	}
	/* bits past the range's end would be nonsense */
	if (rg->npages % 64)
		w->bm[words - 1] &= (1ull << (rg->npages % 64)) - 1;
	for (i = 0; i < words; i++) {
		uint64_t m = w->bm[i];

		n += (uint64_t)__builtin_popcountll(m);
		fetched[i] |= m; /* 64-aligned ranges: words are this worker's alone */
		/* Chunks hashed before this write are out of date now. */
		for (; m; m &= m - 1)
			mig_digest_mark(&ms->digest, rg->region,
					rg->first_page + i * 64 + (uint64_t)__builtin_ctzll(m));
	}
	w->r_harvest_ns += dt;
	w->r_harvest_calls++;
	if (dt > w->r_max_harvest_ns)
		w->r_max_harvest_ns = dt;
	{
		uint64_t now = now_ns(), since = now - rg->last_harvest_ns;

		rg->rate = since ? (double)n / (double)since : 0;
		rg->last_harvest_ns = now;
	}
	*found = n;
	return 0;
}

static int do_range(struct mig_worker *w, struct mig_range *rg, bool full)
{
	struct mig_source *ms = w->ms;
	const struct backend_region *reg = &ms->regions[rg->region];
	uint64_t *bits = w->bm, found, p;
	struct batch b = { .region = (uint32_t)rg->region };
	int r;

	r = harvest(w, rg, &found);
	if (r)
		return r;
	w->r_dirty += found;
	if (full) {
		/* round 0: every page; pages the host never populated are zero without reading */
		pagemap_populated(w->pm, reg->hva + rg->first_page * PAGE_SIZE, rg->npages, w->pop);
		bits = NULL;
	}
	for (p = 0; p < rg->npages; p++) {
		uint64_t page = rg->first_page + p;
		uint8_t *slot;

		if (bits && !test_bit64(bits, p)) {
			/* not dirty: skip whole zero words fast */
			if (!(p % 64) && !bits[p / 64])
				p += 63;
			continue;
		}
		if (b.nr && page - b.first >= MIG_BATCH_SPAN) {
			r = send_batch(w, &b);
			if (r)
				return r;
		}
		if (full && !test_bit64(w->pop, p)) {
			zero_page_seen(w, &b, page);
			continue;
		}
		if (!b.nr)
			b.first = page;
		slot = w->rec + REC_HDR_BYTES + (size_t)b.nr * PAGE_SIZE;
		page_copy_racy(slot, reg->hva + page * PAGE_SIZE);
		if (page_is_zero(slot)) {
			zero_page_seen(w, &b, page);
			continue;
		}
		set_bit64((uint64_t *)(w->rec + sizeof(struct mig_pages)), page - b.first);
		b.last = (uint32_t)(page - b.first);
		b.nr++;
		if (MIG_READ_ONCE(ms->cancel))
			return -ECANCELED;
	}
	r = send_batch(w, &b);
	if (r)
		return r;
	return send_zero_run(w, &b);
}

static int worker_round(struct mig_worker *w, enum worker_cmd cmd)
{
	struct mig_source *ms = w->ms;
	uint64_t i;
	int r = 0;

	if (cmd == CMD_DIGEST)
		return mig_digest_part(&ms->digest, w->idx, ms->nr_workers);
	w->r_pages = w->r_zero = w->r_dirty = 0;
	w->r_harvest_ns = w->r_harvest_calls = w->r_max_harvest_ns = 0;
	for (i = (uint64_t)w->idx; i < ms->nr_ranges; i += (uint64_t)ms->nr_workers) {
		if (MIG_READ_ONCE(ms->cancel) && cmd != CMD_FINAL)
			return -ECANCELED;
		r = do_range(w, &ms->ranges[i], cmd == CMD_ROUND0);
		if (r)
			return r;
	}
	/*
	 * Pre-copy: hash this worker's share of the stale chunks after every
	 * round, so that the downtime re-hashes only what changed since. Not
	 * after the final pass: a chunk hashed here could still be marked by
	 * another worker's final harvest; CMD_DIGEST runs once all marked.
	 */
	if (cmd == CMD_FINAL)
		return 0;
	return mig_digest_part(&ms->digest, w->idx, ms->nr_workers);
}

static void *worker_fn(void *arg)
{
	struct mig_worker *w = arg;
	struct mig_source *ms = w->ms;
	uint64_t gen = w->gen0;

	for (;;) {
		enum worker_cmd cmd;
		int r;

		pthread_mutex_lock(&ms->lock);
		while (ms->cmd_gen == gen)
			pthread_cond_wait(&ms->cond_work, &ms->lock);
		gen = ms->cmd_gen;
		cmd = ms->cmd;
		pthread_mutex_unlock(&ms->lock);
		if (cmd == CMD_EXIT)
			break;
		r = worker_round(w, cmd);
		if (r && r != -ECANCELED) {
			/* only channel writes fail with anything else */
			set_error(ms, r, "channel %u: %s", w->chan->index,
				  r == -EPIPE || r == -ECONNRESET ? "the destination closed the connection"
								  : strerror(-r));
			abort_chans(ms);
		}
		pthread_mutex_lock(&ms->lock);
		if (--ms->busy == 0)
			pthread_cond_broadcast(&ms->cond_done);
		pthread_mutex_unlock(&ms->lock);
	}
	return NULL;
}

/*
 * A command still running while the link makes no progress for
 * ack_timeout_ms, or a pre-copy round still running at the attempt's
 * timeout (cancel action), fails the attempt: a blackholed TCP connection
 * would otherwise block a sender for the kernel's retransmission timeout
 * (many minutes), with the VM paused if it happens during stop-and-copy.
 */
static void check_stuck(struct mig_source *ms, enum worker_cmd cmd, uint64_t *last_bytes,
			uint64_t *last_progress)
{
	uint64_t now = now_ns(), b = chans_bytes(ms), tmo = MIG_READ_ONCE(ms->timeout_ms);

	if (b != *last_bytes) {
		*last_bytes = b;
		*last_progress = now;
	}
	if (now - *last_progress >= (uint64_t)ms->p.ack_timeout_ms * 1000000)
		set_error(ms, -ETIMEDOUT, "no progress on the link for %u ms (destination stalled or unreachable)",
			  ms->p.ack_timeout_ms);
	else if (cmd != CMD_FINAL && tmo && ms->p.timeout_action == MIG_TIMEOUT_CANCEL &&
		 now - ms->attempt_start_ns >= tmo * 1000000)
		set_error(ms, -ETIMEDOUT, "timed out after %.1f s in round %u (link too slow or stalled)",
			  (double)tmo / 1000, ms->round);
}

/* Run @cmd on every worker and wait. A cancel unblocks writers after 2 s. */
static int run_cmd(struct mig_source *ms, enum worker_cmd cmd)
{
	uint64_t cancel_seen = 0, last_bytes = chans_bytes(ms), last_progress = now_ns();

	pthread_mutex_lock(&ms->lock);
	ms->cmd = cmd;
	ms->cmd_gen++;
	ms->busy = ms->nr_workers;
	pthread_cond_broadcast(&ms->cond_work);
	while (ms->busy) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&ms->cond_done, &ms->lock, &ts);
		if (ms->busy && !MIG_READ_ONCE(ms->cancel) && cmd != CMD_EXIT) {
			pthread_mutex_unlock(&ms->lock);
			check_stuck(ms, cmd, &last_bytes, &last_progress);
			pthread_mutex_lock(&ms->lock);
		}
		if (MIG_READ_ONCE(ms->cancel) && cmd != CMD_EXIT) {
			if (!cancel_seen)
				cancel_seen = now_ns();
			else if (now_ns() - cancel_seen > 2000000000ull) {
				abort_chans(ms);
			}
		}
	}
	pthread_mutex_unlock(&ms->lock);
	return MIG_READ_ONCE(ms->cancel) ? -ECANCELED : 0;
}

/* ---- setup and teardown of an attempt ---- */

static int build_ranges(struct mig_source *ms, uint64_t range_pages)
{
	uint64_t n = 0, off;
	int i;

	for (i = 0; i < ms->nr_regions; i++)
		n += DIV_ROUND_UP(ms->regions[i].size / PAGE_SIZE, range_pages);
	ms->ranges = calloc(n, sizeof(*ms->ranges));
	if (!ms->ranges)
		return -ENOMEM;
	n = 0;
	for (i = 0; i < ms->nr_regions; i++) {
		uint64_t np = ms->regions[i].size / PAGE_SIZE;

		for (off = 0; off < np; off += range_pages, n++) {
			ms->ranges[n].region = i;
			ms->ranges[n].first_page = off;
			ms->ranges[n].npages = MIN(range_pages, np - off);
		}
	}
	ms->nr_ranges = n;
	return 0;
}

static int send_hello(struct mig_source *ms, struct mig_chan *c)
{
	struct mig_hello h = { 0 };
	struct mig_region *rr = calloc((size_t)ms->nr_regions, sizeof(*rr));
	struct iovec iov[3];
	int i, r;

	if (!rr)
		return -ENOMEM;
	h.session = ms->attempt_start_ns ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)ms;
	h.channel = c->index;
	h.nr_channels = (uint32_t)ms->nr_chans;
	h.nr_regions = (uint32_t)ms->nr_regions;
	h.nr_vcpus = (uint32_t)ms->be->ops->nr_vcpus(ms->be);
	snprintf(h.backend, sizeof(h.backend), "%s", ms->p.kind ? ms->p.kind : ms->be->ops->name);
	h.desc_len = (uint32_t)ms->p.desc_len;
	h.features = ms->p.compress ? MIG_FEAT_ZSTD : 0;
	h.total_bytes = ms->total_pages * PAGE_SIZE;
	for (i = 0; i < ms->nr_regions; i++) {
		rr[i].slot = ms->regions[i].slot;
		rr[i].gpa = ms->regions[i].gpa;
		rr[i].size = ms->regions[i].size;
	}
	iov[0] = (struct iovec){ &h, sizeof(h) };
	iov[1] = (struct iovec){ rr, (size_t)ms->nr_regions * sizeof(*rr) };
	iov[2] = (struct iovec){ (void *)ms->p.desc, ms->p.desc_len };
	r = chan_write_preamble(c);
	if (!r)
		r = chan_write_rec(c, MIG_REC_HELLO, 0, iov, ms->p.desc_len ? 3 : 2, 0);
	free(rr);
	return r;
}

static void workers_free(struct mig_source *ms)
{
	int i;

	if (!ms->workers)
		return;
	for (i = 0; i < ms->nr_workers; i++) {
		struct mig_worker *w = &ms->workers[i];

		free(w->rec);
		free(w->zbuf);
		free(w->bm);
		free(w->pop);
		if (w->zc)
			ZSTD_freeCCtx(w->zc);
		if (w->pm >= 0)
			close(w->pm);
	}
	free(ms->workers);
	ms->workers = NULL;
}

static int workers_start(struct mig_source *ms, uint64_t range_pages)
{
	int i, r;

	ms->workers = calloc((size_t)ms->nr_workers, sizeof(*ms->workers));
	if (!ms->workers)
		return -ENOMEM;
	for (i = 0; i < ms->nr_workers; i++) {
		struct mig_worker *w = &ms->workers[i];

		w->ms = ms;
		w->idx = i;
		w->pm = pagemap_open();
		w->chan = &ms->chans[i % ms->nr_chans];
		w->rec = calloc(1, REC_HDR_BYTES + (size_t)MIG_BATCH_SPAN * PAGE_SIZE);
		w->bm = calloc(bitmap_words(range_pages), 8);
		w->pop = calloc(bitmap_words(range_pages), 8);
		if (!w->rec || !w->bm || !w->pop)
			return -ENOMEM;
		if (ms->p.compress) {
			w->zcap = ZSTD_compressBound((size_t)MIG_BATCH_SPAN * PAGE_SIZE);
			w->zbuf = malloc(w->zcap);
			w->zc = ZSTD_createCCtx();
			if (!w->zbuf || !w->zc)
				return -ENOMEM;
		}
	}
	pthread_mutex_lock(&ms->lock);
	ms->cmd = CMD_NONE;
	for (i = 0; i < ms->nr_workers; i++)
		ms->workers[i].gen0 = ms->cmd_gen;
	pthread_mutex_unlock(&ms->lock);
	for (i = 0; i < ms->nr_workers; i++) {
		r = pthread_create(&ms->workers[i].thread, NULL, worker_fn, &ms->workers[i]);
		if (r)
			return -r;
		ms->workers[i].started = true;
	}
	return 0;
}

static void workers_stop(struct mig_source *ms)
{
	int i;

	if (!ms->workers)
		return;
	pthread_mutex_lock(&ms->lock);
	ms->cmd = CMD_EXIT;
	ms->cmd_gen++;
	pthread_cond_broadcast(&ms->cond_work);
	pthread_mutex_unlock(&ms->lock);
	for (i = 0; i < ms->nr_workers; i++)
		if (ms->workers[i].started)
			pthread_join(ms->workers[i].thread, NULL);
	workers_free(ms);
}

static void ring_entry(void *opaque, uint32_t slot, uint64_t offset)
{
	struct mig_source *ms = opaque;
	int i;

	for (i = 0; i < ms->nr_regions; i++)
		if (ms->regions[i].slot == slot && offset < ms->regions[i].size / PAGE_SIZE) {
			__atomic_fetch_or(&ms->ring_acc[i][offset / 64], 1ull << (offset % 64),
					  __ATOMIC_RELAXED);
			return;
		}
}

static int harvest_rings(struct mig_source *ms)
{
	int r;

	if (ms->p.dirty.mode != DIRTY_MODE_RING)
		return 0;
	r = ms->be->ops->harvest_rings(ms->be, ring_entry, ms);
	return r < 0 ? r : 0;
}

/* Send the ROUND marker on every channel. */
static int send_round_markers(struct mig_source *ms, uint32_t round)
{
	int i, r;

	for (i = 0; i < ms->nr_chans; i++) {
		struct mig_round m = { .round = round };
		struct iovec iov = { &m, sizeof(m) };
		int j;

		for (j = i; j < ms->nr_workers; j += ms->nr_chans)
			m.pages += ms->workers[j].r_pages + ms->workers[j].r_zero;
		r = chan_write_rec(&ms->chans[i], MIG_REC_ROUND, 0, &iov, 1, 0);
		if (r)
			return r;
	}
	return 0;
}

/* Wait for the destination's verdict on channel 0. */
static int wait_ack(struct mig_source *ms)
{
	struct mig_chan back;
	struct mig_rec_hdr h;
	uint8_t *buf = NULL;
	size_t cap = 0;
	char err[200];
	int r;

	chan_init(&back, ms->chans[0].fd, true, 0);
	back.io_timeout_ms = ms->p.ack_timeout_ms;
	r = chan_read_rec(&back, &h, &buf, &cap, err, sizeof(err));
	if (r) {
		set_error(ms, r, "no verdict from the destination: %s", err);
	} else if (h.type != MIG_REC_ACK || h.len < sizeof(struct mig_status)) {
		r = -EPROTO;
		set_error(ms, r, "destination replied with a %s record, expected ACK",
			  mig_rec_name(h.type));
	} else {
		struct mig_status *s = (struct mig_status *)buf;
		uint32_t ml = MIN(s->msg_len, h.len - (uint32_t)sizeof(*s));

		if (s->status) {
			r = s->status < 0 ? s->status : -EPROTO;
			set_error(ms, r, "destination rejected the migration: %.*s", (int)ml,
				  (char *)(s + 1));
		}
	}
	free(buf);
	back.fd = -1;
	pthread_mutex_destroy(&back.lock);
	return r;
}

static int send_status(struct mig_chan *c, uint16_t type, int status, const char *msg)
{
	struct mig_status s = { .status = status, .msg_len = (uint32_t)MIN(strlen(msg), 1024) };
	struct iovec iov[2] = { { &s, sizeof(s) }, { (void *)msg, s.msg_len } };

	return chan_write_rec(c, type, 0, iov, 2, 0);
}

static void info_update(struct mig_source *ms, void (*fn)(struct mig_info *, void *), void *arg)
{
	pthread_mutex_lock(&ms->info_lock);
	fn(&ms->info, arg);
	pthread_mutex_unlock(&ms->info_lock);
}

static void set_state_fn(struct mig_info *i, void *arg)
{
	i->state = *(enum mig_state *)arg;
}

static void set_state(struct mig_source *ms, enum mig_state s)
{
	info_update(ms, set_state_fn, &s);
}

/* Sum the workers' round counters into @ri and estimate what remains. */
static void round_account(struct mig_source *ms, struct mig_round_info *ri, uint64_t t_start,
			  uint64_t bytes_before)
{
	uint64_t now = now_ns(), i;
	double rem = 0, rate = 0;
	int j;

	for (j = 0; j < ms->nr_workers; j++) {
		struct mig_worker *w = &ms->workers[j];

		ri->pages += w->r_pages;
		ri->zero_pages += w->r_zero;
		ri->dirty_pages += w->r_dirty;
		ri->harvest_ns += w->r_harvest_ns;
		ri->harvest_calls += w->r_harvest_calls;
		ri->max_harvest_ns = MAX(ri->max_harvest_ns, w->r_max_harvest_ns);
	}
	ri->duration_ns = now - t_start;
	ri->bytes = chans_bytes(ms) - bytes_before;
	ri->bandwidth = ri->duration_ns ? (double)ri->bytes / ((double)ri->duration_ns / 1e9) : 0;
	/* No global sync: each range's rate, projected from its last harvest to now. */
	for (i = 0; i < ms->nr_ranges; i++) {
		const struct mig_range *rg = &ms->ranges[i];
		double proj = rg->rate * (double)(now - rg->last_harvest_ns);

		rem += MIN(proj, (double)rg->npages);
		rate += rg->rate;
	}
	ri->est_remaining_pages = (uint64_t)rem;
	ri->dirty_rate = rate * 1e9;
}

struct round_done_arg {
	const struct mig_round_info *ri;
	uint64_t expected_ms;
	double bw;
};

static void round_done_fn(struct mig_info *i, void *arg)
{
	struct round_done_arg *a = arg;

	i->dirty_sync_count = a->ri->round + 1;
	i->zero_pages += a->ri->zero_pages;
	i->normal_pages += a->ri->pages;
	i->normal_bytes = i->normal_pages * PAGE_SIZE;
	i->remaining = a->ri->est_remaining_pages * PAGE_SIZE;
	if (a->ri->dirty_rate > 0 || a->ri->duration_ns == 0 || a->expected_ms)
		i->dirty_pages_rate = a->ri->dirty_rate; /* the final pass keeps the last estimate */
	i->expected_downtime_ms = a->expected_ms;
	i->throttle_pct = a->ri->throttle_pct;
	i->harvest_ns += a->ri->harvest_ns;
	i->max_harvest_ns = MAX(i->max_harvest_ns, a->ri->max_harvest_ns);
}

static void attempt_cleanup(struct mig_source *ms)
{
	int i;

	workers_stop(ms);
	pthread_mutex_lock(&ms->info_lock);
	ms->info.transferred = chans_bytes(ms);
	ms->chans_live = false;
	for (i = 0; i < ms->nr_chans; i++)
		chan_close(&ms->chans[i]);
	ms->nr_chans = 0;
	pthread_mutex_unlock(&ms->info_lock);
	free(ms->ranges);
	ms->ranges = NULL;
	free_bitmaps(ms->fetched, ms->nr_regions);
	ms->fetched = NULL;
	free_bitmaps(ms->ring_acc, ms->nr_regions);
	ms->ring_acc = NULL;
	mig_digest_free(&ms->digest);
}

static void final_fn(struct mig_info *i, void *arg)
{
	struct mig_info *src = arg;

	i->state = src->state;
	i->total_ms = src->total_ms;
	i->downtime_ms = src->downtime_ms;
	i->final_ms = src->final_ms;
	i->final_pages = src->final_pages;
	i->vcpu_ms = src->vcpu_ms;
	i->ack_ms = src->ack_ms;
	i->teardown_ms = src->teardown_ms;
	i->error = src->error;
	memcpy(i->error_msg, src->error_msg, sizeof(i->error_msg));
	i->mbps = src->mbps;
	if (i->state == MIG_STATE_COMPLETED)
		i->remaining = 0;
}

int mig_source_migrate(struct mig_source *ms, const struct mig_params *params, mig_round_fn cb,
		       void *opaque)
{
	struct backend *be = ms->be;
	struct mig_uri uri;
	struct mig_info fin = { 0 };
	uint64_t range_pages, t0 = now_ns(), t_pause = 0, bw_est = 0, t_setup;
	bool paused = false, dirty_on = false, throttled = false;
	uint32_t round = 0, high_cnt = 0;
	int throttle = 0, r, i;
	char err[256];

	/* ---- parameters ---- */
	ms->p = *params;
	if (!ms->p.threads)
		ms->p.threads = 1;
	if (!ms->p.range_bytes)
		ms->p.range_bytes = MIG_DEFAULT_RANGE;
	if (!ms->p.downtime_ms)
		ms->p.downtime_ms = MIG_DEFAULT_DOWNTIME_MS;
	if (!ms->p.max_rounds)
		ms->p.max_rounds = 1000;
	if (!ms->p.ack_timeout_ms)
		ms->p.ack_timeout_ms = 60000;
	if (!ms->p.chunk_pages)
		ms->p.chunk_pages = 256;
	if (ms->p.threads < 1 || ms->p.threads > 64 || ms->p.channels < 0 ||
	    ms->p.channels > (int)MIG_MAX_CHANNELS || ms->p.range_bytes % (256 << 10) ||
	    ms->p.desc_len > MIG_MAX_DESC || (ms->p.desc_len && !ms->p.desc) ||
	    (ms->p.chunk_pages & (ms->p.chunk_pages - 1)) || ms->p.chunk_pages > 65536)
		return -EINVAL;
	r = mig_uri_parse(ms->p.uri, &uri, err, sizeof(err));
	if (r)
		return r;
	range_pages = ms->p.range_bytes / PAGE_SIZE;
	ms->nr_workers = ms->p.threads;
	ms->nr_chans = uri.kind == MIG_URI_FILE ? 1
			: ms->p.channels ? MIN(ms->p.channels, ms->nr_workers) : ms->nr_workers;
	MIG_WRITE_ONCE(ms->downtime_ms, ms->p.downtime_ms);
	MIG_WRITE_ONCE(ms->bandwidth, ms->p.bandwidth);
	MIG_WRITE_ONCE(ms->timeout_ms, (uint64_t)(ms->p.timeout_s * 1000));
	MIG_WRITE_ONCE(ms->auto_converge, ms->p.no_auto_converge ? 0 : 1);
	MIG_WRITE_ONCE(ms->cancel, false);
	ms->err = 0;
	ms->errmsg[0] = 0;
	ms->bw_bytes = 0;
	ms->bw_start_ns = t0;
	ms->attempt_start_ns = t0;

	pthread_mutex_lock(&ms->info_lock);
	memset(&ms->info, 0, sizeof(ms->info));
	ms->info.state = MIG_STATE_SETUP;
	ms->info.total = ms->total_pages * PAGE_SIZE;
	ms->info.remaining = ms->info.total;
	pthread_mutex_unlock(&ms->info_lock);

	/* ---- setup: memory for the attempt, channels, HELLO, dirty tracking ---- */
	r = -ENOMEM;
	ms->fetched = alloc_bitmaps(ms->regions, ms->nr_regions);
	if (!ms->fetched)
		goto fail_setup;
	for (i = 0; i < ms->nr_regions; i++)
		memcpy(ms->fetched[i], ms->carry[i],
		       bitmap_words(ms->regions[i].size / PAGE_SIZE) * 8);
	if (ms->p.dirty.mode == DIRTY_MODE_RING) {
		ms->ring_acc = alloc_bitmaps(ms->regions, ms->nr_regions);
		if (!ms->ring_acc)
			goto fail_setup;
	}
	r = build_ranges(ms, range_pages);
	if (r)
		goto fail_setup;
	r = mig_digest_prepare(&ms->digest, ms->regions, ms->nr_regions, ms->p.chunk_pages);
	if (!r)
		r = mig_digest_track(&ms->digest);
	if (r)
		goto fail_setup;
	for (i = 0; i < ms->nr_chans; i++) {
		int fd;
		bool sock;

		r = mig_connect(&uri, &fd, &sock, err, sizeof(err));
		if (r) {
			set_error(ms, r, "%s", err);
			goto fail;
		}
		pthread_mutex_lock(&ms->info_lock);
		chan_init(&ms->chans[i], fd, sock, (uint32_t)i);
		pthread_mutex_unlock(&ms->info_lock);
	}
	pthread_mutex_lock(&ms->info_lock);
	ms->chans_live = true;
	pthread_mutex_unlock(&ms->info_lock);
	for (i = 0; i < ms->nr_chans; i++) {
		r = send_hello(ms, &ms->chans[i]);
		if (r) {
			set_error(ms, r, "channel %d: sending HELLO: %s", i, strerror(-r));
			goto fail;
		}
	}
	r = workers_start(ms, range_pages);
	if (r) {
		set_error(ms, r, "starting %d worker threads: %s", ms->nr_workers, strerror(-r));
		goto fail;
	}
	r = be->ops->dirty_start(be, &ms->p.dirty);
	if (r) {
		set_error(ms, r, "starting dirty tracking (%s): %s", mode_name(ms->p.dirty.mode),
			  strerror(-r));
		goto fail;
	}
	dirty_on = true;
	{
		uint64_t now = now_ns();

		for (uint64_t k = 0; k < ms->nr_ranges; k++)
			ms->ranges[k].last_harvest_ns = now;
		t_setup = now;
	}
	pthread_mutex_lock(&ms->info_lock);
	ms->info.setup_ms = (t_setup - t0) / 1000000;
	ms->info.state = MIG_STATE_ACTIVE;
	pthread_mutex_unlock(&ms->info_lock);

	/* ---- pre-copy rounds ---- */
	uint64_t est_prev = ms->total_pages;
	for (round = 0;; round++) {
		struct mig_round_info ri = { .round = round, .est_dirty_pages = est_prev };
		uint64_t rt0 = now_ns(), b0 = chans_bytes(ms), expected_ms, limit, tmo;
		double bw;
		struct round_done_arg a;
		bool converged;

		ms->round = round;
		r = harvest_rings(ms);
		if (r) {
			set_error(ms, r, "harvesting dirty rings: %s", strerror(-r));
			goto fail;
		}
		r = run_cmd(ms, round == 0 ? CMD_ROUND0 : CMD_ROUND);
		if (r)
			goto fail;
		r = send_round_markers(ms, round);
		if (r) {
			set_error(ms, r, "sending ROUND: %s", strerror(-r));
			goto fail;
		}
		round_account(ms, &ri, rt0, b0);
		est_prev = ri.est_remaining_pages;
		/* Bandwidth: rounds that moved little say little about the link. */
		if (ri.bytes >= (4u << 20) || !bw_est)
			bw_est = (uint64_t)ri.bandwidth;
		bw = bw_est ? (double)bw_est : 1e9;
		expected_ms = (uint64_t)((double)ri.est_remaining_pages * PAGE_SIZE / bw * 1000);
		ri.expected_downtime_ms = expected_ms;
		limit = MIG_READ_ONCE(ms->downtime_ms);
		converged = expected_ms <= limit || ri.est_remaining_pages == 0;

		/* Auto-converge (QEMU's rule): dirtying faster than half the link, twice -> throttle. */
		if (!converged && round >= 1 && MIG_READ_ONCE(ms->auto_converge) &&
		    ri.dirty_rate * PAGE_SIZE > 0.5 * bw) {
			if (++high_cnt >= 2) {
				high_cnt = 0;
				throttle = throttle ? MIN(throttle + 10, 99) : 20;
				if (be->ops->throttle && !be->ops->throttle(be, throttle))
					throttled = true;
			}
		}
		ri.throttle_pct = throttle;
		a = (struct round_done_arg){ .ri = &ri, .expected_ms = expected_ms, .bw = bw };
		info_update(ms, round_done_fn, &a);
		if (cb)
			cb(opaque, &ri);
		if (converged)
			break;
		tmo = MIG_READ_ONCE(ms->timeout_ms);
		if (tmo && now_ns() - t0 >= tmo * 1000000) {
			if (ms->p.timeout_action == MIG_TIMEOUT_FORCE)
				break;
			r = -ETIMEDOUT;
			set_error(ms, r, "did not converge within %.1f s (expected downtime %llu ms > %llu ms)",
				  (double)tmo / 1000, (unsigned long long)expected_ms,
				  (unsigned long long)limit);
			goto fail;
		}
		if (round + 1 >= ms->p.max_rounds) {
			r = -ETIMEDOUT;
			set_error(ms, r, "did not converge in %u rounds", ms->p.max_rounds);
			goto fail;
		}
		if (MIG_READ_ONCE(ms->cancel)) {
			r = -ECANCELED;
			goto fail;
		}
	}

	/* ---- stop-and-copy ---- */
	set_state(ms, MIG_STATE_STOP_COPY);
	t_pause = now_ns();
	r = be->ops->pause(be);
	if (r) {
		set_error(ms, r, "pausing vCPUs: %s", strerror(-r));
		goto fail;
	}
	paused = true;
	r = harvest_rings(ms);
	if (r) {
		set_error(ms, r, "harvesting dirty rings: %s", strerror(-r));
		goto fail;
	}
	ms->round = ++round;
	/* last pages, then every worker hashes its share of memory */
	r = run_cmd(ms, CMD_FINAL);
	if (!r)
		r = run_cmd(ms, CMD_DIGEST);
	if (r)
		goto fail;
	for (i = 0; i < ms->nr_workers; i++)
		fin.final_pages += ms->workers[i].r_pages + ms->workers[i].r_zero;
	{
		XXH128_hash_t h = XXH3_128bits(ms->digest.chunk_hash,
					       ms->digest.nr_chunks * sizeof(uint64_t));
		struct mig_digest d = { .chunk_pages = ms->p.chunk_pages,
					.nr_chunks = ms->digest.nr_chunks,
					.total_lo = h.low64,
					.total_hi = h.high64 };
		uint64_t tv = now_ns(), nv = (uint64_t)be->ops->nr_vcpus(be);
		size_t cap = MIG_MAX_VCPU_STATE;
		uint8_t *vb = malloc(cap);
		struct iovec iov[2];

		fin.final_ms = (tv - t_pause) / 1000000;
		if (!vb) {
			r = -ENOMEM;
			set_error(ms, r, "out of memory");
			goto fail;
		}
		for (uint64_t v = 0; v < nv; v++) {
			size_t used = 0;
			struct mig_vcpu mv = { .vcpu = (uint32_t)v };

			r = be->ops->save_vcpu(be, (int)v, vb, cap, &used);
			if (r || !used || used > cap) {
				r = r ? r : -EIO;
				set_error(ms, r, "saving vCPU %llu: %s", (unsigned long long)v, strerror(-r));
				free(vb);
				goto fail;
			}
			mv.len = (uint32_t)used;
			iov[0] = (struct iovec){ &mv, sizeof(mv) };
			iov[1] = (struct iovec){ vb, used };
			r = chan_write_rec(&ms->chans[0], MIG_REC_VCPU, 0, iov, 2, 0);
			if (r)
				break;
		}
		free(vb);
		fin.vcpu_ms = (now_ns() - tv) / 1000000;
		if (!r) {
			iov[0] = (struct iovec){ &d, sizeof(d) };
			iov[1] = (struct iovec){ ms->digest.chunk_hash, d.nr_chunks * sizeof(uint64_t) };
			r = chan_write_rec(&ms->chans[0], MIG_REC_DIGEST, 0, iov, 2, 0);
		}
		for (i = 0; !r && i < ms->nr_chans; i++) {
			struct mig_end e = { .channel = (uint32_t)i };
			struct iovec ie = { &e, sizeof(e) };

			pthread_mutex_lock(&ms->chans[i].lock);
			e.records = ms->chans[i].seq;
			e.pages = ms->chans[i].pages;
			pthread_mutex_unlock(&ms->chans[i].lock);
			r = chan_write_rec(&ms->chans[i], MIG_REC_END, 0, &ie, 1, 0);
		}
		if (r) {
			set_error(ms, r, "sending the final records: %s",
				  r == -EPIPE || r == -ECONNRESET ? "the destination closed the connection"
								  : strerror(-r));
			goto fail;
		}
	}
	{
		uint64_t ta = now_ns();

		if (uri.kind == MIG_URI_FILE) {
			if (fsync(ms->chans[0].fd)) {
				r = -errno;
				set_error(ms, r, "fsync %s: %s", uri.path, strerror(errno));
				goto fail;
			}
		} else {
			for (i = 1; i < ms->nr_chans; i++)
				shutdown(ms->chans[i].fd, SHUT_WR);
			r = wait_ack(ms);
			if (r)
				goto fail;
		}
		fin.ack_ms = (now_ns() - ta) / 1000000;
	}
	fin.downtime_ms = (now_ns() - t_pause) / 1000000;

	/* ---- completed: the VM lives at the destination; teardown outside the downtime ---- */
	{
		uint64_t tt = now_ns();

		be->ops->dirty_stop(be);
		if (throttled && be->ops->throttle)
			be->ops->throttle(be, 0);
		fin.teardown_ms = (now_ns() - tt) / 1000000;
	}
	for (i = 0; i < ms->nr_regions; i++)
		memset(ms->carry[i], 0, bitmap_words(ms->regions[i].size / PAGE_SIZE) * 8);
	fin.state = MIG_STATE_COMPLETED;
	fin.total_ms = (now_ns() - t0) / 1000000;
	fin.mbps = fin.total_ms ? (double)chans_bytes(ms) * 8 / ((double)fin.total_ms / 1000) / 1e6 : 0;
	{
		struct mig_round_info ri = { .round = round, .pages = 0 };

		for (i = 0; i < ms->nr_workers; i++) {
			ri.pages += ms->workers[i].r_pages;
			ri.zero_pages += ms->workers[i].r_zero;
			ri.dirty_pages += ms->workers[i].r_dirty;
			ri.harvest_ns += ms->workers[i].r_harvest_ns;
			ri.harvest_calls += ms->workers[i].r_harvest_calls;
			ri.max_harvest_ns = MAX(ri.max_harvest_ns, ms->workers[i].r_max_harvest_ns);
		}
		ri.est_dirty_pages = est_prev;
		ri.duration_ns = fin.final_ms * 1000000;
		ri.throttle_pct = throttle;
		{
			struct round_done_arg a = { .ri = &ri, .expected_ms = 0 };

			info_update(ms, round_done_fn, &a);
		}
	}
	attempt_cleanup(ms);
	info_update(ms, final_fn, &fin);
	return 0;

fail_setup:
	set_error(ms, r, "setting up: %s", strerror(-r));
fail:
	/* Any failure: the VM keeps running here, with every fetched bit carried. */
	{
		uint64_t tt;
		int e;

		MIG_WRITE_ONCE(ms->cancel, true);
		pthread_mutex_lock(&ms->lock);
		e = ms->err ? ms->err : r;
		snprintf(err, sizeof(err), "%s", ms->errmsg[0] ? ms->errmsg : strerror(-e));
		pthread_mutex_unlock(&ms->lock);
		workers_stop(ms);
		/* The destination may have said why it hung up: prefer its reason. */
		if ((e == -EPIPE || e == -ECONNRESET) && ms->nr_chans && ms->chans[0].is_socket) {
			uint32_t save = ms->p.ack_timeout_ms;

			ms->p.ack_timeout_ms = 1000;
			pthread_mutex_lock(&ms->lock);
			ms->err = 0;
			pthread_mutex_unlock(&ms->lock);
			if (wait_ack(ms) == 0) {
				pthread_mutex_lock(&ms->lock);
				ms->err = e;
				pthread_mutex_unlock(&ms->lock);
			} else {
				pthread_mutex_lock(&ms->lock);
				if (!strncmp(ms->errmsg, "no verdict", 10)) {
					ms->err = e;
					snprintf(ms->errmsg, sizeof(ms->errmsg), "%s", err);
				} else {
					e = ms->err;
				}
				pthread_mutex_unlock(&ms->lock);
			}
			pthread_mutex_lock(&ms->lock);
			snprintf(err, sizeof(err), "%s", ms->errmsg);
			pthread_mutex_unlock(&ms->lock);
			ms->p.ack_timeout_ms = save;
		}
		/* Tell the destination, if it can still hear us. */
		for (i = 0; i < ms->nr_chans; i++)
			send_status(&ms->chans[i], MIG_REC_ABORT, e, err);
		if (paused)
			be->ops->resume(be);
		if (throttled && be->ops->throttle)
			be->ops->throttle(be, 0);
		if (ms->fetched)
			for (i = 0; i < ms->nr_regions; i++) {
				uint64_t w, n = bitmap_words(ms->regions[i].size / PAGE_SIZE);

				for (w = 0; w < n; w++)
					ms->carry[i][w] |= ms->fetched[i][w];
			}
		tt = now_ns();
		if (dirty_on)
			be->ops->dirty_stop(be);
		fin.teardown_ms = (now_ns() - tt) / 1000000;
		fin.state = e == -ECANCELED || e == -ETIMEDOUT ? MIG_STATE_CANCELLED : MIG_STATE_FAILED;
		fin.error = e;
		snprintf(fin.error_msg, sizeof(fin.error_msg), "%s", err);
		fin.total_ms = (now_ns() - t0) / 1000000;
		fin.downtime_ms = paused ? (now_ns() - t_pause) / 1000000 : 0;
		attempt_cleanup(ms);
		info_update(ms, final_fn, &fin);
		return e;
	}
}
