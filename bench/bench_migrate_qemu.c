/* bench_migrate_qemu.c: `rmapvm bench migrate-qemu`: QEMU live-migrates the Multiboot build of the rmapvm guest over loopback, per working-set size (figure 4's QEMU series). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli/cli.h"
#include "rmapvm/util.h"
#include "rmapvm/workload.h"

/*
 * For each working-set size W: a source QEMU boots the guest
 * (src/kvm/guest, Multiboot build) with a W MiB write region; once the guest
 * runs its workload and a warm-up has passed, a destination QEMU started
 * with -incoming tcp:127.0.0.1:PORT receives it. Both are driven over QMP
 * (UNIX sockets): downtime-limit 300 ms and no bandwidth cap, as rmapvm's
 * defaults, auto-converge on (rmapvm throttles by default too); query-migrate
 * is polled until the migration completes. Then a key (QMP send-key) tells
 * the guest on the destination to stop: it verifies every page's stamp and
 * leaves through isa-debug-exit with status 1 only if all are right.
 * docs/QEMU-COMPARISON.md says what is and is not comparable with rmapvm.
 */

#define QMP_TIMEOUT_MS	10000
#define GUEST_BASE_MIB	1024 /* GUEST_RAM_GPA: the write region starts at 1 GiB */
#define GUEST_SLACK_MIB 64

struct qenv {
	char qemu[PATH_MAX];
	char version[128];
	char elf[PATH_MAX];
	char dir[64];		/* scratch directory */
	const char *workload;	/* guest command line form */
	char spec[128];		/* canonical rmapvm form, for the output */
	double warmup_s, after_s, timeout_s, budget_s;
	bool auto_converge, verbose;
	int seq;
};

struct qvm {
	pid_t pid;
	int fd;			/* QMP */
	char buf[65536];
	size_t blen;
	char sock[100], log[PATH_MAX], err[PATH_MAX];
	double stop_s, resume_s; /* QMP STOP / RESUME event times (wall clock), 0 = not seen */
};

struct qrun {
	bool completed, verified;
	char status[32], why[256];
	double total_ms, downtime_ms, setup_ms, transferred, dirty_syncs, mbps, throttle;
	double observed_ms;	/* source STOP event -> destination RESUME event, -1 = unknown */
	double guest_writes;
};

/* ---- small helpers ---- */

static void sleep_ms(double ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000) * 1e6) };

	nanosleep(&ts, NULL);
}

static double ms_since(uint64_t t0)
{
	return (now_ns() - t0) / 1e6;
}

static bool find_in_path(const char *name, char *out, size_t len)
{
	const char *path = getenv("PATH"), *p;

	for (p = path ? path : "/usr/bin:/bin"; p && *p;) {
		const char *e = strchr(p, ':');
		size_t n = e ? (size_t)(e - p) : strlen(p);

		snprintf(out, len, "%.*s/%s", (int)n, p, name);
		if (n && !access(out, X_OK))
			return true;
		p = e ? e + 1 : NULL;
	}
	return false;
}

/* Whole file (at most @len - 1 bytes) into @buf; "" if unreadable. */
static const char *slurp(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;

	if (f) {
		n = fread(buf, 1, len - 1, f);
		fclose(f);
	}
	buf[n] = 0;
	return buf;
}

/* Last line of a file, for error messages. */
static const char *last_line(const char *path, char *buf, size_t len)
{
	char all[8192];
	size_t n;
	char *nl;

	slurp(path, all, sizeof(all));
	n = strlen(all);
	while (n && all[n - 1] == '\n')
		all[--n] = 0;
	nl = strrchr(all, '\n');
	snprintf(buf, len, "%s", nl ? nl + 1 : all);
	return buf;
}

/* The number after "key": in a QMP reply (keys are matched whole). */
static bool json_num(const char *s, const char *key, double *out)
{
	char pat[80];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(s, pat);
	if (!p)
		return false;
	*out = strtod(p + strlen(pat), NULL);
	return true;
}

static bool json_str(const char *s, const char *key, char *out, size_t len)
{
	char pat[80];
	const char *p, *e;

	snprintf(pat, sizeof(pat), "\"%s\": \"", key);
	p = strstr(s, pat);
	if (!p)
		return false;
	p += strlen(pat);
	e = strchr(p, '"');
	if (!e)
		return false;
	snprintf(out, len, "%.*s", (int)(e - p), p);
	return true;
}

/* A free loopback port (bound, read, released; the destination binds it next). */
static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd < 0)
		return -1;
	if (!bind(fd, (struct sockaddr *)&a, sizeof(a)) && !getsockname(fd, (struct sockaddr *)&a, &al))
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* ---- one QEMU process and its QMP socket ---- */

static int qvm_start(struct qvm *q, const struct qenv *e, const char *accel, const char *name,
		     uint64_t ws_mib, const char *append, const char *incoming)
{
	char mem[32], chardev[PATH_MAX + 32], qmp[PATH_MAX + 32];
	const char *cpu = !strcmp(accel, "kvm") ? "host,-arch-capabilities" : "max";
	const char *argv[40];
	int n = 0, fd;

	memset(q, 0, sizeof(*q));
	q->fd = -1;
	snprintf(q->sock, sizeof(q->sock), "%s/%s-%d.qmp", e->dir, name, e->seq);
	snprintf(q->log, sizeof(q->log), "%s/%s-%d.log", e->dir, name, e->seq);
	snprintf(q->err, sizeof(q->err), "%s/%s-%d.err", e->dir, name, e->seq);
	snprintf(mem, sizeof(mem), "%lluM",
		 (unsigned long long)(GUEST_BASE_MIB + ws_mib + GUEST_SLACK_MIB));
	snprintf(chardev, sizeof(chardev), "file,id=dc,path=%s", q->log);
	snprintf(qmp, sizeof(qmp), "unix:%s,server=on,wait=off", q->sock);
	argv[n++] = e->qemu;
	argv[n++] = "-accel";
	argv[n++] = accel;
	argv[n++] = "-cpu";
	argv[n++] = cpu;
	argv[n++] = "-machine";
	argv[n++] = "pc";
	argv[n++] = "-smp";
	argv[n++] = "1";
	argv[n++] = "-m";
	argv[n++] = mem;
	argv[n++] = "-nodefaults";
	argv[n++] = "-no-user-config";
	argv[n++] = "-display";
	argv[n++] = "none";
	argv[n++] = "-kernel";
	argv[n++] = e->elf;
	argv[n++] = "-append";
	argv[n++] = append;
	argv[n++] = "-chardev";
	argv[n++] = chardev;
	argv[n++] = "-device";
	argv[n++] = "isa-debugcon,iobase=0xe9,chardev=dc";
	argv[n++] = "-device";
	argv[n++] = "isa-debug-exit,iobase=0xf4,iosize=4";
	argv[n++] = "-qmp";
	argv[n++] = qmp;
	if (incoming) {
		argv[n++] = "-incoming";
		argv[n++] = incoming;
	}
	argv[n] = NULL;

	q->pid = fork();
	if (q->pid < 0)
		return -errno;
	if (!q->pid) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		fd = open("/dev/null", O_RDONLY);
		if (fd >= 0)
			dup2(fd, 0);
		fd = open(q->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(e->qemu, (char *const *)argv);
		_exit(127);
	}
	return 0;
}

static bool qvm_alive(struct qvm *q, int *status)
{
	int st;

	if (q->pid <= 0)
		return false;
	if (waitpid(q->pid, &st, WNOHANG) == q->pid) {
		q->pid = 0;
		if (status)
			*status = st;
		return false;
	}
	return true;
}

/* Wait up to @ms for the process to exit; returns its wait status or -1. */
static int qvm_wait(struct qvm *q, double ms)
{
	uint64_t t0 = now_ns();
	int st = -1;

	while (q->pid > 0 && ms_since(t0) < ms) {
		if (!qvm_alive(q, &st))
			return st;
		sleep_ms(10);
	}
	return -1;
}

static void qvm_kill(struct qvm *q)
{
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
	if (q->pid > 0) {
		kill(q->pid, SIGKILL);
		waitpid(q->pid, NULL, 0);
	}
	q->pid = 0;
}

static int qmp_readline(struct qvm *q, char *out, size_t len, int timeout_ms)
{
	uint64_t t0 = now_ns();

	for (;;) {
		char *nl = memchr(q->buf, '\n', q->blen);
		struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
		ssize_t r;

		if (nl) {
			size_t n = (size_t)(nl - q->buf) + 1;

			snprintf(out, len, "%.*s", (int)(n - 1), q->buf);
			memmove(q->buf, q->buf + n, q->blen - n);
			q->blen -= n;
			return 0;
		}
		if (q->blen == sizeof(q->buf))
			return -E2BIG;
		if (ms_since(t0) > timeout_ms)
			return -ETIMEDOUT;
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		r = read(q->fd, q->buf + q->blen, sizeof(q->buf) - q->blen);
		if (r <= 0)
			return r ? -errno : -EPIPE;
		q->blen += (size_t)r;
	}
}

/* Send one command (a JSON object) and read its reply, skipping events. 0, or -1 on "error". */
static int qmp_cmd(struct qvm *q, char *reply, size_t len, const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
	va_end(ap);
	strcat(cmd, "\n");
	if (write(q->fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd)) {
		snprintf(reply, len, "QMP write: %s", strerror(errno));
		return -1;
	}
	for (;;) {
		r = qmp_readline(q, reply, len, QMP_TIMEOUT_MS);
		if (r) {
			snprintf(reply, len, "QMP: %s", strerror(-r));
			return -1;
		}
		if (strstr(reply, "\"event\"")) {
			char ev[32] = "";
			double sec = 0, usec = 0;

			json_str(reply, "event", ev, sizeof(ev));
			json_num(reply, "seconds", &sec);
			json_num(reply, "microseconds", &usec);
			if (!strcmp(ev, "STOP"))
				q->stop_s = sec + usec / 1e6;
			else if (!strcmp(ev, "RESUME"))
				q->resume_s = sec + usec / 1e6;
			continue;
		}
		if (strstr(reply, "\"return\""))
			return 0;
		if (strstr(reply, "\"error\""))
			return -1;
	}
}

static int qmp_connect(struct qvm *q, char *why, size_t len)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char line[4096];
	uint64_t t0 = now_ns();

	snprintf(a.sun_path, sizeof(a.sun_path), "%.99s", q->sock);
	while (ms_since(t0) < QMP_TIMEOUT_MS) {
		q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (q->fd >= 0 && !connect(q->fd, (struct sockaddr *)&a, sizeof(a)))
			break;
		if (q->fd >= 0)
			close(q->fd);
		q->fd = -1;
		if (!qvm_alive(q, NULL)) {
			snprintf(why, len, "QEMU exited: %s", last_line(q->err, line, sizeof(line)));
			return -1;
		}
		sleep_ms(20);
	}
	if (q->fd < 0) {
		snprintf(why, len, "no QMP socket at %.100s", q->sock);
		return -1;
	}
	if (qmp_readline(q, line, sizeof(line), QMP_TIMEOUT_MS) || !strstr(line, "\"QMP\"") ||
	    qmp_cmd(q, line, sizeof(line), "{\"execute\": \"qmp_capabilities\"}")) {
		snprintf(why, len, "QMP handshake failed: %.200s", line);
		return -1;
	}
	return 0;
}

/* Wait until the guest's debugcon log holds @what (the guest is running its workload). */
static int wait_log(struct qvm *q, const char *what, double ms, char *why, size_t len)
{
	uint64_t t0 = now_ns();
	char buf[8192], line[160];

	while (ms_since(t0) < ms) {
		if (strstr(slurp(q->log, buf, sizeof(buf)), what))
			return 0;
		if (!qvm_alive(q, NULL)) {
			snprintf(why, len, "QEMU exited before the guest ran: %.150s %.60s",
				 last_line(q->err, line, sizeof(line)), slurp(q->log, buf, 200));
			return -1;
		}
		sleep_ms(20);
	}
	snprintf(why, len, "the guest did not start within %.0f s", ms / 1000);
	return -1;
}

/* The guest's verdict: exit status 1 (isa-debug-exit 0) and "done" in its log. */
static bool guest_verified(int status, const char *log, char *why, size_t len, double *writes)
{
	char buf[8192];
	const char *w;

	slurp(log, buf, sizeof(buf));
	w = strstr(buf, "rmapvm guest: writes ");
	if (w && writes)
		*writes = strtod(w + strlen("rmapvm guest: writes "), NULL);
	if (status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 1 &&
	    strstr(buf, "rmapvm guest: done") && strstr(buf, "verified pages"))
		return true;
	if (status < 0)
		snprintf(why, len, "the guest did not finish");
	else if (strstr(buf, "FAIL"))
		snprintf(why, len, "guest verification failed: %.120s", strstr(buf, "FAIL"));
	else
		snprintf(why, len, "QEMU ended with status 0x%x, guest log: %.120s", status, buf);
	return false;
}

/* ---- one migration ---- */

static void one_run(struct qenv *e, const char *accel, uint64_t ws_mib, struct qrun *r)
{
	struct qvm src, dst;
	char append[512], incoming[64], reply[8192];
	uint64_t t0;
	int port, st;

	memset(r, 0, sizeof(*r));
	e->seq++;
	snprintf(append, sizeof(append), "mem=%lluM rounds=0 %s", (unsigned long long)ws_mib,
		 e->workload);
	port = free_port();
	snprintf(incoming, sizeof(incoming), "tcp:127.0.0.1:%d", port);
	if (port < 0 || qvm_start(&src, e, accel, "src", ws_mib, append, NULL)) {
		snprintf(r->why, sizeof(r->why), "cannot start QEMU");
		return;
	}
	if (qvm_start(&dst, e, accel, "dst", ws_mib, append, incoming)) {
		snprintf(r->why, sizeof(r->why), "cannot start QEMU");
		qvm_kill(&src);
		return;
	}
	if (qmp_connect(&src, r->why, sizeof(r->why)) || qmp_connect(&dst, r->why, sizeof(r->why)))
		goto out;
	if (qmp_cmd(&dst, reply, sizeof(reply), "{\"execute\": \"query-status\"}") ||
	    !strstr(reply, "inmigrate")) {
		snprintf(r->why, sizeof(r->why), "destination not waiting: %.200s", reply);
		goto out;
	}
	if (wait_log(&src, "vCPU running", 120000, r->why, sizeof(r->why)))
		goto out;
	sleep_ms(e->warmup_s * 1000);

	if (qmp_cmd(&src, reply, sizeof(reply),
		    "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
		    "[{\"capability\": \"auto-converge\", \"state\": %s}]}}",
		    e->auto_converge ? "true" : "false") ||
	    qmp_cmd(&src, reply, sizeof(reply),
		    "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
		    "{\"downtime-limit\": 300, \"max-bandwidth\": %llu}}", 1ull << 40) ||
	    qmp_cmd(&src, reply, sizeof(reply),
		    "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"%s\"}}", incoming)) {
		snprintf(r->why, sizeof(r->why), "QMP: %.200s", reply);
		goto out;
	}
	t0 = now_ns();
	for (;;) {
		if (qmp_cmd(&src, reply, sizeof(reply), "{\"execute\": \"query-migrate\"}")) {
			snprintf(r->why, sizeof(r->why), "query-migrate: %.200s", reply);
			goto out;
		}
		json_str(reply, "status", r->status, sizeof(r->status));
		if (!strcmp(r->status, "completed") || !strcmp(r->status, "failed") ||
		    !strcmp(r->status, "cancelled"))
			break;
		if (ms_since(t0) > e->timeout_s * 1000 && strcmp(r->status, "cancelling")) {
			qmp_cmd(&src, reply, sizeof(reply), "{\"execute\": \"migrate_cancel\"}");
			snprintf(r->why, sizeof(r->why), "did not converge within %.0f s: cancelled",
				 e->timeout_s);
		}
		sleep_ms(10);
	}
	if (strcmp(r->status, "completed")) {
		if (!r->why[0]) {
			char desc[200] = "";

			json_str(reply, "error-desc", desc, sizeof(desc));
			snprintf(r->why, sizeof(r->why), "migration %s %s", r->status, desc);
		}
		goto out;
	}
	r->completed = true;
	json_num(reply, "total-time", &r->total_ms);
	json_num(reply, "downtime", &r->downtime_ms);
	json_num(reply, "setup-time", &r->setup_ms);
	json_num(reply, "transferred", &r->transferred);
	json_num(reply, "dirty-sync-count", &r->dirty_syncs);
	json_num(reply, "mbps", &r->mbps);
	json_num(reply, "cpu-throttle-percentage", &r->throttle);
	if (e->verbose)
		printf("#   %s\n", reply);

	/* The guest runs on at the destination, then is told to stop and verify. */
	if (qmp_cmd(&dst, reply, sizeof(reply), "{\"execute\": \"query-status\"}") ||
	    !strstr(reply, "\"running\": true")) {
		snprintf(r->why, sizeof(r->why), "destination not running: %.200s", reply);
		goto out;
	}
	/* The guest-visible pause: the source's STOP to the destination's RESUME. */
	for (st = 0; st < 100 && !dst.resume_s; st++) {
		sleep_ms(10);
		qmp_cmd(&dst, reply, sizeof(reply), "{\"execute\": \"query-status\"}");
	}
	r->observed_ms = src.stop_s && dst.resume_s ? (dst.resume_s - src.stop_s) * 1000 : -1;
	sleep_ms(e->after_s * 1000);
	if (!qvm_alive(&dst, &st)) {
		snprintf(r->why, sizeof(r->why), "the destination QEMU ended before it was told to");
		goto out;
	}
	qmp_cmd(&dst, reply, sizeof(reply),
		"{\"execute\": \"send-key\", \"arguments\": {\"keys\": "
		"[{\"type\": \"qcode\", \"data\": \"ret\"}]}}");
	r->verified = guest_verified(qvm_wait(&dst, 120000), dst.log, r->why, sizeof(r->why),
				     &r->guest_writes);
out:
	if (!r->verified && !r->why[0])
		snprintf(r->why, sizeof(r->why), "not verified");
	qvm_kill(&src);
	qvm_kill(&dst);
	if (r->verified) {
		unlink(src.log);
		unlink(src.err);
		unlink(dst.log);
		unlink(dst.err);
	} else {
		printf("# run failed: %s (logs: %s, %s)\n", r->why, src.err, dst.log);
	}
	unlink(src.sock);
	unlink(dst.sock);
}

/* ---- accelerator choice ---- */

/* Boot a tiny guest with @accel to the end of its workload; 0 if verified. */
static int probe_accel(struct qenv *e, const char *accel, char *why, size_t len, double *ms)
{
	struct qvm q;
	uint64_t t0 = now_ns();
	int st, r;

	e->seq++;
	if (qvm_start(&q, e, accel, "probe", 8, "mem=8M workload=random rounds=4", NULL))
		return -1;
	st = qvm_wait(&q, 120000);
	*ms = ms_since(t0);
	r = guest_verified(st, q.log, why, len, NULL) ? 0 : -1;
	if (r) {
		char line[256];

		snprintf(why, len, "%s", last_line(q.err, line, sizeof(line)));
		if (!why[0])
			snprintf(why, len, "QEMU status 0x%x", st);
	}
	qvm_kill(&q);
	unlink(q.log);
	unlink(q.err);
	unlink(q.sock);
	return r;
}

static void qemu_version(struct qenv *e)
{
	char cmd[PATH_MAX + 32];
	FILE *p;

	snprintf(e->version, sizeof(e->version), "unknown version");
	snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", e->qemu);
	p = popen(cmd, "r");
	if (p && fgets(e->version, sizeof(e->version), p))
		e->version[strcspn(e->version, "\n")] = 0;
	if (p)
		pclose(p);
}

/* The guest's command line for an rmapvm workload spec. */
static void guest_workload(const struct workload_spec *s, char *buf, size_t len)
{
	static const char *const names[] = { "sweep", "random", "hotset" };

	snprintf(buf, len, "workload=%s write=%u hot=%u frac=%u seed=%llu",
		 s->pattern < 3 ? names[s->pattern] : "random", s->write_pct, s->hot_size_pct,
		 s->hot_frac_pct, (unsigned long long)(s->seed ? s->seed : 1));
	if (s->rate)
		snprintf(buf + strlen(buf), len - strlen(buf), " rate=%llu",
			 (unsigned long long)s->rate);
}

static int parse_sizes(const char *s, uint64_t *out, int max)
{
	char buf[256], *tok, *save = NULL;
	int n = 0;

	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
		uint64_t v = cli_parse_size("--sizes", tok);

		/* a bare number is MiB */
		out[n++] = strspn(tok, "0123456789") == strlen(tok) ? v : v >> 20;
		if (!out[n - 1] || out[n - 1] > 64 * 1024)
			die("--sizes: %s: between 1 MiB and 64 GiB", tok);
	}
	return n;
}

static int bench_migrate_qemu(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "sizes", required_argument, NULL, 's' },
		{ "runs", required_argument, NULL, 'r' },
		{ "accel", required_argument, NULL, 'a' },
		{ "workload", required_argument, NULL, 'w' },
		{ "warmup", required_argument, NULL, 'W' },
		{ "timeout", required_argument, NULL, 't' },
		{ "budget", required_argument, NULL, 'b' },
		{ "no-auto-converge", no_argument, NULL, 'n' },
		{ "quick", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct qenv e = { .warmup_s = 2, .after_s = 0.5, .timeout_s = 60, .budget_s = 150,
			  .auto_converge = true };
	const char *sizes_arg = NULL, *accel_arg = "auto", *wl = "random,write=100";
	uint64_t sizes[16];
	int nsizes, runs = 5, c, si, ri, ai, naccels = 0, failed = 0;
	const char *accels[2];
	bool json = false, quick = false, runs_set = false;
	struct workload_spec spec;
	char err[256], gwl[200], why[256];
	const char *env;
	uint64_t t_start = now_ns();

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			sizes_arg = optarg;
			break;
		case 'r':
			runs = (int)cli_parse_int("--runs", optarg, 1, 15);
			runs_set = true;
			break;
		case 'a':
			accel_arg = optarg;
			break;
		case 'w':
			wl = optarg;
			break;
		case 'W':
			e.warmup_s = cli_parse_duration("--warmup", optarg);
			break;
		case 't':
			e.timeout_s = cli_parse_duration("--timeout", optarg);
			break;
		case 'b':
			e.budget_s = cli_parse_duration("--budget", optarg);
			break;
		case 'n':
			e.auto_converge = false;
			break;
		case 'q':
			quick = true;
			break;
		case 'v':
			e.verbose = true;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			printf("usage: rmapvm bench migrate-qemu [--sizes MiB,...] [--runs N] [--accel auto|kvm|tcg|kvm,tcg]\n"
			       "         [--workload SPEC] [--warmup T] [--timeout T] [--budget T] [--no-auto-converge]\n"
			       "         [--quick] [--json]\n"
			       "  QEMU (qemu-system-x86_64 -kernel, the Multiboot build of the rmapvm guest) live-migrates\n"
			       "  a guest writing a working set of each size to a second QEMU over loopback TCP (QMP:\n"
			       "  downtime-limit 300 ms, no bandwidth cap, auto-converge); the destination guest then\n"
			       "  verifies every stamp. Default sizes 64,128,256,512 MiB, 5 runs (medians), workload\n"
			       "  random,write=100 over the working set; --quick: 32,64 MiB, 1 run. --accel auto uses\n"
			       "  KVM when a probe boot under -accel kvm verifies, TCG otherwise. Runs after a point's\n"
			       "  first give way once the point used its share of --budget (default 150 s).\n"
			       "  downtime_ms is QEMU's (source: stop -> stream end); downtime_observed_ms is the\n"
			       "  source's STOP event to the destination's RESUME event (what the guest sees).\n"
			       "  Env: RMAPVM_QEMU (binary), RMAPVM_GUEST_ELF (guest).\n");
			return 0;
		default:
			return 2;
		}
	}
	if (quick) {
		if (!sizes_arg)
			sizes_arg = "32,64";
		if (!runs_set)
			runs = 1;
		e.warmup_s = 1;
		e.timeout_s = 30;
	}
	nsizes = parse_sizes(sizes_arg ? sizes_arg : "64,128,256,512", sizes, 16);
	if (workload_parse(wl, &spec, err, sizeof(err)))
		die("--workload: %s", err);
	workload_format(&spec, e.spec, sizeof(e.spec));
	guest_workload(&spec, gwl, sizeof(gwl));
	e.workload = gwl;

	env = getenv("RMAPVM_QEMU");
	if (env)
		snprintf(e.qemu, sizeof(e.qemu), "%s", env);
	if (env ? access(e.qemu, X_OK) : !find_in_path("qemu-system-x86_64", e.qemu, sizeof(e.qemu))) {
		printf("migrate-qemu: skipped: qemu-system-x86_64 is not installed "
		       "(apt-get install qemu-system-x86; make bench installs it)\n");
		return 0;
	}
	env = getenv("RMAPVM_GUEST_ELF");
#ifdef RMAPVM_GUEST_MULTIBOOT
	snprintf(e.elf, sizeof(e.elf), "%s", env ? env : RMAPVM_GUEST_MULTIBOOT);
#else
	snprintf(e.elf, sizeof(e.elf), "%s", env ? env : "");
#endif
	if (access(e.elf, R_OK)) {
		printf("migrate-qemu: skipped: no Multiboot guest at '%s' (build target "
		       "rmapvm_guest_multiboot, or set RMAPVM_GUEST_ELF)\n", e.elf);
		return 0;
	}
	qemu_version(&e);
	snprintf(e.dir, sizeof(e.dir), "/tmp/rmapvm-qemu-XXXXXX");
	if (!mkdtemp(e.dir))
		die_errno(-errno, "mkdtemp");

	/* Which accelerators. */
	if (!strcmp(accel_arg, "auto")) {
		double ms = 0;

		if (access("/dev/kvm", R_OK | W_OK)) {
			printf("# qemu: /dev/kvm is absent: -accel tcg (QEMU's emulator, not "
			       "comparable with a KVM backend on speed)\n");
			accels[naccels++] = "tcg";
		} else if (!probe_accel(&e, "kvm", why, sizeof(why), &ms)) {
			printf("# qemu: -accel kvm works: a probe guest booted and verified in %.1f s\n",
			       ms / 1000);
			accels[naccels++] = "kvm";
		} else {
			printf("# qemu: -accel kvm failed (%s): using -accel tcg (QEMU's emulator)\n",
			       why);
			accels[naccels++] = "tcg";
		}
	} else {
		char buf[64], *tok, *save = NULL;

		snprintf(buf, sizeof(buf), "%s", accel_arg);
		for (tok = strtok_r(buf, ",", &save); tok && naccels < 2;
		     tok = strtok_r(NULL, ",", &save)) {
			if (!strcmp(tok, "kvm"))
				accels[naccels++] = "kvm";
			else if (!strcmp(tok, "tcg"))
				accels[naccels++] = "tcg";
			else
				die("--accel: '%s' is not auto, kvm or tcg", tok);
		}
		for (ai = 0; ai < naccels; ai++)
			printf("# qemu: -accel %s (as asked)\n", accels[ai]);
	}
	printf("# %s: %s; guest %s; workload %s over the working set, 1 vCPU; "
	       "downtime-limit 300 ms, no bandwidth cap, auto-converge %s; %d run(s) per point\n",
	       e.qemu, e.version, e.elf, e.spec, e.auto_converge ? "on" : "off", runs);
	if (!json)
		printf("%-9s %8s %10s %10s %9s %9s %8s %12s %6s %9s %s\n", "system", "ws(MiB)",
		       "total(ms)", "down(ms)", "seen(ms)", "setup(ms)", "syncs", "transferred",
		       "mbps", "throttle", "verified");
	fflush(stdout);

	for (ai = 0; ai < naccels; ai++)
		for (si = 0; si < nsizes; si++) {
			double total[16], down[16], setup[16], xfer[16], syncs[16], mbps[16], thr[16];
			double obs[16], tspread, dspread;
			int ok = 0, verified = 0, nobs = 0;
			uint64_t t_point = now_ns();
			char sys[16];

			snprintf(sys, sizeof(sys), "qemu-%s", accels[ai]);
			for (ri = 0; ri < runs; ri++) {
				struct qrun r;

				/* Keep the whole benchmark near its budget: later runs give way. */
				if (ri && ms_since(t_point) >
						  e.budget_s * 1000 / (naccels * nsizes))
					break;
				one_run(&e, accels[ai], sizes[si], &r);
				if (r.verified)
					verified++;
				if (!r.completed)
					continue;
				total[ok] = r.total_ms;
				down[ok] = r.downtime_ms;
				setup[ok] = r.setup_ms;
				xfer[ok] = r.transferred;
				syncs[ok] = r.dirty_syncs;
				mbps[ok] = r.mbps;
				thr[ok] = r.throttle;
				if (r.observed_ms >= 0)
					obs[nobs++] = r.observed_ms;
				ok++;
				printf("#   %s %llu MiB run %d: total %.0f ms, downtime %.0f ms "
				       "(STOP->RESUME %.0f ms), %.0f dirty syncs, %s\n", sys,
				       (unsigned long long)sizes[si], ri + 1, r.total_ms,
				       r.downtime_ms, r.observed_ms, r.dirty_syncs,
				       r.verified ? "destination verified" : r.why);
				fflush(stdout);
			}
			if (verified < ok)
				failed++;
			if (!ok) {
				if (json)
					printf("{\"bench\":\"migrate-qemu\",\"system\":\"%s\","
					       "\"working_set_mib\":%llu,\"runs\":%d,\"completed\":0,"
					       "\"verified\":false}\n",
					       sys, (unsigned long long)sizes[si], ri);
				else
					printf("%-9s %8llu   no run completed\n", sys,
					       (unsigned long long)sizes[si]);
				fflush(stdout);
				continue;
			}
			bench_median(total, ok);
			tspread = bench_spread(total, ok);
			bench_median(down, ok);
			dspread = bench_spread(down, ok);
			if (json)
				printf("{\"bench\":\"migrate-qemu\",\"system\":\"%s\",\"working_set_mib\":%llu,"
				       "\"guest_mib\":%llu,\"workload\":\"%s\",\"vcpus\":1,\"runs\":%d,"
				       "\"completed\":%d,\"total_ms\":%.0f,\"total_spread\":%.2f,"
				       "\"downtime_ms\":%.0f,\"downtime_spread\":%.2f,"
				       "\"downtime_observed_ms\":%.0f,\"setup_ms\":%.0f,"
				       "\"transferred_bytes\":%.0f,\"dirty_syncs\":%.0f,\"mbps\":%.0f,"
				       "\"throttle_pct\":%.0f,\"downtime_limit_ms\":300,"
				       "\"auto_converge\":%s,\"verified\":%s}\n",
				       sys, (unsigned long long)sizes[si],
				       (unsigned long long)(GUEST_BASE_MIB + sizes[si] + GUEST_SLACK_MIB),
				       e.spec, ri, ok, bench_median(total, ok), tspread,
				       bench_median(down, ok), dspread,
				       nobs ? bench_median(obs, nobs) : -1, bench_median(setup, ok),
				       bench_median(xfer, ok), bench_median(syncs, ok),
				       bench_median(mbps, ok), bench_median(thr, ok),
				       e.auto_converge ? "true" : "false",
				       verified == ok ? "true" : "false");
			else
				printf("%-9s %8llu %10.0f %10.0f %9.0f %9.0f %8.0f %12.0f %6.0f %8.0f%% %d/%d\n",
				       sys, (unsigned long long)sizes[si], bench_median(total, ok),
				       bench_median(down, ok), nobs ? bench_median(obs, nobs) : -1,
				       bench_median(setup, ok),
				       bench_median(syncs, ok), bench_median(xfer, ok),
				       bench_median(mbps, ok), bench_median(thr, ok), verified, ok);
			fflush(stdout);
		}
	rmdir(e.dir);
	printf("# migrate-qemu: %.0f s in all%s\n", ms_since(t_start) / 1000,
	       failed ? "; some destination guests did NOT verify" : "");
	return failed ? 1 : 0;
}

BENCH_REGISTER("migrate-qemu", bench_migrate_qemu,
	       "QEMU live migration of the same guest vs working set (figure 4's QEMU series)")
