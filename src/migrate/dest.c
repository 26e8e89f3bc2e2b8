/* dest.c: the migration destination: accept channels, validate every record, load memory and vCPUs, verify, answer. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zstd.h>

#include "migrate_internal.h"
#include "rmapvm/util.h"

struct dest;

/* One incoming channel and its reader thread. */
struct dest_chan {
	struct mig_chan c;
	struct dest *d;
	pthread_t thread;
	bool started;
	int r;				/* reader's result */
	char err[256];			/* reader's reason */
	uint64_t pages;			/* data + zero pages received */
	uint64_t zero_pages;		/* of which zero */
	int64_t last_round;		/* last ROUND seen, -1 none */
	uint8_t *buf;			/* record payload */
	size_t cap;
	uint8_t *zbuf;			/* decompressed page data */
	ZSTD_DCtx *zd;
	int pm;				/* pagemap fd */
	uint64_t *pop;			/* populated bits for ZERO runs */
	uint64_t pop_words;
};

/* slot -> region index, sorted by slot for bsearch */
struct slot_idx {
	uint32_t slot;
	int region;
};

struct dest {
	struct backend *be;
	struct mig_hello hello;
	struct mig_region *rr;		/* stream layout (HELLO order = gpa order) */
	struct backend_region *regions;	/* the backend's, in the same order as rr */
	struct slot_idx *by_slot;
	int nr_regions;
	uint64_t **seen;		/* coverage, per region (atomic or) */
	struct dest_chan *chans;
	uint32_t nr_chans;
	uint8_t **vcpu_state;
	uint32_t *vcpu_len;
	struct mig_digest dg;
	uint64_t *chunk_hash;
	bool have_digest;
	bool failed;			/* relaxed atomic: a reader failed, others stop */
	uint64_t records;		/* atomic */
	uint32_t max_round;		/* atomic max */
};

static int cmp_slot(const void *a, const void *b)
{
	const struct slot_idx *x = a, *y = b;

	return x->slot < y->slot ? -1 : x->slot > y->slot;
}

static int cmp_region_gpa(const void *a, const void *b)
{
	const struct backend_region *x = a, *y = b;

	return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

static int region_of(struct dest *d, uint32_t slot)
{
	struct slot_idx key = { .slot = slot }, *f;

	f = bsearch(&key, d->by_slot, (size_t)d->nr_regions, sizeof(key), cmp_slot);
	return f ? f->region : -1;
}

/* Validate a HELLO payload; on success *@rr points into @p. */
static int check_hello(const uint8_t *p, uint32_t len, uint32_t ch, struct mig_hello *h,
		       const struct mig_region **rr, const uint8_t **desc, char *err, size_t errlen)
{
	uint64_t total = 0, end = 0;
	uint32_t i, j;

	if (len < sizeof(*h))
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO too short (%u bytes)", ch, len);
	memcpy(h, p, sizeof(*h));
	if (h->nr_channels < 1 || h->nr_channels > MIG_MAX_CHANNELS)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: %u channels (1..%u)", ch,
			       h->nr_channels, MIG_MAX_CHANNELS);
	if (h->channel >= h->nr_channels)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: channel index %u of %u", ch,
			       h->channel, h->nr_channels);
	if (h->nr_regions < 1 || h->nr_regions > MIG_MAX_REGIONS)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: %u regions (1..%u)", ch,
			       h->nr_regions, MIG_MAX_REGIONS);
	if (h->nr_vcpus < 1 || h->nr_vcpus > MIG_MAX_VCPUS)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: %u vCPUs (1..%u)", ch,
			       h->nr_vcpus, MIG_MAX_VCPUS);
	if (h->desc_len > MIG_MAX_DESC)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: description of %u bytes", ch,
			       h->desc_len);
	if (!h->backend[0] || memchr(h->backend, 0, sizeof(h->backend)) == NULL)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: bad backend name", ch);
	for (i = (uint32_t)strlen(h->backend); i < sizeof(h->backend); i++)
		if (h->backend[i])
			return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: backend name not NUL-padded", ch);
	if (h->features & ~MIG_FEAT_KNOWN)
		return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: unknown features 0x%x", ch,
			       h->features);
	if ((uint64_t)len != sizeof(*h) + (uint64_t)h->nr_regions * sizeof(struct mig_region) + h->desc_len)
		return mig_err(-EPROTO, err, errlen,
			       "channel %u: HELLO: length %u does not match %u regions and %u description bytes",
			       ch, len, h->nr_regions, h->desc_len);
	*rr = (const struct mig_region *)(p + sizeof(*h));
	*desc = p + sizeof(*h) + (size_t)h->nr_regions * sizeof(struct mig_region);
	for (i = 0; i < h->nr_regions; i++) {
		struct mig_region r;

		memcpy(&r, &(*rr)[i], sizeof(r));
		if (r.reserved || !r.size || r.size % PAGE_SIZE || r.gpa % PAGE_SIZE ||
		    r.gpa + r.size < r.gpa || r.size / PAGE_SIZE > (1ull << 40))
			return mig_err(-EPROTO, err, errlen,
				       "channel %u: HELLO: region %u (slot %u, gpa 0x%llx, size 0x%llx) is malformed",
				       ch, i, r.slot, (unsigned long long)r.gpa, (unsigned long long)r.size);
		if (i && r.gpa < end)
			return mig_err(-EPROTO, err, errlen,
				       "channel %u: HELLO: region %u overlaps or is not sorted by gpa", ch, i);
		for (j = 0; j < i; j++)
			if ((*rr)[j].slot == r.slot)
				return mig_err(-EPROTO, err, errlen, "channel %u: HELLO: slot %u twice", ch,
					       r.slot);
		end = r.gpa + r.size;
		total += r.size;
	}
	if (total != h->total_bytes)
		return mig_err(-EPROTO, err, errlen,
			       "channel %u: HELLO: total_bytes %llu but regions add up to %llu", ch,
			       (unsigned long long)h->total_bytes, (unsigned long long)total);
	return 0;
}

static int rec_error(struct dest_chan *dc, const struct mig_rec_hdr *h, int r, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int rec_error(struct dest_chan *dc, const struct mig_rec_hdr *h, int r, const char *fmt, ...)
{
	char what[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(dc->err, sizeof(dc->err), "channel %u: record %llu (%s): %s", dc->c.index,
		 (unsigned long long)h->seq, mig_rec_name(h->type), what);
	return r;
}

static void mark_seen(struct dest *d, int reg, uint64_t first, uint64_t n)
{
	uint64_t i;

	for (i = first; i < first + n; i++)
		__atomic_fetch_or(&d->seen[reg][i / 64], 1ull << (i % 64), __ATOMIC_RELAXED);
}

static int do_pages(struct dest_chan *dc, const struct mig_rec_hdr *h)
{
	struct dest *d = dc->d;
	struct mig_pages ph;
	const uint64_t *bm;
	const uint8_t *data;
	uint64_t np, i, bml, cnt = 0, raw;
	int reg;

	if (h->len < sizeof(ph))
		return rec_error(dc, h, -EPROTO, "too short (%u bytes)", h->len);
	memcpy(&ph, dc->buf, sizeof(ph));
	reg = region_of(d, ph.slot);
	if (reg < 0)
		return rec_error(dc, h, -EPROTO, "slot %u is not in the layout", ph.slot);
	np = d->rr[reg].size / PAGE_SIZE;
	if (ph.span < 1 || ph.span > MIG_BATCH_SPAN)
		return rec_error(dc, h, -EPROTO, "span %u (1..%u)", ph.span, MIG_BATCH_SPAN);
	if (ph.first_page >= np || ph.span > np - ph.first_page)
		return rec_error(dc, h, -EPROTO, "pages %llu+%u beyond slot %u's %llu pages",
				 (unsigned long long)ph.first_page, ph.span, ph.slot,
				 (unsigned long long)np);
	if (ph.nr_pages < 1 || ph.nr_pages > ph.span)
		return rec_error(dc, h, -EPROTO, "%u pages in a span of %u", ph.nr_pages, ph.span);
	bml = DIV_ROUND_UP(ph.span, 64) * 8;
	if ((uint64_t)h->len != sizeof(ph) + bml + ph.data_len)
		return rec_error(dc, h, -EPROTO, "length %u != header + %llu bitmap + %u data bytes",
				 h->len, (unsigned long long)bml, ph.data_len);
	bm = (const uint64_t *)(dc->buf + sizeof(ph));
	for (i = 0; i < bml / 8; i++)
		cnt += (uint64_t)__builtin_popcountll(bm[i]);
	if (ph.span % 64 && (bm[bml / 8 - 1] >> (ph.span % 64)))
		return rec_error(dc, h, -EPROTO, "bitmap bits set beyond span %u", ph.span);
	if (cnt != ph.nr_pages)
		return rec_error(dc, h, -EPROTO, "bitmap has %llu pages, header says %u",
				 (unsigned long long)cnt, ph.nr_pages);
	raw = (uint64_t)ph.nr_pages * PAGE_SIZE;
	data = dc->buf + sizeof(ph) + bml;
	if (h->flags & MIG_REC_F_ZSTD) {
		size_t got;

		if (!(d->hello.features & MIG_FEAT_ZSTD))
			return rec_error(dc, h, -EPROTO, "compressed, but HELLO did not announce zstd");
		if (!dc->zd) {
			dc->zd = ZSTD_createDCtx();
			dc->zbuf = malloc((size_t)MIG_BATCH_SPAN * PAGE_SIZE);
			if (!dc->zd || !dc->zbuf)
				return rec_error(dc, h, -ENOMEM, "out of memory");
		}
		{
			unsigned long long fs = ZSTD_getFrameContentSize(data, ph.data_len);

			if (fs != raw)
				return rec_error(dc, h, -EPROTO,
						 "zstd frame announces %llu bytes, expected %llu", fs,
						 (unsigned long long)raw);
		}
		got = ZSTD_decompressDCtx(dc->zd, dc->zbuf, (size_t)MIG_BATCH_SPAN * PAGE_SIZE, data,
					  ph.data_len);
		if (ZSTD_isError(got) || got != raw)
			return rec_error(dc, h, -EPROTO, "zstd data does not decompress to %llu bytes (%s)",
					 (unsigned long long)raw,
					 ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
		data = dc->zbuf;
	} else if (ph.data_len != raw) {
		return rec_error(dc, h, -EPROTO, "%u data bytes for %u raw pages", ph.data_len,
				 ph.nr_pages);
	}
	for (i = 0; i < ph.span; i++) {
		if (!test_bit64(bm, i))
			continue;
		memcpy(d->regions[reg].hva + (ph.first_page + i) * PAGE_SIZE, data, PAGE_SIZE);
		data += PAGE_SIZE;
		__atomic_fetch_or(&d->seen[reg][(ph.first_page + i) / 64],
				  1ull << ((ph.first_page + i) % 64), __ATOMIC_RELAXED);
	}
	dc->pages += ph.nr_pages;
	return 0;
}

static int do_zero(struct dest_chan *dc, const struct mig_rec_hdr *h, uint64_t *zero_pages)
{
	struct dest *d = dc->d;
	struct mig_zero z;
	uint64_t np, done;
	int reg;

	if (h->len != sizeof(z))
		return rec_error(dc, h, -EPROTO, "length %u, expected %zu", h->len, sizeof(z));
	memcpy(&z, dc->buf, sizeof(z));
	if (z.reserved)
		return rec_error(dc, h, -EPROTO, "reserved field is 0x%x", z.reserved);
	reg = region_of(d, z.slot);
	if (reg < 0)
		return rec_error(dc, h, -EPROTO, "slot %u is not in the layout", z.slot);
	np = d->rr[reg].size / PAGE_SIZE;
	if (!z.npages || z.first_page >= np || z.npages > np - z.first_page)
		return rec_error(dc, h, -EPROTO, "pages %llu+%llu not within slot %u's %llu pages",
				 (unsigned long long)z.first_page, (unsigned long long)z.npages,
				 z.slot, (unsigned long long)np);
	/* Pages never populated here are zero already: do not touch them. */
	for (done = 0; done < z.npages;) {
		uint64_t n = MIN(z.npages - done, dc->pop_words * 64), i;
		uint8_t *base = d->regions[reg].hva + (z.first_page + done) * PAGE_SIZE;

		pagemap_populated(dc->pm, base, n, dc->pop);
		for (i = 0; i < n; i++)
			if (test_bit64(dc->pop, i) && !page_is_zero(base + i * PAGE_SIZE))
				memset(base + i * PAGE_SIZE, 0, PAGE_SIZE);
		done += n;
	}
	mark_seen(d, reg, z.first_page, z.npages);
	dc->pages += z.npages;
	*zero_pages += z.npages;
	return 0;
}

static int do_vcpu(struct dest_chan *dc, const struct mig_rec_hdr *h)
{
	struct dest *d = dc->d;
	struct mig_vcpu v;

	if (dc->c.index != 0)
		return rec_error(dc, h, -EPROTO, "vCPU state on channel %u (only channel 0)", dc->c.index);
	if (h->len < sizeof(v))
		return rec_error(dc, h, -EPROTO, "too short");
	memcpy(&v, dc->buf, sizeof(v));
	if (v.vcpu >= d->hello.nr_vcpus)
		return rec_error(dc, h, -EPROTO, "vCPU %u of %u", v.vcpu, d->hello.nr_vcpus);
	if (!v.len || v.len > MIG_MAX_VCPU_STATE || h->len != sizeof(v) + v.len)
		return rec_error(dc, h, -EPROTO, "state length %u does not fit the record (%u)", v.len,
				 h->len);
	if (d->vcpu_state[v.vcpu])
		return rec_error(dc, h, -EPROTO, "vCPU %u sent twice", v.vcpu);
	d->vcpu_state[v.vcpu] = malloc(v.len);
	if (!d->vcpu_state[v.vcpu])
		return rec_error(dc, h, -ENOMEM, "out of memory");
	memcpy(d->vcpu_state[v.vcpu], dc->buf + sizeof(v), v.len);
	d->vcpu_len[v.vcpu] = v.len;
	return 0;
}

static int do_digest(struct dest_chan *dc, const struct mig_rec_hdr *h)
{
	struct dest *d = dc->d;
	struct mig_digest g;
	uint64_t want;

	if (dc->c.index != 0)
		return rec_error(dc, h, -EPROTO, "digest on channel %u (only channel 0)", dc->c.index);
	if (d->have_digest)
		return rec_error(dc, h, -EPROTO, "second digest");
	if (h->len < sizeof(g))
		return rec_error(dc, h, -EPROTO, "too short");
	memcpy(&g, dc->buf, sizeof(g));
	if (g.reserved || !g.chunk_pages || g.chunk_pages > 65536 ||
	    (g.chunk_pages & (g.chunk_pages - 1)))
		return rec_error(dc, h, -EPROTO, "chunk of %u pages (a power of two up to 65536)",
				 g.chunk_pages);
	want = mig_digest_nr_chunks(d->regions, d->nr_regions, g.chunk_pages);
	if (g.nr_chunks != want || (uint64_t)h->len != sizeof(g) + want * 8)
		return rec_error(dc, h, -EPROTO, "%llu chunks in %u bytes, the layout has %llu",
				 (unsigned long long)g.nr_chunks, h->len, (unsigned long long)want);
	d->chunk_hash = malloc(want * 8 + 8);
	if (!d->chunk_hash)
		return rec_error(dc, h, -ENOMEM, "out of memory");
	memcpy(d->chunk_hash, dc->buf + sizeof(g), want * 8);
	d->dg = g;
	d->have_digest = true;
	return 0;
}

static void *reader_fn(void *arg)
{
	struct dest_chan *dc = arg;
	struct dest *d = dc->d;
	struct mig_rec_hdr h;
	uint64_t zero_pages = 0;
	int r = 0;

	for (;;) {
		if (MIG_READ_ONCE(d->failed)) {
			r = -ECANCELED;
			snprintf(dc->err, sizeof(dc->err), "channel %u: stopped (another channel failed)",
				 dc->c.index);
			break;
		}
		r = chan_read_rec(&dc->c, &h, &dc->buf, &dc->cap, dc->err, sizeof(dc->err));
		if (r)
			break;
		MIG_ADD(d->records, 1);
		switch (h.type) {
		case MIG_REC_PAGES:
			r = do_pages(dc, &h);
			break;
		case MIG_REC_ZERO:
			r = do_zero(dc, &h, &zero_pages);
			break;
		case MIG_REC_ROUND: {
			struct mig_round m;

			if (h.len != sizeof(m)) {
				r = rec_error(dc, &h, -EPROTO, "length %u", h.len);
				break;
			}
			memcpy(&m, dc->buf, sizeof(m));
			if (m.reserved || (int64_t)m.round != dc->last_round + 1) {
				r = rec_error(dc, &h, -EPROTO, "round %u after round %lld", m.round,
					      (long long)dc->last_round);
				break;
			}
			dc->last_round = m.round;
			{
				uint32_t cur = MIG_READ_ONCE(d->max_round);

				while (m.round + 1 > cur &&
				       !__atomic_compare_exchange_n(&d->max_round, &cur, m.round + 1, false,
								    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
					;
			}
			break;
		}
		case MIG_REC_VCPU:
			r = do_vcpu(dc, &h);
			break;
		case MIG_REC_DIGEST:
			r = do_digest(dc, &h);
			break;
		case MIG_REC_END: {
			struct mig_end e;

			if (h.len != sizeof(e)) {
				r = rec_error(dc, &h, -EPROTO, "length %u", h.len);
				break;
			}
			memcpy(&e, dc->buf, sizeof(e));
			if (e.reserved || e.channel != dc->c.index || e.records != h.seq ||
			    e.pages != dc->pages) {
				r = rec_error(dc, &h, -EPROTO,
					      "END says channel %u, %llu records, %llu pages; received %llu records, %llu pages",
					      e.channel, (unsigned long long)e.records,
					      (unsigned long long)e.pages, (unsigned long long)h.seq,
					      (unsigned long long)dc->pages);
				break;
			}
			if (dc->c.index == 0 && !d->have_digest) {
				r = rec_error(dc, &h, -EPROTO, "END before the memory digest");
				break;
			}
			if (dc->c.index == 0) {
				uint32_t v;

				for (v = 0; v < d->hello.nr_vcpus; v++)
					if (!d->vcpu_state[v])
						break;
				if (v < d->hello.nr_vcpus) {
					r = rec_error(dc, &h, -EPROTO, "END without vCPU %u's state", v);
					break;
				}
			}
			goto out;
		}
		case MIG_REC_ABORT: {
			struct mig_status s = { 0 };
			uint32_t ml = 0;

			if (h.len >= sizeof(s)) {
				memcpy(&s, dc->buf, sizeof(s));
				ml = (uint32_t)MIN((uint64_t)s.msg_len, h.len - sizeof(s));
			}
			snprintf(dc->err, sizeof(dc->err), "the source aborted the migration: %.*s",
				 (int)ml, (char *)dc->buf + sizeof(s));
			r = -ECONNABORTED;
			break;
		}
		default:
			r = rec_error(dc, &h, -EPROTO, "not expected from a source");
			break;
		}
		if (r)
			break;
	}
out:
	dc->r = r;
	if (r) {
		uint32_t i;

		MIG_WRITE_ONCE(d->failed, true);
		for (i = 0; i < d->nr_chans; i++)
			if (&d->chans[i] != dc)
				chan_abort(&d->chans[i].c, false);
	}
	dc->zero_pages = zero_pages;
	return NULL;
}

static void dest_free(struct dest *d, bool destroy_be)
{
	uint32_t i;

	if (d->chans) {
		for (i = 0; i < d->nr_chans; i++) {
			struct dest_chan *dc = &d->chans[i];

			if (dc->c.fd >= 0)
				chan_close(&dc->c);
			free(dc->buf);
			free(dc->zbuf);
			free(dc->pop);
			if (dc->zd)
				ZSTD_freeDCtx(dc->zd);
			if (dc->pm >= 0)
				close(dc->pm);
		}
		free(d->chans);
	}
	if (d->vcpu_state)
		for (i = 0; i < d->hello.nr_vcpus; i++)
			free(d->vcpu_state[i]);
	free(d->vcpu_state);
	free(d->vcpu_len);
	if (d->seen)
		for (i = 0; i < (uint32_t)d->nr_regions; i++)
			free(d->seen[i]);
	free(d->seen);
	free(d->rr);
	free(d->regions);
	free(d->by_slot);
	free(d->chunk_hash);
	if (destroy_be && d->be)
		d->be->ops->destroy(d->be);
}

/* Build the VM from the first HELLO and check its layout against the stream's. */
static int dest_setup(struct dest *d, const struct mig_region *rr, const uint8_t *desc,
		      const struct mig_dest_ops *ops, char *err, size_t errlen)
{
	char why[200] = "";
	int n, i, r;

	d->nr_regions = (int)d->hello.nr_regions;
	d->rr = malloc((size_t)d->nr_regions * sizeof(*d->rr));
	d->regions = calloc((size_t)d->nr_regions + 1, sizeof(*d->regions));
	d->by_slot = malloc((size_t)d->nr_regions * sizeof(*d->by_slot));
	d->seen = calloc((size_t)d->nr_regions, sizeof(*d->seen));
	d->vcpu_state = calloc(d->hello.nr_vcpus, sizeof(*d->vcpu_state));
	d->vcpu_len = calloc(d->hello.nr_vcpus, sizeof(*d->vcpu_len));
	if (!d->rr || !d->regions || !d->by_slot || !d->seen || !d->vcpu_state || !d->vcpu_len)
		return mig_err(-ENOMEM, err, errlen, "out of memory");
	memcpy(d->rr, rr, (size_t)d->nr_regions * sizeof(*rr));
	for (i = 0; i < d->nr_regions; i++) {
		d->by_slot[i] = (struct slot_idx){ .slot = d->rr[i].slot, .region = i };
		d->seen[i] = calloc(bitmap_words(d->rr[i].size / PAGE_SIZE) + 1, 8);
		if (!d->seen[i])
			return mig_err(-ENOMEM, err, errlen, "out of memory");
	}
	qsort(d->by_slot, (size_t)d->nr_regions, sizeof(*d->by_slot), cmp_slot);
	r = ops->create(ops->opaque, d->hello.backend, d->hello.desc_len ? desc : NULL,
			d->hello.desc_len, d->hello.nr_vcpus, &d->be, why, sizeof(why));
	if (r)
		return mig_err(r, err, errlen, "cannot build a '%s' VM for the stream: %s",
			       d->hello.backend, why[0] ? why : strerror(-r));
	if (d->be->ops->nr_vcpus(d->be) != (int)d->hello.nr_vcpus)
		return mig_err(-EPROTO, err, errlen, "the new VM has %d vCPUs, the stream %u",
			       d->be->ops->nr_vcpus(d->be), d->hello.nr_vcpus);
	n = d->be->ops->get_regions(d->be, d->regions, d->nr_regions + 1);
	if (n != d->nr_regions)
		return mig_err(-EPROTO, err, errlen, "the new VM has %d memory regions, the stream %d", n,
			       d->nr_regions);
	qsort(d->regions, (size_t)n, sizeof(*d->regions), cmp_region_gpa);
	for (i = 0; i < n; i++)
		if (d->regions[i].slot != d->rr[i].slot || d->regions[i].gpa != d->rr[i].gpa ||
		    d->regions[i].size != d->rr[i].size)
			return mig_err(-EPROTO, err, errlen,
				       "layout mismatch: region %d is slot %u gpa 0x%llx size 0x%llx here, "
				       "slot %u gpa 0x%llx size 0x%llx in the stream",
				       i, d->regions[i].slot, (unsigned long long)d->regions[i].gpa,
				       (unsigned long long)d->regions[i].size, d->rr[i].slot,
				       (unsigned long long)d->rr[i].gpa, (unsigned long long)d->rr[i].size);
	return 0;
}

/* Read preamble + HELLO of a new channel into @dc. */
static int read_hello(struct dest_chan *dc, struct mig_hello *h, const struct mig_region **rr,
		      const uint8_t **desc, char *err, size_t errlen)
{
	struct mig_rec_hdr rh;
	int r = chan_read_preamble(&dc->c, err, errlen);

	if (r)
		return r;
	r = chan_read_rec(&dc->c, &rh, &dc->buf, &dc->cap, err, errlen);
	if (r)
		return r;
	if (rh.type != MIG_REC_HELLO)
		return mig_err(-EPROTO, err, errlen, "channel %u: first record is %s, expected HELLO",
			       dc->c.index, mig_rec_name(rh.type));
	return check_hello(dc->buf, rh.len, dc->c.index, h, rr, desc, err, errlen);
}

static void send_ack(struct dest *d, int status, const char *msg)
{
	struct mig_status s = { .status = status, .msg_len = (uint32_t)MIN(strlen(msg), 1024) };
	struct iovec iov[2] = { { &s, sizeof(s) }, { (void *)msg, s.msg_len } };
	struct mig_chan back;

	if (!d->chans || d->chans[0].c.fd < 0 || !d->chans[0].c.is_socket)
		return;
	chan_init(&back, d->chans[0].c.fd, true, 0);
	chan_write_rec(&back, MIG_REC_ACK, 0, iov, 2, 0);
	pthread_mutex_destroy(&back.lock);
}

int mig_incoming(struct mig_listener *l, const struct mig_dest_params *params,
		 const struct mig_dest_ops *ops, struct backend **out, struct mig_dest_info *info,
		 char *err, size_t errlen)
{
	struct mig_dest_params p = params ? *params : (struct mig_dest_params){ 0 };
	struct dest d = { 0 };
	struct mig_dest_info inf = { 0 };
	uint64_t t0 = 0, tv, t_end;
	uint32_t i, accepted = 0;
	int r;

	if (!p.io_timeout_ms)
		p.io_timeout_ms = 60000;
	if (!p.digest_threads)
		p.digest_threads = 2;
	*out = NULL;

	/* ---- channel 0 (whichever connects first) decides the session ---- */
	for (;;) {
		struct dest_chan first = { .pm = -1, .last_round = -1 };
		const struct mig_region *rr = NULL;
		const uint8_t *desc = NULL;
		struct mig_hello h;
		bool sock;
		int fd;

		r = mig_accept(l, accepted ? p.io_timeout_ms : p.accept_timeout_ms, &fd, &sock, err,
			       errlen);
		if (r)
			goto fail;
		if (!t0)
			t0 = now_ns();
		chan_init(&first.c, fd, sock, accepted);
		first.c.io_timeout_ms = p.io_timeout_ms;
		r = read_hello(&first, &h, &rr, &desc, err, errlen);
		if (r) {
			chan_close(&first.c);
			free(first.buf);
			goto fail;
		}
		if (!d.chans) {
			d.hello = h;
			d.nr_chans = h.nr_channels;
			if (!mig_listener_multi(l) && h.nr_channels != 1) {
				chan_close(&first.c);
				free(first.buf);
				r = mig_err(-EPROTO, err, errlen, "a file stream with %u channels",
					    h.nr_channels);
				goto fail;
			}
			d.chans = calloc(d.nr_chans, sizeof(*d.chans));
			if (!d.chans) {
				chan_close(&first.c);
				free(first.buf);
				r = mig_err(-ENOMEM, err, errlen, "out of memory");
				goto fail;
			}
			for (i = 0; i < d.nr_chans; i++) {
				d.chans[i].c.fd = -1;
				d.chans[i].pm = -1;
				d.chans[i].last_round = -1;
			}
			r = dest_setup(&d, rr, desc, ops, err, errlen);
			if (r) {
				/* keep the channel so the source hears why */
				d.chans[h.channel] = first;
				d.chans[h.channel].c.index = h.channel;
				goto fail;
			}
		} else {
			struct mig_hello a = d.hello, b = h;

			a.channel = b.channel = 0;
			if (memcmp(&a, &b, sizeof(a)) ||
			    memcmp(rr, d.rr, (size_t)d.nr_regions * sizeof(*rr))) {
				chan_close(&first.c);
				free(first.buf);
				r = mig_err(-EPROTO, err, errlen,
					    "channel %u's HELLO does not match channel 0's (another session?)",
					    h.channel);
				goto fail;
			}
			if (d.chans[h.channel].c.fd >= 0) {
				chan_close(&first.c);
				free(first.buf);
				r = mig_err(-EPROTO, err, errlen, "channel %u connected twice", h.channel);
				goto fail;
			}
		}
		first.c.index = h.channel;
		first.d = &d;
		d.chans[h.channel] = first;
		if (++accepted == d.nr_chans)
			break;
	}

	/* ---- one reader per channel ---- */
	for (i = 0; i < d.nr_chans; i++) {
		struct dest_chan *dc = &d.chans[i];

		dc->d = &d;
		dc->pm = pagemap_open();
		dc->pop_words = 512;
		dc->pop = malloc(dc->pop_words * 8);
		if (!dc->pop) {
			r = mig_err(-ENOMEM, err, errlen, "out of memory");
			goto fail_readers;
		}
		if (pthread_create(&dc->thread, NULL, reader_fn, dc)) {
			r = mig_err(-EAGAIN, err, errlen, "cannot start reader threads");
			goto fail_readers;
		}
		dc->started = true;
	}
	r = 0;
fail_readers:
	for (i = 0; i < d.nr_chans; i++)
		if (d.chans[i].started)
			pthread_join(d.chans[i].thread, NULL);
	if (r) {
		MIG_WRITE_ONCE(d.failed, true);
		goto fail;
	}
	/* the first failure is the cause; "stopped" ones are its echo */
	for (i = 0; i < d.nr_chans; i++)
		if (d.chans[i].r && d.chans[i].r != -ECANCELED) {
			r = mig_err(d.chans[i].r, err, errlen, "%s", d.chans[i].err);
			goto fail;
		}
	for (i = 0; i < d.nr_chans; i++)
		if (d.chans[i].r) {
			r = mig_err(d.chans[i].r, err, errlen, "%s", d.chans[i].err);
			goto fail;
		}

	t_end = now_ns();
	/* ---- every page must have been sent at least once ---- */
	for (i = 0; i < (uint32_t)d.nr_regions; i++) {
		uint64_t np = d.rr[i].size / PAGE_SIZE, pg;

		for (pg = 0; pg < np; pg++)
			if (!test_bit64(d.seen[i], pg)) {
				r = mig_err(-EPROTO, err, errlen,
					    "incomplete stream: slot %u page %llu (gpa 0x%llx) was never sent",
					    d.rr[i].slot, (unsigned long long)pg,
					    (unsigned long long)(d.rr[i].gpa + pg * PAGE_SIZE));
				goto fail;
			}
	}

	/* ---- digest ---- */
	tv = now_ns();
	{
		struct mig_digest_job job;
		uint64_t lo, hi, c;

		r = mig_digest_prepare(&job, d.regions, d.nr_regions, d.dg.chunk_pages);
		if (!r)
			r = mig_digest_run(&job, p.digest_threads, &lo, &hi);
		if (r) {
			mig_digest_free(&job);
			r = mig_err(r, err, errlen, "computing the memory digest: %s", strerror(-r));
			goto fail;
		}
		for (c = 0; c < job.nr_chunks; c++)
			if (job.chunk_hash[c] != d.chunk_hash[c])
				break;
		if (c < job.nr_chunks || lo != d.dg.total_lo || hi != d.dg.total_hi) {
			int reg = 0;
			uint64_t pg = 0;

			if (c < job.nr_chunks) {
				mig_digest_chunk_pos(&job, c, &reg, &pg);
				r = mig_err(-EBADMSG, err, errlen,
					    "memory digest mismatch: chunk %llu (slot %u, gpa 0x%llx, %u pages) "
					    "differs from the source's",
					    (unsigned long long)c, d.regions[reg].slot,
					    (unsigned long long)(d.regions[reg].gpa + pg * PAGE_SIZE),
					    d.dg.chunk_pages);
			} else {
				r = mig_err(-EBADMSG, err, errlen,
					    "memory digest mismatch: total %016llx%016llx, source %016llx%016llx",
					    (unsigned long long)hi, (unsigned long long)lo,
					    (unsigned long long)d.dg.total_hi,
					    (unsigned long long)d.dg.total_lo);
			}
			mig_digest_free(&job);
			goto fail;
		}
		mig_digest_free(&job);
		inf.total_lo = lo;
		inf.total_hi = hi;
	}
	inf.verify_ms = (now_ns() - tv) / 1000000;

	/* ---- vCPU state ---- */
	tv = now_ns();
	for (i = 0; i < d.hello.nr_vcpus; i++) {
		r = d.be->ops->load_vcpu(d.be, (int)i, d.vcpu_state[i], d.vcpu_len[i]);
		if (r) {
			r = mig_err(r, err, errlen, "loading vCPU %u's state (%u bytes): %s", i,
				    d.vcpu_len[i], strerror(-r));
			goto fail;
		}
	}

	inf.load_ms = (now_ns() - tv) / 1000000;
	send_ack(&d, 0, "received, verified, resuming");
	inf.tail_ms = (now_ns() - t_end) / 1000000;
	snprintf(inf.kind, sizeof(inf.kind), "%s", d.hello.backend);
	inf.channels = d.nr_chans;
	inf.rounds = d.max_round;
	inf.records = d.records;
	for (i = 0; i < d.nr_chans; i++) {
		inf.pages += d.chans[i].pages - d.chans[i].zero_pages;
		inf.zero_pages += d.chans[i].zero_pages;
		inf.bytes += d.chans[i].c.bytes;
	}
	inf.total_ms = (now_ns() - t0) / 1000000;
	if (info)
		*info = inf;
	*out = d.be;
	dest_free(&d, false);
	return 0;

fail:
	send_ack(&d, r < 0 ? r : -EPROTO, err ? err : "rejected");
	if (info) {
		snprintf(inf.kind, sizeof(inf.kind), "%s", d.hello.backend);
		inf.total_ms = t0 ? (now_ns() - t0) / 1000000 : 0;
		*info = inf;
	}
	dest_free(&d, true);
	return r;
}
