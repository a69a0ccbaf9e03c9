/* clock.h - monotonic time and sleeping, for retries and rate limits. */
#ifndef PB_CLOCK_H
#define PB_CLOCK_H

/* Seconds on a monotonic clock (arbitrary origin). */
double pb_monotonic(void);
/* Seconds since the Unix epoch (wall clock), for HTTP dates. */
double pb_wallclock(void);
/* Sleeps for s seconds (no-op when s <= 0); resumes after signals. */
void pb_sleep(double s);

#endif
