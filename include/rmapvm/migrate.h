/* migrate.h: live migration over the backend interface: source (range-wise pre-copy) and destination. */
#ifndef RMAPVM_MIGRATE_H
#define RMAPVM_MIGRATE_H

/*
 * The source walks guest memory in ranges: right before a range's pages
 * are read and sent, its dirty state is harvested (get + clear + re-protect,
 * backend_ops.harvest_range), so dirty information is fresh and no harvest
 * holds mmu_lock for the whole guest. Ranges are owned by worker threads
 * (a range is always sent by the same thread on the same channel, so the
 * per-page order of the stream is the order of the channel).
 *
 * The library never prints and never exits; errors are -errno plus a
 * one-line message (mig_source_info().error, or the @err buffers).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rmapvm/backend.h"
#include "rmapvm/migrate_abi.h"

/* ---- URIs and transports ---- */

enum mig_uri_kind { MIG_URI_TCP, MIG_URI_UNIX, MIG_URI_FILE };

/* mig_uri - a parsed "tcp:HOST:PORT", "unix:PATH" or "file:PATH". */
struct mig_uri {
	enum mig_uri_kind kind;
	char host[256];		/* tcp: host name or address ("[v6]" brackets removed) */
	char port[16];		/* tcp: port, decimal */
	char path[256];		/* unix / file: path */
};

/* mig_uri_parse() - 0 or -EINVAL (message in @err). */
int mig_uri_parse(const char *uri, struct mig_uri *u, char *err, size_t errlen);

struct mig_listener;
/*
 * mig_listen() - bind and listen (tcp, unix) or just remember the path
 * (file). A unix socket path that exists as a socket is replaced. For
 * tcp port 0 the kernel picks one: mig_listener_uri() tells which.
 */
int mig_listen(const char *uri, struct mig_listener **out, char *err, size_t errlen);
/* The listener's effective URI (with the bound port). */
const char *mig_listener_uri(const struct mig_listener *l);
void mig_listener_close(struct mig_listener *l);

/* ---- source ---- */

enum mig_timeout_action {
	MIG_TIMEOUT_CANCEL,	/* give up, the VM keeps running on the source (default) */
	MIG_TIMEOUT_FORCE,	/* switch over now, whatever the downtime */
};

/* mig_params - one migration attempt. Zero fields take the documented defaults. */
struct mig_params {
	const char *uri;		/* where to (tcp:, unix:, file:) */
	int threads;			/* harvester/sender threads (default 1, max 64) */
	int channels;			/* connections (default = threads; file: always 1) */
	uint64_t range_bytes;		/* range size (default MIG_DEFAULT_RANGE), a multiple of 256 KiB */
	uint32_t downtime_ms;		/* switch-over downtime limit (default 300) */
	double timeout_s;		/* give up / force after this long (0 = never) */
	enum mig_timeout_action timeout_action;
	uint64_t bandwidth;		/* cap in bytes/s (0 = none) */
	bool no_auto_converge;		/* do not throttle vCPUs when the dirty rate outruns the link */
	bool compress;			/* zstd-compress page batches */
	struct dirty_config dirty;	/* dirty tracking mode for the backend */
	const char *kind;		/* backend kind written into HELLO ("soft", "kvm") */
	const void *desc;		/* machine description for the destination */
	size_t desc_len;		/* <= MIG_MAX_DESC */
	uint32_t max_rounds;		/* safety cap on pre-copy rounds (default 1000) */
	uint32_t ack_timeout_ms;	/* wait this long for the destination's verdict (default 60 s) */
	uint32_t chunk_pages;		/* digest chunk (default 256 pages = 1 MiB) */
};

#define MIG_DEFAULT_RANGE (64ull << 20)
#define MIG_DEFAULT_DOWNTIME_MS 300u

enum mig_state {
	MIG_STATE_NONE,
	MIG_STATE_SETUP,
	MIG_STATE_ACTIVE,	/* pre-copy rounds */
	MIG_STATE_STOP_COPY,	/* vCPUs paused, last pages, state, digest */
	MIG_STATE_COMPLETED,	/* the destination verified and resumes the VM */
	MIG_STATE_FAILED,	/* the VM runs on the source */
	MIG_STATE_CANCELLED,	/* likewise, by request or timeout */
};
const char *mig_state_name(enum mig_state s);

/* mig_round_info - one pre-copy round (QEMU: one dirty sync). */
struct mig_round_info {
	uint32_t round;			/* 0 = full pass */
	uint64_t est_dirty_pages;	/* estimated dirty pages at the round's start (no global sync) */
	uint64_t dirty_pages;		/* dirty pages found when the round harvested its ranges */
	uint64_t pages;			/* data pages sent */
	uint64_t zero_pages;		/* zero pages sent as runs */
	uint64_t bytes;			/* bytes written to the channels */
	uint64_t duration_ns;
	double bandwidth;		/* bytes/s during the round */
	double dirty_rate;		/* estimated pages/s dirtied at the round's end */
	uint64_t harvest_ns;		/* time in harvest_range, all threads */
	uint64_t harvest_calls;		/* harvest_range calls */
	uint64_t max_harvest_ns;	/* longest single harvest (bounds an mmu_lock hold) */
	uint64_t est_remaining_pages;	/* estimate after the round: what the next round will find */
	uint64_t expected_downtime_ms;	/* est_remaining at the measured bandwidth */
	int throttle_pct;		/* auto-converge throttle after the round */
};

/* mig_info - like QEMU's query-migrate; safe to read while a migration runs. */
struct mig_info {
	enum mig_state state;
	uint64_t total_ms;		/* since the attempt started (final once ended) */
	uint64_t setup_ms;		/* connect + HELLO + dirty_start */
	uint64_t downtime_ms;		/* pause -> destination's verdict */
	uint64_t expected_downtime_ms;
	uint64_t transferred;		/* bytes written to the channels */
	uint64_t remaining;		/* estimated dirty bytes not yet sent */
	uint64_t total;			/* guest RAM bytes */
	uint64_t zero_pages;		/* QEMU: duplicate */
	uint64_t normal_pages;		/* data pages sent */
	uint64_t normal_bytes;
	double dirty_pages_rate;	/* pages/s */
	double mbps;			/* megabits/s over the attempt */
	uint64_t dirty_sync_count;	/* rounds finished */
	int throttle_pct;
	uint64_t harvest_ns;		/* total harvest time */
	uint64_t max_harvest_ns;
	/* downtime breakdown */
	uint64_t final_pages;		/* pages sent while paused */
	uint64_t final_ms;		/* last harvest + pages + digest */
	uint64_t vcpu_ms;		/* vCPU state save + send */
	uint64_t ack_ms;		/* waiting for the destination's verdict */
	uint64_t teardown_ms;		/* dirty_stop, outside the downtime */
	int error;			/* -errno of a failure, 0 */
	char error_msg[256];		/* one line */
};

/* Called by the migrating thread after each round. */
typedef void (*mig_round_fn)(void *opaque, const struct mig_round_info *ri);

struct mig_source;

/*
 * mig_source_create() - a migration session over @be (not owned). A
 * session outlives failed attempts: it keeps the dirty bits fetched and not
 * delivered (the "carry") and feeds them to the next attempt.
 */
int mig_source_create(struct backend *be, struct mig_source **out);
void mig_source_destroy(struct mig_source *ms);

/*
 * mig_source_migrate() - one attempt, blocking until it ends. The VM must
 * be running (vCPUs resumed) and dirty tracking off.
 * Returns 0: the destination verified memory and vCPU state; the source
 *   VM is left paused (it now lives at the destination).
 * Returns -errno: failure, cancel (-ECANCELED) or timeout (-ETIMEDOUT); the
 *   source VM runs, throttle off, dirty tracking stopped, and every dirty
 *   bit fetched during the attempt is merged into the carry.
 * @cb (may be NULL) is called after each round.
 */
int mig_source_migrate(struct mig_source *ms, const struct mig_params *p, mig_round_fn cb,
		       void *opaque);
/* Ask a running attempt to stop (from any thread); it fails with -ECANCELED. */
void mig_source_cancel(struct mig_source *ms);
/* Snapshot of the current (or last) attempt. */
void mig_source_info(struct mig_source *ms, struct mig_info *info);

/* Parameters that can change while an attempt runs (control socket `set`). */
enum mig_param {
	MIG_PARAM_DOWNTIME_MS,
	MIG_PARAM_BANDWIDTH,		/* bytes/s, 0 = none */
	MIG_PARAM_TIMEOUT_MS,		/* 0 = never */
	MIG_PARAM_AUTO_CONVERGE,	/* 0 / 1 */
};
int mig_source_set(struct mig_source *ms, enum mig_param p, uint64_t value);

/*
 * mig_source_carry() - the session's carried dirty bits: copy slot @slot's
 * bitmap (one bit per page) into @bitmap of @words words. Returns the number
 * of set bits or -ENOENT. For tests and diagnostics.
 */
int64_t mig_source_carry(struct mig_source *ms, uint32_t slot, uint64_t *bitmap, size_t words);

/* ---- destination ---- */

/*
 * mig_dest_ops - how the destination builds the VM it receives into.
 * create() gets the source's backend kind, machine description and vCPU
 * count and returns an empty, paused backend whose regions must equal the
 * stream's layout. 0 or -errno with a one-line reason in @err.
 */
struct mig_dest_ops {
	int (*create)(void *opaque, const char *kind, const void *desc, size_t desc_len,
		      uint32_t nr_vcpus, struct backend **out, char *err, size_t errlen);
	void *opaque;
};

struct mig_dest_params {
	uint32_t accept_timeout_ms;	/* wait for the source this long (0 = forever) */
	uint32_t io_timeout_ms;		/* a silent channel fails after this long (default 60 s) */
	int digest_threads;		/* threads hashing memory (default 2) */
};

/* mig_dest_info - what the destination received. */
struct mig_dest_info {
	char kind[16];			/* backend kind of the stream */
	uint32_t channels;
	uint32_t rounds;		/* highest ROUND + 1 seen */
	uint64_t records;
	uint64_t pages;			/* data pages written */
	uint64_t zero_pages;
	uint64_t bytes;			/* bytes read */
	uint64_t total_ms;		/* first byte -> verdict */
	uint64_t verify_ms;		/* digest computation and check */
	uint64_t load_ms;		/* vCPU state load */
	uint64_t tail_ms;		/* last END received -> verdict sent */
	uint64_t total_lo, total_hi;	/* the verified digest */
};

/*
 * mig_incoming() - accept one migration on @l, receive it into a backend
 * built by @ops, validate every field, check coverage and the digest,
 * load vCPU state and tell the source. Returns 0 with *@out = the paused,
 * loaded VM (the caller resumes it and owns it), or -errno with a one-line
 * reason in @err; then nothing was resumed and the backend is destroyed.
 */
int mig_incoming(struct mig_listener *l, const struct mig_dest_params *p,
		 const struct mig_dest_ops *ops, struct backend **out, struct mig_dest_info *info,
		 char *err, size_t errlen);

/*
 * mig_memory_digest() - XXH3_128 of @be's memory as DIGEST defines it
 * (chunks of @chunk_pages pages). Pages the host never populated are hashed
 * as zeros without reading them. @threads workers. 0 or -errno.
 */
int mig_memory_digest(struct backend *be, uint32_t chunk_pages, int threads, uint64_t *lo,
		      uint64_t *hi);

/* ---- stats formatting (for the CLI) ---- */

/* One JSON object (no newline) for @info / @ri into @buf. Returns @buf. */
char *mig_info_json(const struct mig_info *info, char *buf, size_t len);
char *mig_round_json(const struct mig_round_info *ri, char *buf, size_t len);

#endif /* RMAPVM_MIGRATE_H */
