/*
 * reload: keep loading a shared object and calling its action().
 *
 * This is the seed program of the write-up on hot-replacing .so files,
 * extended with flags so inodewatch's tests can drive it. With no flags it
 * behaves like the original: leak mode, a tick every 2000 ms, ./so.so.
 *
 *   --mode leak    dlopen every tick and never dlclose. dlopen hands back
 *                  the same refcounted handle, so the first mapping stays
 *                  for good and a replaced file is never picked up.
 *   --mode reopen  dlopen, call, dlclose each tick: between ticks nothing
 *                  is mapped, so each tick sees whatever file is there now.
 *   --mode hold    like a real plugin host: a handle is kept between ticks
 *                  and swapped each tick, so a mapping is almost always
 *                  present. Load errors are reported and retried, because
 *                  a host should survive a broken plugin.
 *   --interval-ms N   time between ticks (default 2000)
 *   --lib PATH        library to load (default so.so)
 *   --ticks N         stop with status 0 after N ticks (default: never)
 *
 * SIGUSR1 cuts the current wait short: the next tick (a reload, in hold mode) happens now.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum mode { LEAK, REOPEN, HOLD };

static const char usage[] =
	"usage: reload [--mode leak|reopen|hold] [--interval-ms N] "
	"[--lib PATH] [--ticks N]";

static void usage_error(const char *what, const char *arg)
{
	fprintf(stderr, "reload: %s%s; %s\n", what, arg, usage);
	exit(2);
}

/* Parse a whole decimal number in [min, max], or die with a usage error. */
static long long parse_num(const char *flag, const char *s,
			   long long min, long long max)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "reload: bad value for %s: '%s'; %s\n",
			flag, s, usage);
		exit(2);
	}
	return v;
}

/* SIGUSR1 asks for the next tick now: tests make a reload happen exactly when they want. */
static volatile sig_atomic_t tick_now;

static void on_usr1(int sig)
{
	(void)sig;
	tick_now = 1;
}

static void sleep_ms(long long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	/* Resume after other signals so a tick is never cut short by accident. */
	while (!tick_now && nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
	tick_now = 0;
}

/* dlerror() may be NULL, e.g. when dlsym finds a symbol whose value is 0. */
static const char *dl_msg(void)
{
	const char *e = dlerror();

	return e ? e : "unknown dynamic loader error";
}

/*
 * One tick: load the library, look up action(), print "run", call it.
 * Returns NULL on success or the loader's error message.
 */
static const char *run_tick(const char *path, enum mode mode, void **held)
{
	void *h;
	void (*action)(void);

	/*
	 * Hold mode: close the old handle before opening again. While it
	 * is open, dlopen of the same name returns it and the new file at
	 * the path would never be read.
	 */
	if (*held) {
		dlclose(*held);
		*held = NULL;
	}

	h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	if (!h)
		return dl_msg();
	if (mode == HOLD)
		*held = h;	/* closed at the next tick */
	action = (void (*)(void))dlsym(h, "action");
	if (!action)
		return dl_msg();

	puts("run");
	action();
	if (mode == REOPEN)
		dlclose(h);
	return NULL;
}

int main(int argc, char **argv)
{
	struct sigaction usr1 = { .sa_handler = on_usr1 };
	enum mode mode = LEAK;
	long long interval_ms = 2000, ticks = -1;	/* -1: run forever */
	const char *lib = "so.so";
	char *path;
	void *held = NULL;

	for (int i = 1; i < argc; i += 2) {
		const char *flag = argv[i], *val = argv[i + 1];

		if (strncmp(flag, "--", 2) != 0)
			usage_error("unexpected argument: ", flag);
		if (!val)
			usage_error("missing value for ", flag);
		if (!strcmp(flag, "--mode")) {
			if (!strcmp(val, "leak"))
				mode = LEAK;
			else if (!strcmp(val, "reopen"))
				mode = REOPEN;
			else if (!strcmp(val, "hold"))
				mode = HOLD;
			else
				usage_error("unknown mode: ", val);
		} else if (!strcmp(flag, "--interval-ms")) {
			interval_ms = parse_num(flag, val, 0, INT_MAX);
		} else if (!strcmp(flag, "--lib")) {
			if (!*val)
				usage_error("empty --lib", "");
			lib = val;
		} else if (!strcmp(flag, "--ticks")) {
			ticks = parse_num(flag, val, 1, LLONG_MAX);
		} else {
			usage_error("unknown option: ", flag);
		}
	}

	/*
	 * A name without a slash makes dlopen search LD_LIBRARY_PATH and the
	 * system directories rather than look here. The seed ran from its
	 * own directory and loaded "./so.so", so treat a bare name as
	 * relative to the current directory.
	 */
	path = malloc(strlen(lib) + 3);
	if (!path) {
		perror("reload");
		return 1;
	}
	sprintf(path, "%s%s", strchr(lib, '/') ? "" : "./", lib);

	/* Line-buffer even into a pipe: tests wait for each line. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	sigaction(SIGUSR1, &usr1, NULL);

	for (long long tick = 1;; tick++) {
		const char *err = run_tick(path, mode, &held);

		if (err && mode != HOLD) {
			fprintf(stderr, "%s\n", err);	/* as the seed did */
			return 1;
		}
		if (err)
			fprintf(stderr, "reload: %s\n", err);
		if (tick == ticks)
			break;
		sleep_ms(interval_ms);
	}

	if (held)
		dlclose(held);
	free(path);
	return 0;
}
