// ferry console — live refresh: a page's data is fetched again every 2 s
// (the next fetch starts after the previous one finished), without reloading
// the page. The router stops a page's pollers when it leaves the page.

export const REFRESH_MS = 2000;

/** Runs `fn` now and every `ms` after it settles until `stop()` is called. */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } catch (err) {
      console.warn("refresh failed", err);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}
