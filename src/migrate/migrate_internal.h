/* migrate_internal.h: channels (record I/O over a socket or file), host page queries and helpers shared by src/migrate. */
#ifndef RMAPVM_MIGRATE_INTERNAL_H
#define RMAPVM_MIGRATE_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include "rmapvm/migrate.h"
#include "rmapvm/types.h"

#define MIG_READ_ONCE(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define MIG_WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define MIG_ADD(x, n)	     __atomic_fetch_add(&(x), (n), __ATOMIC_RELAXED)

/*
 * mig_chan - one direction-agnostic channel: a connected socket or a file.
 * Writers of several threads may share a channel: chan_write_rec() writes
 * a whole record under @lock, so records never interleave.
 */
struct mig_chan {
	int fd;			/* socket or file, -1 when closed */
	bool is_socket;		/* send(MSG_NOSIGNAL) / shutdown() apply */
	pthread_mutex_t lock;	/* serializes whole records on the write side */
	uint64_t seq;		/* next record's seq (write side) / expected seq (read side) */
	uint64_t pages;		/* data + zero pages written or read */
	uint64_t bytes;		/* bytes written or read (relaxed atomic) */
	uint32_t io_timeout_ms;	/* read side: fail when silent this long (0 = forever) */
	uint32_t index;		/* channel number in the session */
};

void chan_init(struct mig_chan *c, int fd, bool is_socket, uint32_t index);
/* Close the fd (idempotent). */
void chan_close(struct mig_chan *c);
/*
 * Make blocked I/O on the channel fail now. Thread safe. @writes_only keeps
 * the read side open (the source still wants the destination's verdict).
 */
void chan_abort(struct mig_chan *c, bool writes_only);

/* Write exactly @len bytes / the preamble. 0 or -errno (-EPIPE when the peer left). */
int chan_write_all(struct mig_chan *c, const void *buf, size_t len);
int chan_write_preamble(struct mig_chan *c);
/*
 * chan_write_rec() - one record whose payload is the concatenation of
 * @iov[0..n): header with seq and checksum, then the payload. @pages is
 * added to the channel's page count. 0 or -errno.
 */
int chan_write_rec(struct mig_chan *c, uint16_t type, uint16_t flags, const struct iovec *iov,
		   int n, uint64_t pages);

/* Read exactly @len bytes. 0, -ENODATA on EOF before any byte, -EPIPE on EOF inside, -errno. */
int chan_read_all(struct mig_chan *c, void *buf, size_t len);
/* Read and check the preamble; -EPROTO with the reason in @err. */
int chan_read_preamble(struct mig_chan *c, char *err, size_t errlen);
/*
 * chan_read_rec() - read one record into *@buf (grown as needed, caller
 * frees) and check type range, flags, length bound, sequence and checksum.
 * Returns 0, or -errno with a one-line reason in @err naming the channel
 * and the record number.
 */
int chan_read_rec(struct mig_chan *c, struct mig_rec_hdr *h, uint8_t **buf, size_t *cap, char *err,
		  size_t errlen);

/* Connect to @u (tcp/unix) or create the file. 0 or -errno with @err. */
int mig_connect(const struct mig_uri *u, int *fd, bool *is_socket, char *err, size_t errlen);
/* Accept one connection (or open the file) within @timeout_ms (0 = forever). */
int mig_accept(struct mig_listener *l, uint32_t timeout_ms, int *fd, bool *is_socket, char *err,
	       size_t errlen);
/* Can the listener give more than one channel? (file: no) */
bool mig_listener_multi(const struct mig_listener *l);

/* Record type name for messages. */
const char *mig_rec_name(unsigned int type);

/* snprintf into @err if non-NULL; returns @r for `return mig_err(...)`. */
int mig_err(int r, char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/*
 * Host page queries: /proc/self/pagemap (present or swapped = populated).
 * pagemap_open() returns an fd or -1 (then every page counts as populated).
 * pagemap_populated() sets bit i of @bitmap (which it zeroes first, npages
 * rounded up to 64) for each populated page i of [hva, hva + npages pages).
 */
int pagemap_open(void);
int pagemap_populated(int fd, const void *hva, uint64_t npages, uint64_t *bitmap);

/* True when the page at @p is all zero. Pages may change under us: racy reads. */
bool page_is_zero(const void *p);
/* Copy one page that vCPUs may be writing (atomic word loads under TSan). */
void page_copy_racy(void *dst, const void *src);
/* Hash @len bytes that may be concurrently written (TSan-safe copy first). */

/* Per-slot page count helpers. */
static inline uint64_t bitmap_words(uint64_t bits)
{
	return (bits + 63) / 64;
}

static inline bool test_bit64(const uint64_t *bm, uint64_t i)
{
	return (bm[i / 64] >> (i % 64)) & 1;
}

static inline void set_bit64(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

/* Digest over a region array: shared by source and destination. */
struct mig_digest_job {
	const struct backend_region *regions;
	int nr_regions;
	uint32_t chunk_pages;
	uint64_t nr_chunks;
	uint64_t *chunk_hash;		/* nr_chunks entries, filled */
	const uint64_t *chunk_first;	/* per region: index of its first chunk (nr_regions + 1) */
	/* Incremental digest (source): bit i set = chunk_hash[i] may be out of
	 * date. NULL = hash every chunk. See mig_digest_track(). */
	uint64_t *stale;
};
/*
 * mig_digest_track() - make later mig_digest_part() calls hash only chunks
 * marked stale (all are, at first). Chunks are hashed while the guest runs;
 * a page written after its chunk was hashed is dirty, so it is harvested
 * later and mig_digest_mark() makes the chunk stale again: after the final
 * (paused) harvest, re-hashing the stale chunks gives the digest of memory
 * as it is, without hashing all of it inside the downtime. 0 or -ENOMEM.
 */
int mig_digest_track(struct mig_digest_job *job);
/* Mark the chunk of page @page of region @region stale (any thread). */
static inline void mig_digest_mark(struct mig_digest_job *job, int region, uint64_t page)
{
	uint64_t i = job->chunk_first[region] + page / job->chunk_pages;

	__atomic_fetch_or(&job->stale[i / 64], 1ull << (i % 64), __ATOMIC_RELAXED);
}
/* Number of chunks the layout has for @chunk_pages. */
uint64_t mig_digest_nr_chunks(const struct backend_region *r, int n, uint32_t chunk_pages);
/* Hash chunks i with i % nth == th. 0 or -errno. */
int mig_digest_part(const struct mig_digest_job *job, int th, int nth);
/* Prepare @job (allocates chunk_first and chunk_hash). 0 or -ENOMEM. */
int mig_digest_prepare(struct mig_digest_job *job, const struct backend_region *r, int n,
		       uint32_t chunk_pages);
void mig_digest_free(struct mig_digest_job *job);
/* Compute the whole digest with @threads threads (chunk hashes in @job, total in lo/hi). */
int mig_digest_run(struct mig_digest_job *job, int threads, uint64_t *lo, uint64_t *hi);
/* Locate chunk @i: region index and page offset. */
void mig_digest_chunk_pos(const struct mig_digest_job *job, uint64_t i, int *region,
			  uint64_t *page);

#endif /* RMAPVM_MIGRATE_INTERNAL_H */
