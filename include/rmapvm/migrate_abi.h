/* migrate_abi.h: the rmapvm migration stream format (version 1.0), a self-contained C99 ABI header. */
#ifndef RMAPVM_MIGRATE_ABI_H
#define RMAPVM_MIGRATE_ABI_H

/*
 * Everything a reader of an rmapvm migration stream needs; docs/MIGRATION-STREAM.md
 * is the prose version. All integers are little-endian, all structs are
 * naturally aligned with explicit padding (no compiler packing needed).
 *
 * Compatibility rules: MIG_ABI_MAJOR changes whenever a reader of the old
 * version would misread the new stream (bump it on any layout change of an
 * existing record). MIG_ABI_MINOR changes when a record type or a flag is
 * added that old readers may not know. A reader accepts a stream when the
 * major versions are equal and the stream's minor is <= its own.
 *
 * A stream is one or more channels (connections, or one file). Each channel
 * is:  preamble, then records. A record is a 24-byte header and a payload.
 *   S->D  = written by the source, read by the destination
 *   D->S  = the destination's reply on channel 0 (not on file: streams)
 */
#include <stdint.h>

#define MIG_ABI_MAJOR 1
#define MIG_ABI_MINOR 0

/* Preamble: first 16 bytes of every channel. S->D */
#define MIG_MAGIC "RMAPVMIG"	/* 8 bytes, no NUL */
struct mig_preamble {
	char magic[8];		/* MIG_MAGIC */
	uint16_t major;		/* MIG_ABI_MAJOR of the writer */
	uint16_t minor;		/* MIG_ABI_MINOR of the writer */
	uint32_t page_size;	/* bytes per guest page; 4096 in version 1 */
};

/* Record types. */
enum mig_rec_type {
	MIG_REC_HELLO = 1,	/* S->D  first record of every channel: session and layout */
	MIG_REC_PAGES = 2,	/* S->D  a batch of page contents (raw or zstd) */
	MIG_REC_ZERO = 3,	/* S->D  a run of pages whose contents are all zero */
	MIG_REC_ROUND = 4,	/* S->D  this channel finished pre-copy round N */
	MIG_REC_VCPU = 5,	/* S->D  one vCPU's saved state (channel 0 only) */
	MIG_REC_DIGEST = 6,	/* S->D  digest of all guest memory at switch-over (channel 0) */
	MIG_REC_END = 7,	/* S->D  last record of a channel */
	MIG_REC_ABORT = 8,	/* S->D  the source gave up; discard everything */
	MIG_REC_ACK = 9,	/* D->S  the destination's verdict (channel 0) */
	MIG_REC_TYPE_MAX = MIG_REC_ACK,
};

/* Record flags (mig_rec_hdr.flags). */
#define MIG_REC_F_ZSTD 0x0001u	/* PAGES: data is one zstd frame */
#define MIG_REC_F_KNOWN MIG_REC_F_ZSTD

/*
 * Record header. csum = XXH3_64bits_withSeed(payload, len, seed) where
 * seed = XXH3_64bits(first 16 bytes of this header), so the type, flags,
 * length and sequence number are covered too. seq counts the records of the
 * channel from 0 (the HELLO); a dropped, duplicated or reordered record
 * breaks the sequence.
 */
struct mig_rec_hdr {
	uint16_t type;		/* enum mig_rec_type */
	uint16_t flags;		/* MIG_REC_F_* valid for the type, others 0 */
	uint32_t len;		/* payload bytes, <= MIG_MAX_PAYLOAD */
	uint64_t seq;		/* record number within the channel */
	uint64_t csum;		/* see above */
};

#define MIG_MAX_PAYLOAD (8u << 20)	/* bigger records are rejected */
#define MIG_MAX_REGIONS 4096u		/* memory regions (memslots) per VM */
#define MIG_MAX_VCPUS 1024u
#define MIG_MAX_CHANNELS 64u
#define MIG_MAX_DESC 4096u		/* machine description bytes */
#define MIG_MAX_VCPU_STATE (1u << 20)	/* bytes of one vCPU's state */
#define MIG_BATCH_SPAN 512u		/* pages a PAGES record can cover */

/* One guest RAM region (memslot). */
struct mig_region {
	uint32_t slot;		/* backend slot id: (as_id << 16) | id */
	uint32_t reserved;	/* 0 */
	uint64_t gpa;		/* guest physical start, page aligned */
	uint64_t size;		/* bytes, a non-zero multiple of page_size */
};

/*
 * HELLO payload: struct mig_hello, then nr_regions struct mig_region sorted
 * by gpa and not overlapping, then desc_len bytes of machine description
 * (backend specific: what the destination needs to build the same VM).
 * Every channel of a session repeats the same HELLO except for `channel`.
 */
struct mig_hello {
	uint64_t session;	/* random id shared by the channels of one migration */
	uint32_t channel;	/* this channel's index, < nr_channels */
	uint32_t nr_channels;	/* 1..MIG_MAX_CHANNELS */
	uint32_t nr_regions;	/* 1..MIG_MAX_REGIONS */
	uint32_t nr_vcpus;	/* 1..MIG_MAX_VCPUS; that many VCPU records follow on channel 0 */
	char backend[16];	/* backend kind, NUL-padded ("soft", "kvm", ...) */
	uint32_t desc_len;	/* 0..MIG_MAX_DESC */
	uint32_t features;	/* MIG_FEAT_*: what the stream may use */
	uint64_t total_bytes;	/* sum of region sizes */
};
#define MIG_FEAT_ZSTD 0x1u	/* PAGES records may be zstd-compressed */
#define MIG_FEAT_KNOWN MIG_FEAT_ZSTD

/*
 * PAGES payload: struct mig_pages, then bitmap (span rounded up to 64 bits,
 * little-endian u64 words; bit i = page first_page + i is present), then
 * data: nr_pages pages in bitmap order, raw (data_len = nr_pages *
 * page_size) or, with MIG_REC_F_ZSTD, one zstd frame that decompresses to
 * exactly that many bytes. Bits at or beyond span are 0.
 */
struct mig_pages {
	uint32_t slot;		/* a slot of the HELLO's layout */
	uint32_t nr_pages;	/* set bits in the bitmap, >= 1 */
	uint64_t first_page;	/* page index within the slot */
	uint32_t span;		/* pages covered by the bitmap, 1..MIG_BATCH_SPAN */
	uint32_t data_len;	/* bytes of data after the bitmap */
};

/* ZERO payload: pages [first_page, first_page + npages) of slot are all zero. */
struct mig_zero {
	uint32_t slot;
	uint32_t reserved;	/* 0 */
	uint64_t first_page;
	uint64_t npages;	/* >= 1, within the slot */
};

/* ROUND payload: the channel finished pre-copy round `round` (0, 1, ...). */
struct mig_round {
	uint32_t round;		/* strictly increasing per channel */
	uint32_t reserved;	/* 0 */
	uint64_t pages;		/* pages (data + zero) this channel sent in the round */
};

/* VCPU payload: struct mig_vcpu, then len bytes of backend-defined state. */
struct mig_vcpu {
	uint32_t vcpu;		/* < nr_vcpus, each exactly once */
	uint32_t len;		/* 1..MIG_MAX_VCPU_STATE */
};

/*
 * DIGEST payload: struct mig_digest, then nr_chunks u64 chunk hashes. Guest
 * memory is cut into chunks of chunk_pages pages, region by region in HELLO
 * order (a region's last chunk may be shorter); chunk hash =
 * XXH3_64bits(chunk bytes), total = XXH3_128bits(the chunk hash array).
 */
struct mig_digest {
	uint32_t chunk_pages;	/* 1..65536, a power of two */
	uint32_t reserved;	/* 0 */
	uint64_t nr_chunks;	/* must match the layout */
	uint64_t total_lo;	/* XXH128 low64 */
	uint64_t total_hi;	/* XXH128 high64 */
};

/* END payload: the last record of a channel; counts let the reader check it saw everything. */
struct mig_end {
	uint32_t channel;
	uint32_t reserved;	/* 0 */
	uint64_t records;	/* records before this one on the channel (== this seq) */
	uint64_t pages;		/* data pages + zero pages sent on the channel */
};

/* ABORT payload: struct mig_status with the source's reason. */
/* ACK payload: struct mig_status; status 0 = received, verified, will resume. */
struct mig_status {
	int32_t status;		/* 0 or -errno */
	uint32_t msg_len;	/* bytes of message that follow, <= 1024, no NUL */
};

#endif /* RMAPVM_MIGRATE_ABI_H */
