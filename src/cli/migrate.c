/* migrate.c: CLI side of live migration: VMs of either backend, machine descriptions, progress, control socket, `run --migrate-to`. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_migrate.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/migrate.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

#define DEFAULT_RING_ENTRIES 4096

/* ---- VMs of either backend ---- */

static void print_guest(void *opaque, int vcpu, const char *text, size_t len)
{
	const bool *quiet = opaque;

	if (!quiet || !*quiet)
		fprintf(stderr, "guest[%d]: %.*s\n", vcpu, (int)len, text);
}

static bool quiet_guest = false;

int cli_vm_create_soft(struct cli_vm *v, const struct soft_vm_config *cfg, char *err, size_t errlen)
{
	int r;

	memset(v, 0, sizeof(*v));
	v->kind = "soft";
	r = soft_vm_create(cfg, &v->svm);
	if (r) {
		snprintf(err, errlen, "cannot create the soft VM: %s", strerror(-r));
		return r;
	}
	r = soft_backend_create(v->svm, &v->be);
	if (r) {
		soft_vm_destroy(v->svm);
		v->svm = NULL;
		snprintf(err, errlen, "soft backend: %s", strerror(-r));
	}
	return r;
}

int cli_vm_create_kvm(struct cli_vm *v, const struct kvm_vm_config *cfg, char *err, size_t errlen)
{
	struct kvm_vm_config c = *cfg;
	int r;

	memset(v, 0, sizeof(*v));
	v->kind = "kvm";
	c.print = print_guest;
	c.print_opaque = &quiet_guest;
	r = kvm_vm_create(&c, &v->kvm, err, errlen);
	if (r)
		return r;
	v->be = &v->kbe;
	kvm_backend_init(v->be, v->kvm);
	return 0;
}

void cli_vm_destroy(struct cli_vm *v)
{
	if (v->svm) {
		if (v->be)
			v->be->ops->destroy(v->be);
		soft_vm_destroy(v->svm);
	} else if (v->kvm) {
		v->be->ops->destroy(v->be); /* destroys the KVM VM */
	}
	memset(v, 0, sizeof(*v));
}

int cli_vm_start(struct cli_vm *v)
{
	return v->svm ? soft_vm_start(v->svm) : kvm_vm_start(v->kvm);
}

bool cli_vm_done(struct cli_vm *v)
{
	if (v->svm)
		return soft_vm_done(v->svm);
	return kvm_vm_wait(v->kvm, 0) != -ETIMEDOUT;
}

uint64_t cli_vm_writes(struct cli_vm *v)
{
	uint64_t n = 0;
	int i, nv = v->be->ops->nr_vcpus(v->be);

	for (i = 0; i < nv; i++) {
		if (v->svm) {
			struct soft_vcpu_stats st;

			soft_vm_vcpu_stats(v->svm, i, &st);
			n += st.writes;
		} else {
			struct kvm_vcpu_stats st;

			kvm_vm_vcpu_stats(v->kvm, i, &st);
			n += st.guest_writes;
		}
	}
	return n;
}

int cli_vm_finish(struct cli_vm *v, char *err, size_t errlen)
{
	int i, r;

	if (v->svm) {
		soft_vm_stop(v->svm);
		for (i = 0; i < soft_vm_config(v->svm)->vcpus; i++) {
			struct soft_vcpu_stats st;

			soft_vm_vcpu_stats(v->svm, i, &st);
			if (st.error) {
				snprintf(err, errlen, "vCPU %d: access failed: %s", i, strerror(-st.error));
				return -EIO;
			}
			if (st.bad_reads) {
				snprintf(err, errlen, "vCPU %d read %llu impossible stamps", i,
					 (unsigned long long)st.bad_reads);
				return -EIO;
			}
		}
		return soft_vm_verify(v->svm, err, errlen);
	}
	kvm_vm_request_stop(v->kvm);
	do {
		r = kvm_vm_wait(v->kvm, 0.05);
		if (r == -ETIMEDOUT && v->ring)
			kvm_vm_harvest_rings(v->kvm, NULL, NULL);
	} while (r == -ETIMEDOUT);
	if (r)
		snprintf(err, errlen, "guest verification: %s", kvm_vm_error(v->kvm));
	return r;
}

/* ---- machine descriptions: key=value text ---- */

void cli_vm_desc(const struct cli_vm *v, char *buf, size_t len)
{
	char wl[200];

	if (v->svm) {
		const struct soft_vm_config *c = soft_vm_config(v->svm);

		workload_format(&c->workload, wl, sizeof(wl));
		snprintf(buf, len, "mem=%llu vcpus=%d slots=%d backing=%s lock=%d max=%llu workload=%s",
			 (unsigned long long)c->mem_bytes, c->vcpus, c->slots, backing_name(c->backing),
			 (int)c->lock_mode, (unsigned long long)c->max_accesses, wl);
	} else {
		const struct kvm_vm_config *c = kvm_vm_config(v->kvm);

		workload_format(&c->workload, wl, sizeof(wl));
		snprintf(buf, len,
			 "mem=%llu vcpus=%d slots=%d backing=%s flags=%u batch=%llu max=%llu ring=%u workload=%s",
			 (unsigned long long)c->mem_bytes, c->nr_vcpus, c->nr_slots,
			 backing_name(c->backing), c->guest_flags, (unsigned long long)c->batch,
			 (unsigned long long)c->max_rounds, c->ring_entries, wl);
	}
}

int cli_vm_from_desc(struct cli_vm *v, const char *kind, const char *desc, uint32_t nr_vcpus,
		     char *err, size_t errlen)
{
	uint64_t mem, vcpus, slots, x;
	char b[64], wl[256], werr[160];
	struct workload_spec spec;
	enum backing_type backing;

	if (kv_u64(desc, "mem", &mem) || kv_u64(desc, "vcpus", &vcpus) ||
	    kv_u64(desc, "slots", &slots) || kv_get(desc, "backing", b, sizeof(b)) ||
	    backing_parse(b, &backing) || kv_get(desc, "workload", wl, sizeof(wl)) ||
	    vcpus != nr_vcpus || vcpus > 256 || slots > 32764) {
		snprintf(err, errlen, "bad machine description '%s'", desc);
		return -EINVAL;
	}
	if (workload_parse(wl, &spec, werr, sizeof(werr))) {
		snprintf(err, errlen, "machine description: workload: %s", werr);
		return -EINVAL;
	}
	if (!strcmp(kind, "soft")) {
		struct soft_vm_config c = { .mem_bytes = mem, .vcpus = (int)vcpus, .slots = (int)slots,
					    .backing = backing, .workload = spec };

		if (kv_u64(desc, "lock", &x) || x > 1 || kv_u64(desc, "max", &c.max_accesses)) {
			snprintf(err, errlen, "bad soft machine description '%s'", desc);
			return -EINVAL;
		}
		c.lock_mode = (enum mmu_lock_mode)x;
		return cli_vm_create_soft(v, &c, err, errlen);
	}
	if (!strcmp(kind, "kvm")) {
		struct kvm_vm_config c = { .mem_bytes = mem, .nr_vcpus = (int)vcpus,
					   .nr_slots = (int)slots, .backing = backing, .workload = spec };
		uint64_t ring;
		int r;

		if (kv_u64(desc, "flags", &x) || kv_u64(desc, "batch", &c.batch) ||
		    kv_u64(desc, "max", &c.max_rounds) || kv_u64(desc, "ring", &ring) ||
		    x > UINT32_MAX || ring > UINT32_MAX) {
			snprintf(err, errlen, "bad kvm machine description '%s'", desc);
			return -EINVAL;
		}
		c.guest_flags = (uint32_t)x;
		c.ring_entries = (uint32_t)ring;
		r = cli_vm_create_kvm(v, &c, err, errlen);
		if (!r)
			v->ring = ring != 0;
		return r;
	}
	snprintf(err, errlen, "unknown backend kind '%s'", kind);
	return -EPROTONOSUPPORT;
}

/* ---- progress ---- */

struct progress {
	struct mig_source *ms;
	bool json;
	bool tty;
	bool stop;		/* under lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
};

static void progress_line(struct progress *p)
{
	struct mig_info i;
	char a[32], b[32];
	double pct;
	int fill, k;
	char bar[31];

	mig_source_info(p->ms, &i);
	if (i.state != MIG_STATE_ACTIVE && i.state != MIG_STATE_STOP_COPY && i.state != MIG_STATE_SETUP)
		return;
	pct = i.total ? 100.0 * (double)(i.total - MIN(i.remaining, i.total)) / (double)i.total : 0;
	if (i.dirty_sync_count == 0)
		pct = MIN(pct, 99.0);
	fill = (int)(pct * 30 / 100);
	for (k = 0; k < 30; k++)
		bar[k] = k < fill ? '#' : '.';
	bar[30] = 0;
	fprintf(stderr, "\rmigrate: [%s] %5.1f%% round %llu, %.0f Mbit/s, remaining %s, sent %s, expected downtime %llu ms%s \x1b[K",
		bar, pct, (unsigned long long)i.dirty_sync_count, i.mbps, fmt_bytes(i.remaining, a, sizeof(a)),
		fmt_bytes(i.transferred, b, sizeof(b)), (unsigned long long)i.expected_downtime_ms,
		i.throttle_pct ? ", throttled" : "");
	fflush(stderr);
}

static void *progress_fn(void *arg)
{
	struct progress *p = arg;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&p->cond, &p->lock, &ts);
		if (!p->stop)
			progress_line(p);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void round_cb(void *opaque, const struct mig_round_info *ri)
{
	struct progress *p = opaque;
	char buf[1024];

	if (p->json) {
		printf("{\"event\":\"round\",\"data\":%s}\n", mig_round_json(ri, buf, sizeof(buf)));
		fflush(stdout);
	}
}

void cli_print_mig_info(const struct mig_info *i, bool json)
{
	char buf[2048], a[32], b[32];

	if (json) {
		printf("{\"event\":\"migration\",\"data\":%s}\n", mig_info_json(i, buf, sizeof(buf)));
		fflush(stdout);
		return;
	}
	printf("migration %s: total %llu ms, downtime %llu ms (final pages %llu ms, vCPU state %llu ms, "
	       "destination verify+ack %llu ms), setup %llu ms\n",
	       mig_state_name(i->state), (unsigned long long)i->total_ms,
	       (unsigned long long)i->downtime_ms, (unsigned long long)i->final_ms,
	       (unsigned long long)i->vcpu_ms, (unsigned long long)i->ack_ms,
	       (unsigned long long)i->setup_ms);
	printf("  transferred %s of %s RAM at %.0f Mbit/s; %llu pages sent, %llu zero pages; "
	       "%llu rounds (dirty syncs); %llu pages in the stop-and-copy\n",
	       fmt_bytes(i->transferred, a, sizeof(a)), fmt_bytes(i->total, b, sizeof(b)), i->mbps,
	       (unsigned long long)i->normal_pages, (unsigned long long)i->zero_pages,
	       (unsigned long long)i->dirty_sync_count, (unsigned long long)i->final_pages);
	printf("  harvest: %.2f ms in total, longest single range harvest %.1f us; "
	       "dirty rate %.0f pages/s; throttle %d%%; dirty-log teardown %llu ms (after the downtime)\n",
	       (double)i->harvest_ns / 1e6, (double)i->max_harvest_ns / 1e3, i->dirty_pages_rate,
	       i->throttle_pct, (unsigned long long)i->teardown_ms);
	if (i->error)
		printf("  error: %s\n", i->error_msg);
	fflush(stdout);
}

int cli_migrate_vm(struct cli_vm *v, struct mig_source *ms, const struct run_options *opt,
		   const char *uri)
{
	struct mig_params p = { 0 };
	struct progress pr = { .ms = ms, .json = opt->json, .tty = isatty(2) };
	struct dirty_config dc = { .mode = DIRTY_MODE_BITMAP };
	struct mig_info info;
	char desc[MIG_MAX_DESC], rs[32];
	int r;

	if (opt->dirty_mode && dirty_mode_parse(opt->dirty_mode, &dc.mode))
		die("--dirty-mode: '%s' is not bitmap, manual, ring or dbit", opt->dirty_mode);
	if (dc.mode == DIRTY_MODE_MANUAL)
		dc.initially_set = true;
	if (dc.mode == DIRTY_MODE_RING)
		dc.ring_entries = DEFAULT_RING_ENTRIES;
	if (v->svm && opt->harvest) {
		enum dirty_log_algo algo;
		struct dirty_log_config cur;

		if (dirty_log_algo_parse(opt->harvest, &algo))
			die("--harvest: '%s' is not rmap, walk or tdp", opt->harvest);
		vm_get_dirty_log_config(soft_vm_vm(v->svm), &cur);
		if (dirty_log_set_harvest(soft_vm_vm(v->svm), algo, cur.lock))
			die("--harvest %s: refused", opt->harvest);
	}
	cli_vm_desc(v, desc, sizeof(desc));
	p.uri = uri;
	p.threads = opt->threads;
	p.range_bytes = opt->range_bytes;
	p.downtime_ms = opt->downtime_ms;
	p.timeout_s = opt->timeout_s;
	p.timeout_action = opt->timeout_force ? MIG_TIMEOUT_FORCE : MIG_TIMEOUT_CANCEL;
	p.bandwidth = opt->bandwidth;
	p.compress = opt->compress;
	p.dirty = dc;
	p.kind = v->kind;
	p.desc = desc;
	p.desc_len = strlen(desc);
	pthread_mutex_init(&pr.lock, NULL);
	pthread_cond_init(&pr.cond, NULL);
	if (pr.tty && !opt->json)
		pthread_create(&pr.thread, NULL, progress_fn, &pr);
	if (!opt->json)
		fprintf(stderr, "rmapvm: migrating the %s VM to %s (%d thread(s), %s ranges, dirty mode %s)\n",
			v->kind, uri, opt->threads ? opt->threads : 1,
			fmt_bytes(opt->range_bytes ? opt->range_bytes : MIG_DEFAULT_RANGE, rs, sizeof(rs)),
			opt->dirty_mode ? opt->dirty_mode : "bitmap");
	r = mig_source_migrate(ms, &p, round_cb, &pr);
	if (pr.tty && !opt->json) {
		pthread_mutex_lock(&pr.lock);
		pr.stop = true;
		pthread_cond_broadcast(&pr.cond);
		pthread_mutex_unlock(&pr.lock);
		pthread_join(pr.thread, NULL);
		fprintf(stderr, "\r\x1b[K");
	}
	pthread_mutex_destroy(&pr.lock);
	pthread_cond_destroy(&pr.cond);
	mig_source_info(ms, &info);
	cli_print_mig_info(&info, opt->json);
	if (r && !opt->json)
		fprintf(stderr, "rmapvm: migration failed, the VM keeps running here: %s\n",
			info.error_msg);
	return r;
}

/* ---- control socket: JSON lines ---- */

struct control {
	int fd;				/* listening socket */
	char path[108];
	pthread_t thread;
	bool stop;			/* relaxed atomic */
	pthread_mutex_t lock;
	char pending[300];		/* a `migrate` request for the main loop ("" = none) */
	struct mig_source *ms;
	struct run_options *opt;	/* `set` changes these for the next attempt */
	bool migrating;			/* under lock */
};

/* Find "key": in a JSON line and return a pointer to its value (after spaces). */
static const char *json_val(const char *line, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	p = strstr(line, pat);
	if (!p)
		return NULL;
	p += strlen(pat);
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != ':')
		return NULL;
	p++;
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

static bool json_str(const char *line, const char *key, char *out, size_t len)
{
	const char *v = json_val(line, key), *e;

	if (!v || *v != '"')
		return false;
	e = strchr(v + 1, '"');
	if (!e || (size_t)(e - v - 1) >= len)
		return false;
	memcpy(out, v + 1, (size_t)(e - v - 1));
	out[e - v - 1] = 0;
	return true;
}

static void control_reply(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void control_reply(int fd, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) < 0)
		return;
}

static void control_handle(struct control *c, int fd, const char *line)
{
	char cmd[32], uri[300], buf[3000];

	if (!json_str(line, "execute", cmd, sizeof(cmd)) && !json_str(line, "cmd", cmd, sizeof(cmd))) {
		control_reply(fd, "{\"error\":\"expected {\\\"execute\\\":\\\"migrate|cancel|status|set\\\", ...}\"}");
		return;
	}
	if (!strcmp(cmd, "migrate")) {
		struct mig_uri u;
		char err[200];

		if (!json_str(line, "uri", uri, sizeof(uri))) {
			control_reply(fd, "{\"error\":\"migrate needs \\\"uri\\\"\"}");
			return;
		}
		if (mig_uri_parse(uri, &u, err, sizeof(err))) {
			control_reply(fd, "{\"error\":\"%s\"}", err);
			return;
		}
		pthread_mutex_lock(&c->lock);
		if (c->migrating || c->pending[0]) {
			pthread_mutex_unlock(&c->lock);
			control_reply(fd, "{\"error\":\"a migration is already in progress\"}");
			return;
		}
		snprintf(c->pending, sizeof(c->pending), "%s", uri);
		pthread_mutex_unlock(&c->lock);
		control_reply(fd, "{\"return\":{}}");
	} else if (!strcmp(cmd, "cancel")) {
		mig_source_cancel(c->ms);
		pthread_mutex_lock(&c->lock);
		c->pending[0] = 0;
		pthread_mutex_unlock(&c->lock);
		control_reply(fd, "{\"return\":{}}");
	} else if (!strcmp(cmd, "status")) {
		struct mig_info i;

		mig_source_info(c->ms, &i);
		control_reply(fd, "{\"return\":%s}", mig_info_json(&i, buf, sizeof(buf)));
	} else if (!strcmp(cmd, "set")) {
		const char *v;
		uint64_t x;
		int bad = 0;

		pthread_mutex_lock(&c->lock);
		if ((v = json_val(line, "downtime-ms"))) {
			bad |= sscanf(v, "%llu", (unsigned long long *)&x) != 1 ||
			       mig_source_set(c->ms, MIG_PARAM_DOWNTIME_MS, x);
			if (!bad)
				c->opt->downtime_ms = (uint32_t)x;
		}
		if ((v = json_val(line, "bandwidth"))) {
			bad |= sscanf(v, "%llu", (unsigned long long *)&x) != 1 ||
			       mig_source_set(c->ms, MIG_PARAM_BANDWIDTH, x);
			if (!bad)
				c->opt->bandwidth = x;
		}
		if ((v = json_val(line, "timeout"))) {
			double s;

			bad |= sscanf(v, "%lf", &s) != 1 || s < 0 ||
			       mig_source_set(c->ms, MIG_PARAM_TIMEOUT_MS, (uint64_t)(s * 1000));
			if (!bad)
				c->opt->timeout_s = s;
		}
		if ((v = json_val(line, "auto-converge"))) {
			bool on = !strncmp(v, "true", 4);

			bad |= (!on && strncmp(v, "false", 5)) ||
			       mig_source_set(c->ms, MIG_PARAM_AUTO_CONVERGE, on);
		}
		if ((v = json_val(line, "threads"))) {
			int t;

			bad |= sscanf(v, "%d", &t) != 1 || t < 1 || t > 64;
			if (!bad)
				c->opt->threads = t;
		}
		pthread_mutex_unlock(&c->lock);
		if (bad)
			control_reply(fd, "{\"error\":\"set: bad value (downtime-ms, bandwidth, timeout, auto-converge, threads)\"}");
		else
			control_reply(fd, "{\"return\":{}}");
	} else {
		control_reply(fd, "{\"error\":\"unknown command '%s' (migrate, cancel, status, set)\"}", cmd);
	}
}

static void *control_fn(void *arg)
{
	struct control *c = arg;

	while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		char line[2048];
		size_t n = 0;
		int cfd;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		cfd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0)
			continue;
		/* one client at a time, one JSON object per line */
		while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
			struct pollfd cp = { .fd = cfd, .events = POLLIN };
			ssize_t got;
			char *nl;

			if (poll(&cp, 1, 100) <= 0)
				continue;
			got = read(cfd, line + n, sizeof(line) - 1 - n);
			if (got <= 0)
				break;
			n += (size_t)got;
			line[n] = 0;
			while ((nl = strchr(line, '\n'))) {
				*nl = 0;
				if (nl > line)
					control_handle(c, cfd, line);
				n -= (size_t)(nl + 1 - line);
				memmove(line, nl + 1, n + 1);
			}
			if (n == sizeof(line) - 1) {
				control_reply(cfd, "{\"error\":\"line too long\"}");
				n = 0;
			}
		}
		close(cfd);
	}
	return NULL;
}

static struct control *control_start(const char *path, struct mig_source *ms,
				     struct run_options *opt)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct control *c = calloc(1, sizeof(*c));
	struct stat st;

	if (!c)
		die("out of memory");
	if (strlen(path) >= sizeof(sa.sun_path))
		die("--control: path too long");
	strcpy(sa.sun_path, path);
	snprintf(c->path, sizeof(c->path), "%s", path);
	if (!stat(path, &st) && S_ISSOCK(st.st_mode))
		unlink(path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || bind(c->fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(c->fd, 4))
		die("--control %s: %s", path, strerror(errno));
	c->ms = ms;
	c->opt = opt;
	pthread_mutex_init(&c->lock, NULL);
	if (pthread_create(&c->thread, NULL, control_fn, c))
		die("--control: cannot start its thread");
	return c;
}

static void control_stop(struct control *c)
{
	if (!c)
		return;
	__atomic_store_n(&c->stop, true, __ATOMIC_RELAXED);
	pthread_join(c->thread, NULL);
	close(c->fd);
	unlink(c->path);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* ---- `rmapvm run ... --migrate-to URI | --control PATH` ---- */

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

int cli_run_migrate(const struct run_options *opt_in)
{
	struct run_options opt = *opt_in;
	struct cli_vm v;
	struct mig_source *ms;
	struct control *ctl = NULL;
	char err[512];
	uint64_t t0, w0;
	bool migrated = false, tried = false, failed = false;
	int r;

	if (!strcmp(opt.backend, "kvm")) {
		struct kvm_vm_config cfg = {
			.mem_bytes = opt.mem_bytes,
			.nr_vcpus = opt.vcpus,
			.nr_slots = opt.slots,
			.backing = opt.backing,
			.workload = opt.workload,
			.guest_flags = GUEST_F_VERIFY_READS | GUEST_F_VERIFY_END | GUEST_F_SYNC_EXITS,
		};

		if (opt.vcpus > GUEST_MAX_VCPUS)
			die("--backend kvm: at most %d vCPUs", GUEST_MAX_VCPUS);
		if (opt.dirty_mode && !strcmp(opt.dirty_mode, "ring"))
			cfg.ring_entries = DEFAULT_RING_ENTRIES;
		if (opt.dirty_mode && !strcmp(opt.dirty_mode, "dbit"))
			die("--dirty-mode dbit: the KVM backend has bitmap, manual and ring");
		quiet_guest = opt.json;
		r = cli_vm_create_kvm(&v, &cfg, err, sizeof(err));
		if (r)
			die("--backend kvm: %s", err);
		v.ring = cfg.ring_entries != 0;
	} else {
		struct soft_vm_config cfg = {
			.mem_bytes = opt.mem_bytes,
			.vcpus = opt.vcpus,
			.slots = opt.slots,
			.backing = opt.backing,
			.workload = opt.workload,
			.lock_mode = opt.lock_shared ? MMU_LOCK_SHARED : MMU_LOCK_EXCLUSIVE,
		};

		r = cli_vm_create_soft(&v, &cfg, err, sizeof(err));
		if (r)
			die("%s", err);
	}
	r = mig_source_create(v.be, &ms);
	if (r)
		die_errno(r, "migration session");
	if (opt.control)
		ctl = control_start(opt.control, ms, &opt);
	r = cli_vm_start(&v);
	if (r)
		die_errno(r, "cannot start the vCPUs");
	t0 = now_ns();
	if (!opt.json)
		fprintf(stderr, "rmapvm: %s VM running (%s RAM, %d vCPUs)%s%s\n", v.kind,
			fmt_bytes(opt.mem_bytes, err, sizeof(err)), opt.vcpus,
			ctl ? ", control socket " : "", ctl ? opt.control : "");
	for (;;) {
		double el = (double)(now_ns() - t0) / 1e9;
		char uri[300] = "";

		if (opt.migrate_to && !tried && el >= opt.migrate_after_s)
			snprintf(uri, sizeof(uri), "%s", opt.migrate_to);
		if (ctl) {
			pthread_mutex_lock(&ctl->lock);
			if (!uri[0] && ctl->pending[0])
				snprintf(uri, sizeof(uri), "%s", ctl->pending);
			ctl->pending[0] = 0;
			ctl->migrating = uri[0] != 0;
			pthread_mutex_unlock(&ctl->lock);
		}
		if (uri[0]) {
			struct run_options snap;

			tried = true;
			if (ctl)
				pthread_mutex_lock(&ctl->lock);
			snap = opt;
			if (ctl)
				pthread_mutex_unlock(&ctl->lock);
			r = cli_migrate_vm(&v, ms, &snap, uri);
			if (ctl) {
				pthread_mutex_lock(&ctl->lock);
				ctl->migrating = false;
				pthread_mutex_unlock(&ctl->lock);
			}
			if (!r) {
				migrated = true;
				break;
			}
			failed = true;
			w0 = cli_vm_writes(&v);
			(void)w0;
		}
		if (cli_vm_done(&v))
			break;
		if (opt.duration_s > 0 && el >= opt.duration_s && !(ctl && !tried && !opt.migrate_to && 0))
			break;
		sleep_ms(10);
	}
	control_stop(ctl);
	if (migrated) {
		/* the VM lives at the destination now; this copy stays paused and goes */
		if (!opt.json)
			fprintf(stderr, "rmapvm: the VM now runs at the destination; source stopped\n");
		mig_source_destroy(ms);
		cli_vm_destroy(&v);
		return 0;
	}
	r = cli_vm_finish(&v, err, sizeof(err));
	if (opt.json)
		printf("{\"event\":\"run-end\",\"backend\":\"%s\",\"writes\":%llu,\"verify\":\"%s\"}\n", v.kind,
		       (unsigned long long)cli_vm_writes(&v), r ? err : "ok");
	else
		printf("%s VM ran %.2f s here, %llu writes, verify: %s\n", v.kind,
		       (double)(now_ns() - t0) / 1e9, (unsigned long long)cli_vm_writes(&v),
		       r ? err : "ok");
	mig_source_destroy(ms);
	cli_vm_destroy(&v);
	return r || failed ? 1 : 0;
}
